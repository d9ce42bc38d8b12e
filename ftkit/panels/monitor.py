"""Live views: one job's monitor (status, progress, loss curve, log tail, cancel, outputs) and
the dashboard (workers, queue depth, jobs), each saying plainly when no worker listens."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ipywidgets as w

from ..client import Client, Job, LocalWorker, WorkerWatch
from ..core import statuses
from ..core.html import esc, table
from ..core.records import JobStatus, WorkerInfo
from ..core.statuses import FINAL
from ..errors import ConfigError, FtkitError
from ..placement import Offer
from ..plots import loss_svg, margins_svg, preference_line
from .common import (
    JOB_COLUMNS,
    STATUS_STYLE,
    LiveView,
    Refresher,
    job_row,
    on_close,
    set_html,
)


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
                f"<div class='ftkit-worker-exited' style='color:crimson'><b>⚠ {esc(head)}</b>"
                f"<pre style='font-size:11px;white-space:pre-wrap'>{esc(tail)}</pre></div>"
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
                f"local worker pid {started.pid} {state} · log <code>{esc(started.log)}</code>"
            )
        if message is not None:
            lines.insert(0, f"<b>⚠ {esc(message)}</b>")
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
            self.text.value = f"<span style='color:crimson'>{esc(exc)}</span>"
            return None
        self.refresh()
        return self.started

    def clear(self) -> None:
        self.start_button.layout.display = "none"
        if self.started is None:
            self.text.value = ""


# -- monitor --------------------------------------------------------------------------------------
class MonitorPanel(LiveView):
    """One job, live: status, progress with ETA, loss curve, last log lines, cancel, and its outputs."""

    def __init__(self, job: Job, *, interval: float = 1.0, autostart: bool = True, on_end=None):
        self.job, self.on_end, self.done = job, on_end, False
        self.title = w.HTML(f"<b>Job {esc(job.id)}</b>")
        self.status = w.HTML()
        self.bar = w.FloatProgress(
            min=0, max=100, value=0, description="progress", layout=w.Layout(width="460px")
        )
        self.step = w.Label()
        self.curve = w.HTML(loss_svg([]))
        self.preference = w.HTML()  # a preference job's latest margin and accuracy, its margins
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
        self.worker_notice = WorkerNotice(job.client)
        self.widget = w.VBox(
            [
                self.title,
                self.status,
                self.worker_notice.widget,
                w.HBox([self.bar, self.step]),
                self.curve,
                self.preference,
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
        on_close(self.widget, self._refresher.stop)
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
        method = (s.get("config") or {}).get("method") or "sft"
        self.status.value = (
            f"<span class='ftkit-status' data-status='{esc(s['status'])}' style='color:{color}'>"
            f"<b>{esc(s['status'])}</b></span> · <span class='ftkit-method'>{esc(method)}</span>"
            f"{esc(loss)}{esc(attempt)} · worker {esc(s.get('worker') or '-')}" + waiting_line(s)
        )
        self.bar.value = float(s.get("progress") or 0.0)
        self.bar.bar_style = style
        eta = s.get("eta_seconds")
        total = s.get("total_steps") or "?"
        self.step.value = f"step {s.get('current_step') or 0}/{total}" + (
            f" · ETA {eta:.0f} s" if eta is not None and s["status"] == statuses.TRAINING else ""
        )
        self.curve.value = loss_svg(self._metrics)
        self._show_preference()
        self.logs.value = (
            "<pre class='ftkit-logs' style='margin:0;font-size:11px'>"
            + esc("\n".join(self.job.logs(12)))
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

    def _show_preference(self) -> None:
        """TRL's rewards/margins and rewards/accuracies, once a preference job logged them."""
        line = preference_line(self._metrics)
        value = (
            f"<div class='ftkit-preference'>{esc(line)}</div>{margins_svg(self._metrics)}"
            if line
            else ""
        )
        if self.preference.value != value:
            self.preference.value = value

    def _show_outputs(self, s: JobStatus) -> None:
        result = s.get("result") or {}
        self.download_button.disabled = not result
        if s.get("report") or result:
            self.outputs.value = (
                f"<div class='ftkit-outputs'>report: <code>{esc(s.get('report'))}</code><br>"
                f"adapter: <code>{esc(result.get('adapter_dir'))}</code></div>"
            )
        if s["status"] == statuses.FAILED:
            trace = s.get("error_traceback") or ""
            self.error.value = (
                f"<div class='ftkit-error' style='color:crimson'><b>{esc(s.get('error'))}</b>"
                f"<pre style='font-size:11px;white-space:pre-wrap'>{esc(trace[-3000:])}</pre></div>"
            )
        elif s.get("warnings"):
            self.error.value = "".join(
                f"<div class='ftkit-warning' style='color:darkorange'>⚠ {esc(warning)}</div>"
                for warning in s["warnings"]
            )

    def cancel(self) -> None:
        self.job.cancel()
        self.refresh()

    def download(self) -> Path:
        path = self.job.download(self.dest.value)
        self.outputs.value += f"<div>downloaded to <code>{esc(path)}</code></div>"
        return path

    def stop(self) -> None:
        self._refresher.stop()


