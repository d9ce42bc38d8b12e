"""``Client.health()``: whether jobs can run now. The broker answers, workers listen, and no
queued job waits for a worker larger than any that listens (a job asking for 4 devices where
the largest worker has 2 is named, not silently queued)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..core import statuses
from ..core.records import Health, WaitingJob
from ..jobstore import JobStore
from .status import waiting_for

# The oldest queued jobs health() reads: a page, so its cost does not grow with the queue.
WAITING_SCAN = 10


def waiting_jobs(
    store: JobStore, workers: Sequence[Mapping[str, Any]], scan: int = WAITING_SCAN
) -> list[WaitingJob]:
    """The queued jobs, among the oldest ``scan``, that no live worker can run, and why."""
    found: list[WaitingJob] = []
    for record in store.queued_before(time.time() + 1, scan):
        reason = waiting_for(record, lambda: workers)
        if reason is not None:
            found.append({"job_id": record["job_id"], "reason": reason})
    return found


def health_of(client: Any) -> Health:
    """What ``Client.health()`` returns (``client``: a Client, which sits above this module)."""
    settings, store = client.settings, client.store
    connected = store.ping()
    workers: list[Any] = []
    queue_depth, waiting = 0, []
    if connected:
        try:
            workers = store.workers()
            queue_depth = store.count(statuses.QUEUED)  # kept, not counted: O(1)
            waiting = waiting_jobs(store, workers) if queue_depth else []
        except Exception:
            connected = False
    status: Literal["healthy", "degraded", "unhealthy"] = (
        "unhealthy" if not connected else "healthy" if workers and not waiting else "degraded"
    )
    if not connected:
        warning: str | None = (
            f"cannot reach the {settings.broker} queue at {settings.queue_location}"
        )
    elif not workers:
        warning = client.no_worker_message()
    elif waiting:
        more = f" (and {len(waiting) - 1} more jobs)" if len(waiting) > 1 else ""
        warning = f"job {waiting[0]['job_id']} is {waiting[0]['reason']}{more}"
    else:
        warning = None
    return {
        "status": status,
        "broker": settings.broker,
        "broker_connected": connected,
        "workers": len(workers),
        "queue_depth": queue_depth,
        "queue": settings.queue_location,
        "storage": settings.storage,
        "warning": warning,
        "signed_messages": bool(settings.queue_secret),
        "waiting_jobs": waiting,
    }
