"""What every panel shares: a background refresher, closing hooks, assigning a view only when it
changed, and the jobs table's columns and rows.

Panels are thin views over the public API (``Client``, ``Job``, ``TrainConfig``): no Redis key,
no Huey object. Live views refresh from a background thread that never blocks the kernel; closing
the widget (or the job ending) stops it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w

from ..core import statuses
from ..errors import FtkitError

STATUS_STYLE = {
    statuses.COMPLETED: "success",
    statuses.FAILED: "danger",
    statuses.CANCELLED: "warning",
    statuses.TRAINING: "info",
}

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


class Refresher:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread until stopped or ``tick`` says done."""

    def __init__(self, tick: Callable[[], Any], interval: float):
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


class LiveView:
    """A view that refreshes itself in the background until it is closed or has nothing left to
    follow."""

    _refresher: Refresher

    @property
    def refreshing(self) -> bool:
        """Whether it still refreshes: it stops when closed, or once everything it shows ended."""
        return self._refresher.running


def on_close(widget: w.Widget, callback: Callable[[], Any]) -> None:
    """Run callback when the widget is closed (its view removed by ``close()``)."""
    original = widget.close

    def close() -> None:
        callback()
        original()

    widget.close = close  # type: ignore[method-assign]


def set_html(widget: w.HTML, value: str) -> None:
    """Assign only on change: an unchanged view is not re-rendered (no flicker, no traffic)."""
    if widget.value != value:
        widget.value = value


def job_row(s: Mapping[str, Any]) -> dict[str, Any]:
    """One job in the jobs tables of the dashboard and the runs panel."""
    duration = s.get("duration_seconds")
    return {
        "job_id": s["job_id"],
        "dataset": (s.get("dataset") or {}).get("name"),
        "base_model": (s.get("config") or {}).get("base_model"),
        "status": s["status"] + (f": {s['waiting_for']}" if s.get("waiting_for") else ""),
        "progress": f"{s.get('progress') or 0:.0f}%",
        "started": (s.get("started_at") or "")[11:19],
        "duration": f"{duration:.0f} s" if duration is not None else "",
        "final_loss": f"{s['loss']:.4f}" if s.get("loss") is not None else "",
        "tags": " ".join(s.get("tags") or []),
    }
