"""``job.chat()``: try a completed job's model in the notebook. Type a prompt, read the base
model's answer beside the tuned one, with the chat template and the generation settings in view.

The model loads once, in this process (the GPU where there is one), in the background: the panel
says "loading model…" until it can answer. Each answer is made off the kernel's thread, so the
notebook stays usable, and Close frees the model's memory. The panel knows no torch: the client's
``Job.chat_model`` loads it. Answers are model output, text from anywhere: they reach the page
escaped, never as markup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from ..client import Job
from ..core.html import esc
from ..core.rules import MAX_NEW_TOKENS, MAX_TEMPERATURE, check_generation
from .common import on_close, set_html

STATE_COLOR = {"error": "crimson", "busy": "steelblue", "loading": "darkorange", "ready": "green"}
PRE = "white-space:pre-wrap;font-family:var(--jp-code-font-family,monospace);font-size:12px"


class ChatPanel:
    """A chat with one completed job's model: the base and the tuned answer to each prompt side by
    side. ``ask(prompt)`` answers from code too; ``close()`` frees the model."""

    def __init__(
        self,
        job: Job,
        *,
        temperature: float = 0.0,
        max_new_tokens: int = 64,
        system: str = "",
        device: str | None = None,
        autoload: bool = True,
    ):
        job.check_completed()  # refused before any widget or model: says the status and what to do
        check_generation(temperature, max_new_tokens)
        self.job, self.device = job, device
        self.model: Any = None  # the loaded ChatModel; None before it loads and once closed
        self.exchanges: list[dict[str, Any]] = []
        self.error: str | None = None
        self.closed = False
        self.ready = threading.Event()  # set once loading ended, loaded or not
        self._guard = threading.Lock()
        self._build(temperature, max_new_tokens, system)
        on_close(self.widget, self.close)  # the widget closed from code frees the model too
        self._show_state("loading", "loading model… (the adapter on its base model, once)")
        if autoload:
            threading.Thread(target=self.load, name="ftkit-chat-load", daemon=True).start()

    def _build(self, temperature: float, max_new_tokens: int, system: str) -> None:
        base = (self.job.status().get("config") or {}).get("base_model")
        self.title = w.HTML(
            f"<b>Try job {esc(self.job.id)}</b> · base model <code>{esc(base)}</code><br>"
            "<small>each prompt is answered on its own (no history) by the base model, its "
            "adapter off, and by the tuned model</small>"
        )
        self.state = w.HTML()
        self._build_settings(temperature, max_new_tokens, system)
        self.rendered = w.HTML()
        self.template_source = w.HTML()
        self.template = w.Accordion(
            children=[w.VBox([self.rendered, self.template_source])], selected_index=None
        )
        self.template.set_title(0, "chat template: what the model reads")
        self.prompt = w.Textarea(
            placeholder="Ask the model something…", layout=w.Layout(width="98%", height="64px")
        )
        self.send_button = w.Button(
            description="Send", icon="paper-plane", button_style="primary", disabled=True
        )
        self.close_button = w.Button(description="Close", icon="times", tooltip="free the model")
        self.transcript = w.HTML()
        self.send_button.on_click(lambda _: self.send())
        self.close_button.on_click(lambda _: self.close())
        self.temperature.observe(lambda _: self._show_sampling(), names="value")
        for source in (self.prompt, self.system):
            source.observe(lambda _: self._show_template(), names="value")
        self.widget = w.VBox(
            [
                self.title,
                self.state,
                w.HBox([self.temperature, self.max_new_tokens, self.sampling]),
                self.system,
                self.template,
                self.transcript,
                self.prompt,
                w.HBox([self.send_button, self.close_button]),
            ],
            layout=w.Layout(border="1px solid #ddd", padding="8px"),
        )
        self.widget.add_class("ftkit-chat")
        for widget, name in [
            (self.state, "state"), (self.temperature, "temperature"),
            (self.max_new_tokens, "max-new-tokens"), (self.system, "system"),
            (self.template, "template"), (self.transcript, "transcript"),
            (self.prompt, "prompt"), (self.send_button, "send"), (self.close_button, "close"),
        ]:  # fmt: skip
            widget.add_class(f"ftkit-chat-{name}")
        self._show_sampling()
        self._show_template()

    def _build_settings(self, temperature: float, max_new_tokens: int, system: str) -> None:
        """The generation settings, in view above the transcript."""
        label = {"style": {"description_width": "initial"}}
        self.temperature = w.BoundedFloatText(
            value=temperature, min=0.0, max=MAX_TEMPERATURE, step=0.1, description="temperature",
            layout=w.Layout(width="170px"), **label,
        )  # fmt: skip
        self.max_new_tokens = w.BoundedIntText(
            value=max_new_tokens, min=1, max=MAX_NEW_TOKENS, description="max new tokens",
            layout=w.Layout(width="190px"), **label,
        )  # fmt: skip
        self.sampling = w.HTML()
        self.system = w.Text(
            value=system, description="system message", placeholder="(none)",
            layout=w.Layout(width="98%"), **label,
        )  # fmt: skip

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """In a cell, the panel shows as its widget."""
        return self.widget._repr_mimebundle_(**kwargs)

    # -- the model --------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the base model with the adapter (the background thread's work); the panel then
        answers, or says why it cannot."""
        try:
            model = self.job.chat_model(device=self.device)
        except Exception as exc:  # noqa: BLE001 - shown in the panel: a thread's error is lost
            self.error = f"could not load the model: {type(exc).__name__}: {exc}"
            self._show_state("error", self.error)
            self.ready.set()
            return
        with self._guard:
            keep = not self.closed
            if keep:
                self.model = model
        if not keep:  # closed while it loaded
            model.close()
        else:
            self._show_state("ready", f"ready · answers on {model.device}")
            self.send_button.disabled = False
            self._show_template()
        self.ready.set()

    def close(self) -> None:
        """Free the model's memory (after the answer in progress) and disable the panel."""
        with self._guard:
            if self.closed:
                return
            self.closed = True
            model, self.model = self.model, None
        for control in (self.prompt, self.send_button, self.close_button, self.system,
                        self.temperature, self.max_new_tokens):  # fmt: skip
            control.disabled = True
        if model is not None:
            model.close()
        self._show_state("closed", "closed: the model was freed; job.chat() opens a new chat")

    # -- answers ----------------------------------------------------------------------------------
    def ask(self, prompt: str) -> dict[str, Any]:
        """The base and the tuned answer to ``prompt`` with the panel's settings, added to the
        transcript (waits for the model to load)."""
        self.ready.wait()
        model = self.model
        if model is None:
            raise RuntimeError(self.error or "this chat was closed: job.chat() opens a new one")
        answer = model.answer(
            prompt,
            system=self.system.value.strip() or None,
            temperature=self.temperature.value,
            max_new_tokens=self.max_new_tokens.value,
        )
        self.exchanges.append(answer)
        set_html(self.transcript, "".join(map(exchange_html, self.exchanges)))
        return answer

    def send(self) -> threading.Thread | None:
        """Answer the typed prompt in a background thread, the panel busy meanwhile."""
        prompt = self.prompt.value
        if not prompt.strip() or self.model is None or self.send_button.disabled:
            return None
        self.send_button.disabled = True
        self._show_state("busy", "generating… (the base model, then the tuned one)")
        thread = threading.Thread(target=self._answer, args=(prompt,), name="ftkit-chat-answer")
        thread.daemon = True
        thread.start()
        return thread

    def _answer(self, prompt: str) -> None:
        try:
            answer = self.ask(prompt)
        except Exception as exc:  # noqa: BLE001 - shown in the panel: a thread's error is lost
            message = f"{type(exc).__name__}: {exc}"
            self._after(lambda: self._show_state("error", message))
            return
        self._after(lambda: self._answered(answer))

    def _answered(self, answer: dict[str, Any]) -> None:
        if self.prompt.value == answer["prompt"]:
            self.prompt.value = ""
        settings = answer["settings"]
        self._show_state(
            "ready",
            f"ready · answers on {settings['device']} · last answer in {answer['seconds']:.1f} s",
        )

    def _after(self, show: Callable[[], None]) -> None:
        """Show an answer's outcome, unless the panel was closed meanwhile."""
        with self._guard:
            if self.closed:
                return
            show()
            self.send_button.disabled = False

    # -- views ------------------------------------------------------------------------------------
    def _show_state(self, state: str, text: str) -> None:
        color = STATE_COLOR.get(state, "gray")
        set_html(
            self.state,
            f"<span class='ftkit-chat-status' data-state='{state}' style='color:{color}'>"
            f"{esc(text)}</span>",
        )

    def _show_sampling(self) -> None:
        greedy = self.temperature.value == 0
        text = "greedy: the same prompt, the same answer" if greedy else "sampled"
        set_html(self.sampling, f"<span class='ftkit-chat-sampling'>{esc(text)}</span>")

    def _show_template(self) -> None:
        """The current prompt as the model will read it, and the template's source."""
        model = self.model
        if model is None:
            set_html(self.rendered, "<i>shown once the model is loaded</i>")
            return
        last = self.exchanges[-1]["prompt"] if self.exchanges else "(your message)"
        try:
            rendered = model.render(self.prompt.value or last, self.system.value.strip() or None)
            source = model.template or "(none: the prompt is read as it is typed)"
        except Exception as exc:  # noqa: BLE001 - a template that fails to render says so
            rendered, source = f"cannot render: {exc}", ""
        set_html(
            self.rendered,
            "<b>rendered prompt</b> (the message typed, else the last one sent)"
            f"<pre class='ftkit-chat-rendered' style='{PRE}'>"
            f"{esc(rendered)}</pre>",
        )
        set_html(
            self.template_source,
            f"<b>template source</b><pre style='{PRE};max-height:160px;overflow:auto'>"
            f"{esc(source)}</pre>",
        )


