"""ipywidgets panels: upload, configure, monitor, dashboard.

Thin views over the public API (``Client``, ``Job``, ``TrainConfig``): no Redis key, no Huey object.
Live views refresh from a background thread that never blocks the kernel; closing the widget (or
the job ending) stops it.
"""

from __future__ import annotations

import dataclasses
import html
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w

from .client import Client, Dataset, Job, LocalWorker, WorkerWatch
from .config import TrainConfig
from .core.statuses import FINAL
from .errors import ConfigError, DatasetError, FtkitError
from .plots import loss_svg

STATUS_STYLE = {
    "completed": "success",
    "failed": "danger",
    "cancelled": "warning",
    "training": "info",
}

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
}


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str = "nothing yet") -> str:
    if not rows:
        return f"<i>{_esc(empty)}</i>"
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td style='padding:2px 8px'>{_esc(r.get(c))}</td>" for c in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table class='ftkit-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Refresher:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread until stopped or ``tick`` says done."""

    def __init__(self, tick, interval: float):
        self.tick, self.interval = tick, interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ftkit-refresh", daemon=True)

    def start(self) -> Refresher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.tick():
                    return
            except FtkitError:
                pass  # a broker blip: show stale data, try again next tick
            self._stop.wait(self.interval)


def _on_close(widget: w.Widget, callback) -> None:
    """Run callback when the widget is closed (its view removed by ``close()``)."""
    original = widget.close

    def close() -> None:
        callback()
        original()

    widget.close = close  # type: ignore[method-assign]


# -- no worker ------------------------------------------------------------------------------------
class WorkerNotice:
    """Says plainly when no worker has listened on the queue for a few heartbeats; on the embedded
    (SQLite) queue it offers to start a local worker, and names that worker's log file."""

    def __init__(self, client: Client):
        self.client, self.watch = client, WorkerWatch(client)
        self.started: LocalWorker | None = None
        self.text = w.HTML()
        self.start_button = w.Button(
            description="Start a local worker",
            icon="play",
            tooltip="run `ftkit worker` on this machine in the background, with these settings",
            layout=w.Layout(width="auto", display="none"),
        )
        self.start_button.on_click(lambda _: self.start())
        self.widget = w.HBox([self.text, self.start_button])
        self.widget.add_class("ftkit-worker-notice")

    def refresh(self) -> None:
        exited = self.watch.exited()
        if exited is not None:  # a worker started here died: its code and its log's last lines
            head, _, tail = exited.partition("\n")
            value = (
                f"<div class='ftkit-worker-exited' style='color:crimson'><b>⚠ {_esc(head)}</b>"
                f"<pre style='font-size:11px;white-space:pre-wrap'>{_esc(tail)}</pre></div>"
            )
            if self.text.value != value:
                self.text.value = value
            self.start_button.layout.display = (
                "" if self.client.settings.broker == "sqlite" else "none"
            )
            return
        message = self.watch.check()
        started, lines = self.started, []
        if started is not None:
            state = "running" if started.running() else "exited"
            lines.append(
                f"local worker pid {started.pid} {state} · log <code>{_esc(started.log)}</code>"
            )
        if message is not None:
            lines.insert(0, f"<b>⚠ {_esc(message)}</b>")
        offer = (
            message is not None
            and self.client.settings.broker == "sqlite"
            and (started is None or not started.running())
        )
        value = (
            f"<div class='ftkit-no-worker' style='color:darkorange'>{'<br>'.join(lines)}</div>"
            if lines
            else ""
        )
        if self.text.value != value:
            self.text.value = value
        self.start_button.layout.display = "" if offer else "none"

    def start(self) -> LocalWorker | None:
        try:
            self.started = self.client.start_local_worker()
        except FtkitError as exc:
            self.text.value = f"<span style='color:crimson'>{_esc(exc)}</span>"
            return None
        self.refresh()
        return self.started

    def clear(self) -> None:
        self.start_button.layout.display = "none"
        if self.started is None:
            self.text.value = ""