# -- dashboard ------------------------------------------------------------------------------------
def waiting_line(s: JobStatus) -> str:
    """A queued job that no live worker can run says why, under its status."""
    waiting = s.get("waiting_for")
    if not waiting:
        return ""
    return f"<div class='ftkit-waiting' style='color:darkorange'>⚠ {esc(waiting)}</div>"


WORKER_COLUMNS = [
    "worker",
    "host",
    "devices",
    "gpu",
    "gpu memory",
    "current job",
    "jobs done",
    "last heartbeat",
]


def workers_table(workers: list[WorkerInfo], *, empty: str) -> str:
    """The live workers: where each runs, on what, doing what, and when it last said so."""
    now = time.time()
    rows = [
        {
            "worker": wk["worker_id"],
            "host": wk.get("host"),
            "devices": Offer.of(dict(wk)).describe(),
            "gpu": wk.get("gpu") or "CPU",
            "gpu memory": wk.get("gpu_memory") or "",
            "current job": wk.get("current_job") or "idle",
            "jobs done": wk.get("jobs_done", 0),
            "last heartbeat": f"{now - wk['last_seen']:.0f} s ago",
        }
        for wk in workers
    ]
    return table(rows, WORKER_COLUMNS, empty=empty)


class Dashboard(LiveView):
    """Workers, queue depth and jobs, refreshed in place: three reads per refresh, whatever the job count."""

    def __init__(
        self, client: Client, *, interval: float = 2.0, limit: int = 50, autostart: bool = True
    ):
        self.client, self.limit = client, limit
        self.filter = w.Dropdown(
            options=["all", *statuses.STATUSES],
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
        on_close(self.widget, self._refresher.stop)
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
        set_html(
            self.health,
            f"broker <b>{esc(health['broker'])}</b> "
            f"({'connected' if health['broker_connected'] else 'unreachable'}) · "
            f"<b>{health['workers']}</b> live workers · queue depth <b>{health['queue_depth']}</b>",
        )
        set_html(self.workers, workers_table(workers, empty=self.client.no_worker_message()))
        set_html(self.jobs, table([job_row(s) for s in jobs], JOB_COLUMNS, empty=empty))
        active = [s["job_id"] for s in jobs if s["status"] not in FINAL]
        if list(self.cancel_id.options) != active:
            self.cancel_id.options = active
        return False

    def cancel(self, job_id: str) -> None:
        self.client.cancel(job_id)
        self.refresh()

    def _cancel_selected(self) -> None:
        if self.cancel_id.value:
            self.cancel(self.cancel_id.value)

    def stop(self) -> None:
        self._refresher.stop()
