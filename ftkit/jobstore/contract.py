"""The job store's contract: what every backend promises, and the behaviour written once on top.

As with Huey's ``BaseStorage``, each operation is a documented method that raises
``NotImplementedError``; a backend is one subclass in its own module. Records are JSON values,
never pickled: a record is data, and anyone with the queue's URL may have written it, so every
reader checks what it uses.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core.records import JobRecord, WorkerInfo
from ..core.statuses import ACTIVE, CANCELLED, FINAL, QUEUED, STOP_CANCEL
from ..errors import JobNotFound
from .huey_layout import QueueMessage

LOG_LINES_KEPT = 500  # the log lines each job keeps; older ones are dropped as new ones come


class JobStore:
    """Job records and their status moves, metrics, logs, sweeps and worker heartbeats.

    What every backend guarantees:

    - a status changes only through ``transition``, a compare-and-set on the status and on any
      expected fields, atomic across processes (two workers claiming one job: one wins);
    - a record and its queue message are written in one transaction (``create``, and
      ``transition`` with a ``message``), so a record never exists without its message, nor a
      message without its record;
    - counts, listings and the orphan scan read indexes kept in the same transaction as the
      status, so they cost what they show, however many jobs there are.
    """

    backend = "base"

    def where(self) -> str:
        """Where the store lives, for messages (a Redis host and port, a file)."""
        raise NotImplementedError

    def ping(self) -> bool:
        """True when the backend answers."""
        raise NotImplementedError

    # -- records ----------------------------------------------------------------------------------
    def create(self, record: JobRecord, message: QueueMessage | None = None) -> str:
        """Store a new record (status queued) and its queue message, all or nothing, and return
        its job id. With an ``idempotency_key`` that an existing job already holds, store nothing
        and return that job's id. JobExists when a job with this id exists (an id chosen by the
        caller is used once, atomically)."""
        raise NotImplementedError

    def get(self, job_id: str) -> JobRecord:
        """The whole record; JobNotFound when there is none."""
        raise NotImplementedError

    def get_field(self, job_id: str, name: str) -> Any:
        """One field, cheaply (the cancel check reads this at every training step); None when
        the field or the job is missing."""
        raise NotImplementedError

    def get_fields(self, job_id: str, *names: str) -> dict[str, Any]:
        """A few fields in one read (a kernel's poll: stop request, worker, attempt); a missing
        field reads None."""
        raise NotImplementedError

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields (never ``status``: ValueError, use transition)."""
        raise NotImplementedError

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        allowed: Iterable[str] = (),
        expect: dict[str, Any] | None = None,
        message: QueueMessage | None = None,
        **fields: Any,
    ) -> bool:
        """Atomically move to status ``to`` (and set fields) if the current status is in
        ``allowed`` (any when empty) and each field in ``expect`` holds that value (an expected
        None matches a missing field; ``expect_worker=`` is short for ``expect={"worker": ...}``);
        with ``message``, queue it in the same transaction and point ``queue_ref`` at it. False
        when the record did not match; JobNotFound when there is none."""
        raise NotImplementedError

    def message_pending(self, record: JobRecord) -> bool:
        """Whether the queue message the record refers to (``queue_ref``) is still in the queue."""
        raise NotImplementedError

    def queued_before(self, before: float, limit: int, offset: int = 0) -> list[JobRecord]:
        """Queued records created before ``before``, oldest first (the reaper's candidates)."""
        raise NotImplementedError

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 50,
        *,
        tag: str | None = None,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Newest first, ``limit`` of them after skipping ``offset``; with ``tag``, only jobs whose
        record's ``tags`` hold it. Read through an index per status, per tag and per tag and
        status, so a page costs what it shows, however many jobs there are."""
        raise NotImplementedError

    def delete(self, job_id: str) -> None:
        """Remove the record, its metrics, logs and every index entry (status, tags, idempotency
        key); JobNotFound when there is none. The caller decides whether the job may go."""
        raise NotImplementedError

    def count(self, status: str | None = None) -> int:
        """How many jobs (in ``status``): kept with the records, never counted one by one."""
        raise NotImplementedError

    def holders(self) -> dict[str, Any]:
        """Each active job's id and the worker recorded as running it, read from an index kept
        with the status (not from the records): the orphan scan runs on every heartbeat."""
        raise NotImplementedError

    # -- metrics and logs -------------------------------------------------------------------------
    def add_metrics(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        """Append metric rows (one per logged training step), in order."""
        raise NotImplementedError

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Metric rows from index ``start`` on (a live view reads only what is new)."""
        raise NotImplementedError

    def trim_metrics(self, job_id: str, after_step: int) -> None:
        """Drop rows logged after ``after_step``: a resumed job continues its history from its
        checkpoint."""
        raise NotImplementedError

    def add_logs(self, job_id: str, lines: list[str]) -> None:
        """Append log lines; only the last LOG_LINES_KEPT are kept."""
        raise NotImplementedError

    def logs(self, job_id: str, n: int = 50) -> list[str]:
        """The last ``n`` kept log lines, oldest first."""
        raise NotImplementedError

    def logs_since(self, job_id: str, cursor: int = 0) -> tuple[list[str], int]:
        """The kept lines appended after ``cursor`` (0: from the first kept line) and the cursor
        to pass next time: a follower reads each line once, however the tail is trimmed."""
        raise NotImplementedError

    # -- sweeps -----------------------------------------------------------------------------------
    def create_sweep(self, record: dict[str, Any]) -> None:
        """Store a sweep's record (``sweep_id``, ``created_at``, its spec, runs and tags);
        JobExists when a sweep holds that id."""
        raise NotImplementedError

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        """A sweep's record; JobNotFound when there is none (or what is stored is not one)."""
        raise NotImplementedError

    def list_sweeps(self, limit: int = 20, *, tag: str | None = None) -> list[dict[str, Any]]:
        """Sweep records, newest first; with ``tag``, those whose ``tags`` hold it (sweeps are
        few: a tag is matched by reading them, not through an index). A garbled record is
        skipped, never fatal."""
        raise NotImplementedError

    def delete_sweep(self, sweep_id: str) -> None:
        """Remove a sweep's record (not its jobs); JobNotFound when there is none."""
        raise NotImplementedError

    # -- workers ----------------------------------------------------------------------------------
    def heartbeat(self, worker_id: str, info: WorkerInfo, ttl: float) -> None:
        """Say this worker is alive for the next ``ttl`` seconds; the store adds ``worker_id``
        and ``last_seen``."""
        raise NotImplementedError

    def forget_worker(self, worker_id: str) -> None:
        """Drop a worker's heartbeat at once (it is shutting down)."""
        raise NotImplementedError

    def workers(self) -> list[WorkerInfo]:
        """Live workers (heartbeat not expired), each with ``worker_id`` and ``last_seen``."""
        raise NotImplementedError

    # -- shared behaviour, written once -----------------------------------------------------------
    def request_cancel(self, job_id: str) -> str:
        """Ask a job to stop; a queued job is cancelled at once. Returns the status after."""
        if self.get(job_id)["status"] in FINAL:
            return self.get_field(job_id, "status")
        self.update(job_id, cancel_requested=True, stop=STOP_CANCEL)
        if self.transition(
            job_id,
            CANCELLED,
            allowed=(QUEUED,),
            finished_at=time.time(),
            error="cancelled before it started",
        ):
            self.add_event(job_id, "cancelled while queued")
        return self.get_field(job_id, "status")

    @contextlib.contextmanager
    def end_watch(self, job_id: str) -> Iterator[Callable[[float], None]]:
        """A sleep of up to ``timeout`` seconds that returns as soon as the job has ended: a waiting
        client sees the end at once, not at its next poll. Here, a cheap read of the status every
        50 ms; a backend that can be told of the end (Redis) overrides it."""

        def sleep(timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if self.get_field(job_id, "status") in FINAL:
                    return
                time.sleep(min(0.05, left))

        yield sleep

    def add_event(self, job_id: str, message: str) -> None:
        """An event is a log line the monitor and report show with a marker."""
        self.add_logs(job_id, [f"[ftkit {time.strftime('%H:%M:%S')}] {message}"])

    def orphans(self) -> list[JobRecord]:
        """Active jobs whose worker no longer heartbeats, or heartbeats without them: a live
        worker's heartbeat noted after the job's claim (``noted_at`` is taken before the worker
        reads its job, which it names from before its claim on) that names no job or another one
        means the worker has moved on, as when a Redis restored from an older state forgot the
        job's end. Only these records are read: a heartbeat costs the same with one running job or
        a thousand."""
        live = {w["worker_id"]: w for w in self.workers()}
        found = []
        for job_id, worker in sorted(self.holders().items()):
            beat = live.get(worker) if isinstance(worker, str) else None
            if beat is not None and (beat.get("current_job") == job_id or "noted_at" not in beat):
                continue
            try:
                record = self.get(job_id)
            except JobNotFound:
                continue  # deleted meanwhile
            if record.get("status") in ACTIVE and not running(record, live):
                found.append(record)
        return found


def running(record: JobRecord, live: dict[str, WorkerInfo]) -> bool:
    """Whether the live worker the record names may be running the job: it says so, or its last
    heartbeat was noted before it claimed the job (a second of slack for clock steps)."""
    held_by = record.get("worker")
    beat = live.get(held_by) if isinstance(held_by, str) else None
    if beat is None:
        return False
    noted_at, claimed_at = beat.get("noted_at"), record.get("started_at")
    if beat.get("current_job") == record["job_id"] or not isinstance(noted_at, (int, float)):
        return True
    return not isinstance(claimed_at, (int, float)) or noted_at <= claimed_at + 1.0


# -- helpers both backends use ---------------------------------------------------------------------
def dumps(value: Any) -> str:
    """One JSON value as stored: compact, and never NaN (which JSON readers elsewhere refuse)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def as_sweep(raw: str | bytes | None) -> dict[str, Any] | None:
    """A stored sweep record, or None where what is stored is not one (anyone with the Redis URL
    writes every key: one garbled record must not hide the others)."""
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def as_list(value: Any) -> list[Any]:
    """A stored value that should be a list, or an empty one."""
    return value if isinstance(value, list) else []


def expectations(expect: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """A transition's expected fields: ``expect`` plus ``expect_worker``, taken out of ``fields``
    (it is a condition, not a field to set)."""
    merged = dict(expect or {})
    worker = fields.pop("expect_worker", None)
    if worker:
        merged["worker"] = worker
    return merged
