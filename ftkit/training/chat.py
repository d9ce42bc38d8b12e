"""Try a finished job's model: its base model loaded once with the adapter, each prompt answered
twice, by the base model (the adapter switched off) and by the tuned one. ``Job.chat_model``
makes one; the notebook's chat panel (``job.chat()``) and the server's
``POST /jobs/{id}/generate`` answer with it.

No second copy of the base model: PEFT's ``disable_adapter`` switches the LoRA layers off for
the base model's answer. That switch is the model's own state, so one answer is taken at a time
(a lock): two threads at once could each read the other's setting.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.rules import check_generation, check_prompt
from ..errors import ConfigError, FtkitError
from .samples import encode, generate_batch


def pick_device(device: str | None) -> str:
    """The device asked for, else the CUDA GPU where there is one, else the CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar: in a notebook it would land under whatever cell runs
    when the background load ends (the chat panel says it is loading); restored afterwards."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


class ChatModel:
    """A base model with a job's adapter, answering each prompt as the base and as the tuned
    model; ``close()`` frees its memory."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self._lock = threading.Lock()

    @classmethod
    def load(cls, base_model: str, adapter: Path, *, device: str | None = None) -> ChatModel:
        """The base model (a folder, or a hub id in the local cache) with the adapter folder on
        it, in eval mode on ``device`` (default: CUDA where there is one, else the CPU)."""
        from .inference import load_tuned
        from .model import check_base_model

        check_base_model(base_model)
        where = pick_device(device)
        with quiet_loading():
            model, tokenizer = load_tuned(base_model, adapter, device=where)
        return cls(model, tokenizer, device=where)

    @property
    def closed(self) -> bool:
        return self.model is None

    @property
    def template(self) -> str:
        """The chat template's source ("" when the tokenizer has none: a prompt is read as it is)."""
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else ""

    def sample(self, prompt: str, system: str | None = None) -> dict[str, Any]:
        """What the model is given: messages for the chat template, or the plain prompt."""
        if not self.template:
            return {"prompt": f"{system}\n\n{prompt}" if system else prompt}
        system_turn = [{"role": "system", "content": system}] if system else []
        return {"messages": [*system_turn, {"role": "user", "content": prompt}]}

    def render(self, prompt: str, system: str | None = None) -> str:
        """The text the model reads for this prompt: the chat template applied, the assistant's
        turn opened."""
        sample = self.sample(prompt, system)
        if "prompt" in sample:
            return sample["prompt"]
        return self.tokenizer.apply_chat_template(
            sample["messages"], tokenize=False, add_generation_prompt=True
        )

    def answer(
        self,
        prompt: str,
        *,
        system: str | None = None,
        temperature: float = 0.0,
        max_new_tokens: int = 64,
    ) -> dict[str, Any]:
        """The base model's and the tuned model's answers to one prompt (no history: both read
        the same text), with the rendered prompt and the settings they were made with."""
        temperature, max_new_tokens = check_generation(temperature, max_new_tokens)
        check_prompt(prompt)
        if system:
            check_prompt(system, "system")
        with self._lock:
            if self.model is None:
                raise FtkitError("this chat was closed and its model freed: start a new one")
            sample = self.sample(prompt, system)
            self._check_length(sample, max_new_tokens)
            started = time.perf_counter()
            args = (self.model, self.tokenizer, [sample], max_new_tokens, temperature)
            with self.model.disable_adapter():
                base = generate_batch(*args)[0]
            tuned = generate_batch(*args)[0]
            seconds = time.perf_counter() - started
            rendered = self.render(prompt, system)
        return {
            "prompt": prompt,
            "rendered_prompt": rendered,
            "base": base,
            "tuned": tuned,
            "settings": {
                "temperature": temperature,
                "max_new_tokens": max_new_tokens,
                "sampling": "sampled" if temperature else "greedy",
                "system": system or None,
                "device": self.device,
            },
            "seconds": round(seconds, 3),
        }

    def _check_length(self, sample: dict[str, Any], max_new_tokens: int) -> None:
        """A prompt and its answer must fit the model's context: said here, not as an index error
        from deep inside the model."""
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        tokens = len(encode(self.tokenizer, sample))
        if isinstance(limit, int) and tokens + max_new_tokens > limit:
            raise ConfigError(
                f"the prompt is {tokens} tokens and max_new_tokens {max_new_tokens}: together "
                f"more than this model's context of {limit} tokens; shorten the prompt",
                field="prompt",
            )

    def close(self) -> None:
        """Free the model's memory, CPU or GPU (after the answer in progress, if any)."""
        with self._lock:
            if self.model is None:
                return
            self.model = self.tokenizer = None
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
