"""Does this run still own its job? A kernel outlives its worker when the worker is killed, and a
job re-queued (its worker taken for dead) or claimed twice (a broker restored from an older state)
has another run now. Whatever the job keeps, a checkpoint or the exactly-once "trained" marker, is
written only by the run the record names, and only while its worker is alive."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.statuses import STOPPED_SUPERSEDED

T = TypeVar("T")

# Why a kernel stops saving and reporting: its worker died, or the job is another run's now.
ORPHANED, SUPERSEDED = "orphaned", STOPPED_SUPERSEDED


def unless_store_away(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call ``fn``; None while the job store is unreachable. Training never fails for an outage:
    what was not written is written at the next try."""
    from ..errors import BrokerUnavailable

    try:
        return fn(*args, **kwargs)
    except BrokerUnavailable as exc:
        print(f"[ftkit] job store unreachable, will retry: {exc}", flush=True)
        return None


def valid_attempt(attempt: Any) -> int:
    """The attempt number as the record has it, which anyone with Redis access can edit: it names
    a file, so only a small positive int counts (0 otherwise)."""
    ok = isinstance(attempt, int) and not isinstance(attempt, bool) and 1 <= attempt <= 1000
    return attempt if ok else 0


class Fence:
    """One run's claim on its job: the worker and attempt the record named when the kernel
    started, and the worker process that started it. ``stop_reason`` is why the run stops, shared
    with the reporter's stop requests (cancel, handoff, timeout): once set, it is not read again."""

    def __init__(
        self,
        job_id: str | None,
        store: Any = None,
        *,
        worker: str | None = None,
        attempt: Any = None,
        worker_pid: int | None = None,
    ):
        self.job_id, self.store, self.worker = job_id, store, worker
        self.attempt = valid_attempt(attempt)
        self.attempt_read = attempt  # as the record had it: what a later read must still say
        # the process that started this kernel; a test passes another to play a dead worker
        self.worker_pid = os.getppid() if worker_pid is None else worker_pid
        self.stop_reason: str | None = None

    @property
    def fenced_off(self) -> bool:
        """Whether the job is another run's now (or nobody's): nothing more is written for it."""
        return self.stop_reason in (ORPHANED, SUPERSEDED)

    def orphaned(self) -> bool:
        """Whether this kernel's worker is gone, looked at now: what an orphan saves, a
        checkpoint or a marker, would race the next attempt."""
        if self.job_id is not None and self.stop_reason is None:
            if os.getppid() != self.worker_pid:
                self.stop_reason = ORPHANED
        return self.stop_reason == ORPHANED

    def superseded(self, record: dict[str, Any]) -> bool:
        """Whether the record names another run of the job than this one: another attempt (its
        worker was taken for dead and the job re-queued) or another worker (a broker restored from
        an older state let a second worker claim it). This run then stops and saves nothing."""
        if self.store is None or self.stop_reason is not None or self.worker is None:
            return self.stop_reason == SUPERSEDED
        if record.get("worker") != self.worker or record.get("attempt") != self.attempt_read:
            self.stop_reason = SUPERSEDED
            print(
                f"[ftkit] this run (attempt {self.attempt}, worker {self.worker}) stops: the job "
                f"is attempt {record.get('attempt')} on worker {record.get('worker')} now",
                flush=True,
            )
        return self.stop_reason == SUPERSEDED

    def owns_the_job(self) -> bool:
        """Looked at when this run would write what the job keeps (a checkpoint, a marker): its
        worker is alive and the record still names this run (read now, not at the last poll)."""
        if self.orphaned():
            return False
        while self.store is not None and self.stop_reason is None:
            fields = unless_store_away(self.store.get_fields, self.job_id, "worker", "attempt")
            if fields is not None:
                self.superseded(fields)
                break
            time.sleep(1.0)  # the broker is away: whose run this is can only be read from it
            if self.orphaned():
                break
        return not self.fenced_off

    def mark_trained(self, storage: Any, first_step: int, last_step: int) -> None:
        """Leave this attempt's marker in storage (runs/<job>/attempts/<n>.trained): its training
        ran from ``first_step`` to the end. What the soak counts executions by: written with the
        last checkpoint, before it counts, so a run that cannot be run again is counted once."""
        from ..storage import Storage

        marker = {
            "job_id": self.job_id,
            "attempt": self.attempt,
            "worker": self.worker,
            "first_step": first_step,
            "last_step": last_step,
            "finished_at": time.time(),
        }
        parts = Storage.trained_marker_parts(str(self.job_id), self.attempt)
        storage.write_text(json.dumps(marker), *parts)
