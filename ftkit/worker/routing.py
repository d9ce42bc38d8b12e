"""Which queued jobs this worker leaves to another: those that ask for more devices than it has,
or for GPUs it does not have (``placement``).

Before its claim the worker reads the job's config, through ``Need.of`` (a record is untrusted),
and when it cannot run the job it does not claim it: it keeps the message it took for a few
seconds (``Holds``), then writes it back with the job's priority. Meanwhile a larger worker may
take the job, and this one goes on to the next message.

Why hold it rather than write it back at once, or through Huey's schedule: a message written
back at once is the next one this worker pops (it may be the highest priority in the queue), so
a lone small worker would spin on it and never reach its smaller jobs. Huey's schedule
re-enqueues through Huey, outside the job store's transaction: the record's ``queue_ref`` would
name no message and the lost-message reaper would queue the job a second time. Written back
here, the message goes through ``JobStore.transition`` with a compare-and-set on ``queue_ref``,
the way the reapers queue a job again: whichever writes first wins, the other writes nothing.
A held message is missing from the queue for less than the reaper's grace; should this worker
die holding it, the reaper queues the job again after that grace, as for any lost message."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .. import jobstore as jobs
from ..core import statuses
from ..core.records import JobRecord
from ..core.retry import through_outages
from ..placement import Need, Offer, refusal
from .runtime import Runtime

log = logging.getLogger(__name__)
NOTED_KEPT = 10_000  # the jobs whose event this worker wrote, remembered so it writes it once


class Holds:
    """The messages this worker took of jobs it leaves to a larger worker, until they go back."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        # Held about a heartbeat (the heartbeat writes them back), well within the reaper's grace.
        self.delay = min(rt.settings.heartbeat_seconds, rt.settings.worker_grace_seconds / 4)
        self.held: dict[str, tuple[Any, int, float]] = {}  # job id -> queue_ref, priority, due
        self.noted: set[str] = set()
        self.lock = threading.Lock()

    def fits(self, job_id: str) -> bool:
        """Whether this worker may claim the job; False when it left it to another (the claim
        decides the rest: a job gone, or no longer queued)."""
        try:
            record = through_outages(self.rt.store.get, job_id)
        except jobs.JobNotFound:
            return True
        if record.get("status") != statuses.QUEUED:
            return True
        config = record.get("config")
        need = Need.of(config if isinstance(config, dict) else {})
        if refusal(need, self.rt.offer) is None:
            return True
        self.leave(record, need)
        return False

    def leave(self, record: JobRecord, need: Need) -> None:
        """Hold the message taken for this job, and say once on the job why this worker left it."""
        from ..queue import priority_of

        rt, job_id = self.rt, record["job_id"]
        if through_outages(rt.store.message_pending, record):
            log.info("dropped a second message for job %s: its own waits in the queue", job_id)
            return
        with self.lock:
            self.held[job_id] = (
                record.get("queue_ref"),
                priority_of(record),
                time.monotonic() + self.delay,
            )
        log.info("left job %s (it needs %s) for another worker", job_id, need.describe())
        if job_id not in self.noted:
            if len(self.noted) >= NOTED_KEPT:
                self.noted.clear()
            self.noted.add(job_id)
            through_outages(rt.store.add_event, job_id, left_note(rt.worker_id, need, rt.offer))

    def release(self, *, every: bool = False) -> list[str]:
        """Write back the held messages that are due (``every``: all, as the worker stops); the
        jobs queued again. A job claimed, cancelled or queued again by a reaper meanwhile is
        left as it is."""
        from ..queue import message_for

        now = time.monotonic()
        with self.lock:
            due = {j: h for j, h in self.held.items() if every or h[2] <= now}
            for job_id in due:
                del self.held[job_id]
        back = []
        for job_id, (ref, priority, _) in due.items():
            try:
                moved = self.rt.store.transition(
                    job_id,
                    statuses.QUEUED,
                    allowed=(statuses.QUEUED,),
                    expect={"queue_ref": ref},
                    message=message_for(self.rt.huey, job_id, priority),
                )
            except jobs.JobNotFound:
                continue
            except Exception as exc:  # an outage: the next beat tries again
                log.warning("could not queue job %s again yet: %s", job_id, exc)
                with self.lock:
                    self.held.setdefault(job_id, (ref, priority, now))
                continue
            if moved:
                back.append(job_id)
        return back


def left_note(worker_id: str, need: Need, offer: Offer) -> str:
    """The job's event: which worker left it, what it has and what the job needs."""
    if need.gpus_only and offer.kind != "cuda":
        return (
            f"worker {worker_id} has CPUs only; the job needs {need.describe()} "
            "(sharding='fsdp'): left for a GPU worker"
        )
    has = f"{offer.devices} device{'s' if offer.devices != 1 else ''}"
    return (
        f"worker {worker_id} has {has}; the job needs {need.describe()}: left for a larger worker"
    )