# -- monitor --------------------------------------------------------------------------------------
class MonitorPanel:
    """One job, live: status, progress with ETA, loss curve, last log lines, cancel, and its outputs."""

    def __init__(self, job: Job, *, interval: float = 1.0, autostart: bool = True, on_end=None):
        self.job, self.on_end, self.done = job, on_end, False
        self.title = w.HTML(f"<b>Job {_esc(job.id)}</b>")
        self.status = w.HTML()
        self.bar = w.FloatProgress(
            min=0, max=100, value=0, description="progress", layout=w.Layout(width="460px")
        )
        self.step = w.Label()
        self.curve = w.HTML(loss_svg([]))
        self.logs = w.HTML(layout=w.Layout(max_height="180px", overflow="auto"))
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning")
        self.cancel_button.on_click(lambda _: self.cancel())
        self.dest = w.Text(value=f"./adapter-{job.id}", description="to folder")
        self.download_button = w.Button(
            description="Download adapter",
            icon="download",
            disabled=True,
            layout=w.Layout(width="auto"),
        )
        self.download_button.on_click(lambda _: self.download())
        self.outputs = w.HTML()
        self.error = w.HTML()
        self.worker_notice = WorkerNotice(job._client)
        self.widget = w.VBox(
            [
                self.title,
                self.status,
                self.worker_notice.widget,
                w.HBox([self.bar, self.step]),
                self.curve,
                self.logs,
                w.HBox([self.cancel_button, self.download_button, self.dest]),
                self.outputs,
                self.error,
            ],
            layout=w.Layout(border="1px solid #ddd", padding="8px"),
        )
        self.widget.add_class("ftkit-monitor")
        self._metrics: list[dict[str, Any]] = []
        self._refresher = Refresher(self.refresh, interval)
        _on_close(self.widget, self._refresher.stop)
        self.refresh()
        if autostart and self.job.status()["status"] not in FINAL:
            self._refresher.start()

    def refresh(self) -> bool:
        """Read what changed and update the views; True once the job has ended."""
        s = self.job.status()
        self._metrics += self.job.metrics(start=len(self._metrics))
        style = STATUS_STYLE.get(s["status"], "")
        color = {
            "success": "green",
            "danger": "crimson",
            "warning": "darkorange",
            "info": "steelblue",
        }.get(style, "gray")
        loss = f" · loss {s['loss']:.4f}" if s.get("loss") is not None else ""
        attempt = f" · attempt {s['attempt']}" if (s.get("attempt") or 1) > 1 else ""
        self.status.value = (
            f"<span class='ftkit-status' data-status='{_esc(s['status'])}' style='color:{color}'>"
            f"<b>{_esc(s['status'])}</b></span>{_esc(loss)}{_esc(attempt)}"
            f" · worker {_esc(s.get('worker') or '-')}"
        )
        self.bar.value = float(s.get("progress") or 0.0)
        self.bar.bar_style = style
        eta = s.get("eta_seconds")
        total = s.get("total_steps") or "?"
        self.step.value = f"step {s.get('current_step') or 0}/{total}" + (
            f" · ETA {eta:.0f} s" if eta is not None and s["status"] == "training" else ""
        )
        self.curve.value = loss_svg(self._metrics)
        self.logs.value = (
            "<pre class='ftkit-logs' style='margin:0;font-size:11px'>"
            + _esc("\n".join(self.job.logs(12)))
            + "</pre>"
        )
        done = s["status"] in FINAL
        if done:
            self.worker_notice.clear()
        else:
            self.worker_notice.refresh()
        self.cancel_button.disabled = done
        if done:
            self._show_outputs(s)
            if not self.done and self.on_end is not None:
                self.done = True
                self.on_end()
        self.done = done
        return done

    def _show_outputs(self, s: dict[str, Any]) -> None:
        result = s.get("result") or {}
        self.download_button.disabled = not result
        if s.get("report") or result:
            self.outputs.value = (
                f"<div class='ftkit-outputs'>report: <code>{_esc(s.get('report'))}</code><br>"
                f"adapter: <code>{_esc(result.get('adapter_dir'))}</code></div>"
            )
        if s["status"] == "failed":
            trace = s.get("error_traceback") or ""
            self.error.value = (
                f"<div class='ftkit-error' style='color:crimson'><b>{_esc(s.get('error'))}</b>"
                f"<pre style='font-size:11px;white-space:pre-wrap'>{_esc(trace[-3000:])}</pre></div>"
            )
        elif s.get("warnings"):
            self.error.value = "".join(
                f"<div class='ftkit-warning' style='color:darkorange'>⚠ {_esc(warning)}</div>"
                for warning in s["warnings"]
            )

    def cancel(self) -> None:
        self.job.cancel()
        self.refresh()

    def download(self) -> Path:
        path = self.job.download(self.dest.value)
        self.outputs.value += f"<div>downloaded to <code>{_esc(path)}</code></div>"
        return path

    def stop(self) -> None:
        self._refresher.stop()


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
        self.summary.value = f"checking <code>{_esc(path.name)}</code> ..."
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
            f"<div class='ftkit-profile'><b>{_esc(ds.name)}</b>: format <b>{_esc(ds.format)}</b>, "
            f"<b>{ds.rows:,}</b> rows, tokens per example mean {_esc(tokens.get('mean'))}, "
            f"max {_esc(tokens.get('max'))}{estimate}; about {ds.profile.get('tokens_per_epoch', 0):,} tokens per epoch"
            f"<br><small>id {_esc(ds.id[:12])}</small></div>"
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
        self.preview.value = _table(rows, ["#", "example"], empty="")
        self.on_dataset(ds)
        return ds

    @staticmethod
    def _problems_html(title: str, problems: list[Any], color: str = "crimson") -> str:
        items = []
        for p in problems[:30]:
            p = p if isinstance(p, dict) else dataclasses.asdict(p)
            where = f"line {p['line']}: " if p.get("line") else ""
            field = f"[{p['field']}] " if p.get("field") else ""
            fix = f" <i>fix: {_esc(p.get('fix'))}</i>" if p.get("fix") else ""
            items.append(f"<li>{_esc(where)}{_esc(field)}{_esc(p.get('message'))}{fix}</li>")
        body = f"<ul>{''.join(items)}</ul>" if items else ""
        return f"<div class='ftkit-problems' style='color:{color}'><pre style='white-space:pre-wrap'>{_esc(title)}</pre>{body}</div>"


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
                w.HTML(f"<small>queue: {_esc(client.settings.broker)} at {_esc(target)}</small>"),
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
        values["sample_prompts"] = [
            p.strip() for p in values["sample_prompts"].splitlines() if p.strip()
        ]
        return values

    def validate(self) -> TrainConfig | None:
        try:
            config = TrainConfig.from_dict(self.values())
        except FtkitError as exc:
            self.error.value = (
                f"<span class='ftkit-config-error' style='color:crimson'>{_esc(exc)}</span>"
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
        _on_close(self.widget, lambda: self.monitor and self.monitor.stop())
        self._update_submit()

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
        self.reason.value = f"<i class='ftkit-submit-reason'>{_esc(reason)}</i>" if reason else ""

    def submit(self) -> Job | None:
        config = self.configure.validate()
        if config is None or self.upload.dataset is None:
            self._update_submit()
            return None
        try:
            job = self.client.submit(self.upload.dataset, config)
        except FtkitError as exc:
            self.reason.value = f"<span style='color:crimson'>{_esc(exc)}</span>"
            return None
        if self.monitor is not None:
            self.monitor.stop()
        self.monitor = MonitorPanel(job, on_end=self._update_submit)
        self.monitor_box.children = [w.HTML("<h3>3. Monitor</h3>"), self.monitor.widget]
        self._update_submit()
        return job


# -- dashboard ------------------------------------------------------------------------------------
JOB_COLUMNS = [
    "job_id",
    "dataset",
    "base_model",
    "status",
    "progress",
    "started",
    "duration",
    "final_loss",
    "tags",
]


def job_row(s: dict[str, Any]) -> dict[str, Any]:
    duration = s.get("duration_seconds")
    return {
        "job_id": s["job_id"],
        "dataset": (s.get("dataset") or {}).get("name"),
        "base_model": (s.get("config") or {}).get("base_model"),
        "status": s["status"],
        "progress": f"{s.get('progress') or 0:.0f}%",
        "started": (s.get("started_at") or "")[11:19],
        "duration": f"{duration:.0f} s" if duration is not None else "",
        "final_loss": f"{s['loss']:.4f}" if s.get("loss") is not None else "",
        "tags": " ".join(s.get("tags") or []),
    }


class Dashboard:
    """Workers, queue depth and jobs, refreshed in place: three reads per refresh, whatever the job count."""

    def __init__(
        self, client: Client, *, interval: float = 2.0, limit: int = 50, autostart: bool = True
    ):
        self.client, self.limit = client, limit
        self.filter = w.Dropdown(
            options=[
                "all",
                "queued",
                "preparing",
                "training",
                "saving",
                "completed",
                "failed",
                "cancelled",
            ],
            value="all",
            description="status",
        )
        self.filter.observe(lambda _: self.refresh(), names="value")
        self.tag = w.Text(value="", description="tag", placeholder="any", continuous_update=False)
        self.tag.observe(lambda _: self.refresh(), names="value")
        self.health = w.HTML()
        self.workers = w.HTML()
        self.jobs = w.HTML()
        self.cancel_id = w.Dropdown(options=[], description="job")
        self.cancel_button = w.Button(description="Cancel job", icon="stop", button_style="warning")
        self.cancel_button.on_click(lambda _: self._cancel_selected())
        self.widget = w.VBox(
            [
                w.HTML("<h3>ftkit dashboard</h3>"),
                self.health,
                w.HTML("<b>Workers</b>"),
                self.workers,
                w.HBox([self.filter, self.tag, self.cancel_id, self.cancel_button]),
                self.jobs,
            ]
        )
        self.widget.add_class("ftkit-dashboard")
        self._refresher = Refresher(lambda: self.refresh() and False, interval)
        _on_close(self.widget, self._refresher.stop)
        self.refresh()
        if autostart:
            self._refresher.start()

    def refresh(self) -> bool:
        status = None if self.filter.value == "all" else self.filter.value
        health = self.client.health()
        workers = self.client.workers()
        tag = self.tag.value.strip() or None
        try:
            jobs = self.client.jobs(status=status, limit=self.limit, tag=tag)
            empty = "no jobs" if tag is None else f"no jobs tagged {tag}"
        except ConfigError as exc:  # a tag being typed: say what is wrong with it, list nothing
            jobs, empty = [], str(exc)
        self._set(
            self.health,
            f"broker <b>{_esc(health['broker'])}</b> "
            f"({'connected' if health['broker_connected'] else 'unreachable'}) · "
            f"<b>{health['workers']}</b> live workers · queue depth <b>{health['queue_depth']}</b>",
        )
        now = time.time()
        self._set(
            self.workers,
            _table(
                [
                    {
                        "worker": wk["worker_id"],
                        "host": wk.get("host"),
                        "gpu": wk.get("gpu") or "CPU",
                        "gpu memory": wk.get("gpu_memory") or "",
                        "current job": wk.get("current_job") or "idle",
                        "jobs done": wk.get("jobs_done", 0),
                        "last heartbeat": f"{now - wk['last_seen']:.0f} s ago",
                    }
                    for wk in workers
                ],
                [
                    "worker",
                    "host",
                    "gpu",
                    "gpu memory",
                    "current job",
                    "jobs done",
                    "last heartbeat",
                ],
                empty=self.client.no_worker_message(),
            ),
        )
        self._set(self.jobs, _table([job_row(s) for s in jobs], JOB_COLUMNS, empty=empty))
        active = [s["job_id"] for s in jobs if s["status"] not in FINAL]
        if list(self.cancel_id.options) != active:
            self.cancel_id.options = active
        return False

    @staticmethod
    def _set(widget: w.HTML, value: str) -> None:
        """Assign only on change: an unchanged view is not re-rendered (no flicker, no traffic)."""
        if widget.value != value:
            widget.value = value

    def cancel(self, job_id: str) -> None:
        self.client.cancel(job_id)
        self.refresh()

    def _cancel_selected(self) -> None:
        if self.cancel_id.value:
            self.cancel(self.cancel_id.value)

    def stop(self) -> None:
        self._refresher.stop()