def exchange_html(answer: dict[str, Any]) -> str:
    """One prompt and its two answers, side by side; every text escaped."""
    settings = answer["settings"]
    meta = (
        f"{settings['sampling']} · temperature {settings['temperature']:g} · "
        f"max {settings['max_new_tokens']} new tokens · {answer['seconds']:.1f} s"
    )
    cell = "border:1px solid #ddd;border-radius:4px;padding:6px"
    return (
        "<div class='ftkit-chat-exchange' style='margin:6px 0'>"
        f"<div class='ftkit-chat-you'><b>you:</b> <span style='{PRE}'>{esc(answer['prompt'])}"
        "</span></div>"
        "<div style='display:grid;grid-template-columns:1fr 1fr;gap:8px;margin-top:4px'>"
        f"<div class='ftkit-chat-base' style='{cell}'><small><b>base model</b> (adapter off)"
        f"</small><div style='{PRE}'>{esc(answer['base'])}</div></div>"
        f"<div class='ftkit-chat-tuned' style='{cell};background:#f4fbf4'><small><b>tuned</b>"
        f"</small><div style='{PRE}'>{esc(answer['tuned'])}</div></div></div>"
        f"<div class='ftkit-chat-meta' style='color:gray;font-size:11px'>{esc(meta)}</div></div>"
    )
