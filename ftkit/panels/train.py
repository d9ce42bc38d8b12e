"""The training panel: pick and check a data set, set every TrainConfig field, submit, and
watch the job below, top to bottom, without leaving the notebook."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import ipywidgets as w

from ..client import Client, Dataset, Job
from ..config import DPO_LOSS_TYPES, METHOD_SETTINGS, TrainConfig
from ..core.html import esc, table
from ..core.rules import METHODS
from ..errors import DatasetError, FtkitError
from ..placement import SHARDINGS
from ..trackers import TRACKERS
from .common import on_close
from .monitor import MonitorPanel

# field -> (group, help). Every TrainConfig field appears exactly once.
FIELD_HELP: dict[str, tuple[str, str]] = {
    "base_model": ("Model", "Hub id (org/name) or a local folder with config.json"),
    "backend": ("Model", "auto: unsloth on a CUDA worker when installed, else transformers + peft"),
    "load_in_4bit": ("Model", "QLoRA: load the base model in 4 bits (auto: where the worker can)"),
    "max_seq_length": ("Model", "Longer examples are truncated to this many tokens"),
    "lora_r": ("LoRA", "Adapter rank: capacity of the update"),
    "lora_alpha": ("LoRA", "Scaling of the update (alpha / r)"),
    "lora_dropout": ("LoRA", "Dropout on the adapter inputs, in [0, 1)"),
    "max_steps": ("Training", "Optimizer steps (0 or empty: train num_epochs instead)"),
    "num_epochs": ("Training", "Passes over the data when max_steps is not set"),
    "batch_size": ("Training", "Examples per device per step"),
    "gradient_accumulation_steps": ("Training", "Steps accumulated before each optimizer update"),
    "learning_rate": ("Training", "Peak learning rate (linear decay)"),
    "warmup_steps": ("Training", "Linear warm-up steps"),
    "method": (
        "Method",
        "sft: learn the answers; dpo, orpo: prefer the chosen answer of each pair; "
        "kto: answers labelled good or bad",
    ),
    "beta": ("Method", "dpo, orpo, kto: how far from the reference model (0: TRL's, 0.1)"),
    "dpo_loss_type": ("Method", "dpo: the loss (default: TRL's sigmoid, the paper's)"),
    "kto_desirable_weight": ("Method", "kto: weight of the good answers (0: TRL's, 1.0)"),
    "kto_undesirable_weight": ("Method", "kto: weight of the bad answers (0: TRL's, 1.0)"),
    "devices": (
        "Devices",
        "Devices of one worker the job trains on (batch_size is per device); it waits for a "
        "worker with that many",
    ),
    "sharding": (
        "Devices",
        "none: a copy of the model on each device; fsdp: its weights sharded across them (GPUs)",
    ),
    "seed": ("Advanced", "Random seed: same seed, data and config give the same run"),
    "save_steps": ("Advanced", "Checkpoint every N steps (0: only the last step's weights)"),
    "logging_steps": ("Advanced", "Report loss every N steps"),
    "auto_batch_size": (
        "Advanced",
        "Out of GPU memory: retry at half the batch with twice the accumulation",
    ),
    "train_on_inputs": ("Advanced", "Also compute the loss on prompts / user turns"),
    "packing": ("Advanced", "Pack several short examples into one sequence"),
    "validation_split": ("Advanced", "Fraction held out to measure eval loss"),
    "eval_steps": ("Advanced", "Evaluate every N steps (0: at the end)"),
    "timeout_minutes": ("Advanced", "Stop the job after this many minutes (0: no limit)"),
    "sample_prompts": (
        "Advanced",
        "Prompts (one per line) answered before and after training in the report",
    ),
    "report_to": (
        "Advanced",
        "Experiment trackers the worker also logs to (ctrl-click for several; none: none)",
    ),
}


# -- upload and configure -------------------------------------------------------------------------
class UploadStep:
    """Pick a file (or give a path), validate it, show its profile, preview and problems."""

    def __init__(self, client: Client, on_dataset, max_seq_length=lambda: 2048):
        self.client, self.on_dataset, self.max_seq_length = client, on_dataset, max_seq_length
        self.dataset: Dataset | None = None
        self.picker = w.FileUpload(
            accept=".jsonl,.json,.csv,.parquet,.txt,.gz", multiple=False, description="Choose file"
        )
        self.picker.observe(self._picked, names="value")
        self.path = w.Text(placeholder="or a path on this machine", layout=w.Layout(width="360px"))
        self.use_path = w.Button(description="Use path")
        self.use_path.on_click(lambda _: self.load(Path(self.path.value.strip()).expanduser()))
        self.summary = w.HTML("<i>no data set yet</i>")
        self.preview = w.HTML()
        self.problems = w.HTML()
        self.widget = w.VBox(
            [
                w.HTML("<h3>1. Data set</h3>"),
                w.HBox([self.picker, self.path, self.use_path]),
                self.summary,
                self.problems,
                self.preview,
            ]
        )
        self.widget.add_class("ftkit-upload")

    def _picked(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        folder = Path(tempfile.mkdtemp(prefix="ftkit-upload-"))
        local = folder / Path(f["name"]).name
        local.write_bytes(bytes(f["content"]))
        self.load(local)

    def load(self, path: Path) -> Dataset | None:
        self.summary.value = f"checking <code>{esc(path.name)}</code> ..."
        self.problems.value = self.preview.value = ""
        try:
            ds = self.client.upload_dataset(path, max_seq_length=self.max_seq_length())
        except DatasetError as exc:
            self.dataset = None
            self.summary.value = "<b style='color:crimson'>this data set cannot be used yet</b>"
            self.problems.value = self._problems_html(str(exc).splitlines()[0], exc.problems)
            self.on_dataset(None)
            return None
        self.dataset = ds
        tokens = ds.profile.get("tokens") or {}
        estimate = " (estimated)" if tokens.get("estimated") else ""
        self.summary.value = (
            f"<div class='ftkit-profile'><b>{esc(ds.name)}</b>: format <b>{esc(ds.format)}</b>, "
            f"<b>{ds.rows:,}</b> rows, tokens per example mean {esc(tokens.get('mean'))}, "
            f"max {esc(tokens.get('max'))}{estimate}; about {ds.profile.get('tokens_per_epoch', 0):,} tokens per epoch"
            f"<br><small>id {esc(ds.id[:12])}</small></div>"
        )
        warnings = ds.profile.get("warnings") or []
        if warnings:
            self.problems.value = self._problems_html(
                "warnings (training will go ahead):", warnings, color="darkorange"
            )
        rows = [
            {"#": i + 1, "example": _shorten(ex)}
            for i, ex in enumerate(ds.profile.get("preview") or [])
        ]
        self.preview.value = table(rows, ["#", "example"], empty="")
        self.on_dataset(ds)
        return ds

    @staticmethod
    def _problems_html(title: str, problems: list[Any], color: str = "crimson") -> str:
        items = []
        for p in problems[:30]:
            p = p if isinstance(p, dict) else dataclasses.asdict(p)
            where = f"line {p['line']}: " if p.get("line") else ""
            field = f"[{p['field']}] " if p.get("field") else ""
            fix = f" <i>fix: {esc(p.get('fix'))}</i>" if p.get("fix") else ""
            items.append(f"<li>{esc(where)}{esc(field)}{esc(p.get('message'))}{fix}</li>")
        body = f"<ul>{''.join(items)}</ul>" if items else ""
        return f"<div class='ftkit-problems' style='color:{color}'><pre style='white-space:pre-wrap'>{esc(title)}</pre>{body}</div>"


def _shorten(example: dict[str, Any], limit: int = 160) -> str:
    if "messages" in example:
        text = " | ".join(f"{m.get('role')}: {m.get('content')}" for m in example["messages"])
    else:
        text = " | ".join(f"{k}: {v}" for k, v in example.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConfigureStep:
    """Every TrainConfig field as a labelled control, validated as you type."""

    def __init__(self, client: Client, defaults: dict[str, Any] | None = None):
        self.client = client
        base = TrainConfig().to_dict() | (defaults or {})
        self.controls: dict[str, w.Widget] = {
            name: self._control(name, base[name]) for name in TrainConfig.field_names()
        }
        self.controls["method"].observe(lambda _: self._show_method_settings(), names="value")
        self._show_method_settings()
        for control in self.controls.values():
            control.observe(lambda _: self.validate(), names="value")
        groups: dict[str, list[w.Widget]] = {}
        for name, control in self.controls.items():
            groups.setdefault(FIELD_HELP[name][0], []).append(control)
        advanced = w.Accordion(children=[w.VBox(groups.pop("Advanced"))], selected_index=None)
        advanced.set_title(0, "Advanced")
        target = (
            client.settings.redis_url.split("@")[-1]
            if client.settings.redis_url
            else client.settings.queue_db
        )
        self.error = w.HTML()
        self.widget = w.VBox(
            [w.HTML("<h3>2. Configure</h3>")]
            + [w.VBox([w.HTML(f"<b>{g}</b>"), *ctrls]) for g, ctrls in groups.items()]
            + [
                advanced,
                w.HTML(f"<small>queue: {esc(client.settings.broker)} at {esc(target)}</small>"),
                self.error,
            ]
        )
        self.widget.add_class("ftkit-configure")
        self.validate()

    @staticmethod
    def _control(name: str, value: Any) -> w.Widget:
        style, layout = {"description_width": "200px"}, w.Layout(width="460px")
        common = dict(description=name, tooltip=FIELD_HELP[name][1], style=style, layout=layout)
        if name == "backend":
            return w.Dropdown(options=["auto", "unsloth", "hf"], value=value, **common)
        if name == "method":
            return w.Dropdown(options=list(METHODS), value=value, **common)
        if name == "sharding":
            return w.Dropdown(options=list(SHARDINGS), value=value, **common)
        if name == "dpo_loss_type":  # "": unset, TRL's default
            options = [("default (sigmoid)", ""), *((t, t) for t in DPO_LOSS_TYPES)]
            return w.Dropdown(options=options, value=value or "", **common)
        if name in METHOD_SETTINGS:  # 0: unset, TRL's default (0 is no valid setting)
            return w.FloatText(value=value or 0.0, **common)
        if name == "load_in_4bit":  # three states: a checkbox cannot say "auto"
            options = [("auto", "auto"), ("yes", "yes"), ("no", "no")]
            chosen = "auto" if value is None else "yes" if value else "no"
            return w.Dropdown(options=options, value=chosen, **common)
        if isinstance(value, bool):
            return w.Checkbox(value=value, indent=True, **common)
        if name == "max_steps":
            return w.IntText(value=value or 0, **common)
        if name == "timeout_minutes":
            return w.FloatText(value=value or 0.0, **common)
        if name == "sample_prompts":
            return w.Textarea(value="\n".join(value), **common)
        if name == "report_to":
            return w.SelectMultiple(options=list(TRACKERS), value=tuple(value), rows=3, **common)
        if isinstance(value, int):
            return w.IntText(value=value, **common)
        if isinstance(value, float):
            return w.FloatText(value=value, **common)
        if name == "base_model":
            return w.Text(
                value=str(value), **{**common, "layout": w.Layout(width="100%", max_width="760px")}
            )
        return w.Text(value=str(value), **common)

    def values(self) -> dict[str, Any]:
        values = {name: c.value for name, c in self.controls.items()}
        values["max_steps"] = values["max_steps"] or None
        values["load_in_4bit"] = {"auto": None, "yes": True, "no": False}[values["load_in_4bit"]]
        values["timeout_minutes"] = values["timeout_minutes"] or None
        values["report_to"] = list(values["report_to"])
        values["sample_prompts"] = [
            p.strip() for p in values["sample_prompts"].splitlines() if p.strip()
        ]
        for name, methods in METHOD_SETTINGS.items():  # a hidden setting is not sent
            values[name] = (values[name] or None) if values["method"] in methods else None
        return values

    def _show_method_settings(self) -> None:
        """Each method setting is shown only while the method it applies to is chosen."""
        method = self.controls["method"].value
        for name, methods in METHOD_SETTINGS.items():
            self.controls[name].layout.display = "" if method in methods else "none"

    def validate(self) -> TrainConfig | None:
        try:
            config = TrainConfig.from_dict(self.values())
        except FtkitError as exc:
            self.error.value = (
                f"<span class='ftkit-config-error' style='color:crimson'>{esc(exc)}</span>"
            )
            return None
        self.error.value = ""
        return config


class Panel:
    """Upload, configure and monitor, top to bottom: a whole fine-tune without leaving the notebook."""

    def __init__(self, client: Client, **defaults: Any):
        self.client = client
        self.monitor: MonitorPanel | None = None
        self.submit_button = w.Button(
            description="Submit", icon="play", button_style="primary", disabled=True
        )
        self.submit_button.on_click(lambda _: self.submit())
        self.reason = w.HTML()
        self.monitor_box = w.VBox(
            [w.HTML("<h3>3. Monitor</h3><i>submit a job to watch it here</i>")]
        )
        self.configure = ConfigureStep(client, defaults)
        self.upload = UploadStep(
            client,
            lambda _ds: self._update_submit(),
            max_seq_length=lambda: self.configure.controls["max_seq_length"].value or 2048,
        )
        for control in self.configure.controls.values():
            control.observe(lambda _: self._update_submit(), names="value")
        self.widget = w.VBox(
            [
                self.upload.widget,
                self.configure.widget,
                w.HBox([self.submit_button, self.reason]),
                self.monitor_box,
            ]
        )
        self.widget.add_class("ftkit-panel")
        on_close(self.widget, self._stop_monitor)
        self._update_submit()

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def _update_submit(self) -> None:
        config = self.configure.validate()
        running = self.monitor is not None and not self.monitor.done
        reason = (
            "upload a usable data set first"
            if self.upload.dataset is None
            else "fix the configuration above"
            if config is None
            else "the job above is still running (cancel it, or wait)"
            if running
            else ""
        )
        self.submit_button.disabled = bool(reason)
        self.reason.value = f"<i class='ftkit-submit-reason'>{esc(reason)}</i>" if reason else ""

    def submit(self) -> Job | None:
        config = self.configure.validate()
        if config is None or self.upload.dataset is None:
            self._update_submit()
            return None
        try:
            job = self.client.submit(self.upload.dataset, config)
        except FtkitError as exc:
            self.reason.value = f"<span style='color:crimson'>{esc(exc)}</span>"
            return None
        if self.monitor is not None:
            self.monitor.stop()
        self.monitor = MonitorPanel(job, on_end=self._update_submit)
        self.monitor_box.children = [w.HTML("<h3>3. Monitor</h3>"), self.monitor.widget]
        self._update_submit()
        return job
