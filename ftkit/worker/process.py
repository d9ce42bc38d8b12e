"""The worker process: a Huey consumer that runs one job at a time (``job.run_job``), a heartbeat
thread that says the worker is alive and re-queues the jobs of workers that are not, and the
shutdown that hands the running job back to the queue."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from huey.consumer import Consumer

from .. import jobstore as jobs
from .. import stack
from ..config import Settings
from ..core import statuses
from ..core.records import WorkerInfo
from ..jobstore import open_store
from ..machine import gpu_info, offered_devices
from ..placement import Offer
from ..spec import secret_fingerprint
from ..storage import Storage
from .job import refuse_message, run_job
from .kernels import KernelPool, kernel_pid
from .notify import Notices
from .routing import Holds
from .runtime import Runtime

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings | None = None, *, worker_id: str | None = None, drain: bool = False
) -> None:
    """Run a worker until it is stopped (SIGINT or SIGTERM: hand back the running job, or finish it
    with ``drain``; a second signal: stop now)."""
    from ..queue import make_huey

    settings = settings or Settings.from_env()
    os.environ.update(settings.to_env())  # the notebook kernels read the same settings
    check_stack()  # nbconvert and papermill, once here, not per job
    kernels = start_kernels()
    scratch = Path(settings.scratch_dir).expanduser().resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    rt = Runtime(
        settings=settings,
        store=open_store(settings),
        storage=Storage(settings.storage, endpoint_url=settings.s3_endpoint_url),
        worker_id=worker_id or jobs.new_worker_id(),
        scratch=scratch,
        kernels=kernels,
        offer=Offer(*offered_devices()),
    )
    rt.notices = Notices(rt)
    rt.holds = Holds(rt)
    rt.huey = make_huey(
        settings,
        run_job=functools.partial(run_job, rt),
        refuse=functools.partial(refuse_message, rt),
    )
    stop = threading.Event()
    beat = threading.Thread(
        target=heartbeat_loop, args=(rt, stop), name="ftkit-heartbeat", daemon=True
    )
    beat.start()
    log.info(
        "worker %s on %s queue %s, storage %s; one job may use %d %s device(s)",
        rt.worker_id,
        settings.broker,
        settings.queue_location,
        settings.storage,
        rt.offer.devices,
        rt.offer.kind,
    )
    for warning in exposure_warnings(settings):
        log.warning(warning)
    try:
        HandBackConsumer(rt, drain=drain).run()
    finally:
        rt.notices.close()  # each pending webhook delivery: one last attempt
        rt.kernels.close()
        stop.set()
        beat.join(timeout=10)


def start_kernels() -> KernelPool:
    """The pool of each job's kernels, started, with what a job imports imported for real before
    the first job (FTKIT_CHECK_IMPORTS=0: not, for the tests' many short-lived workers)."""
    from ..report import warm_up

    kernels = KernelPool().start()
    if os.environ.get("FTKIT_CHECK_IMPORTS", "1") != "0":
        problems = kernels.import_problems()
        if problems:
            kernels.close()
            raise StackProblem(stack.report(problems))
    if kernels.warm:  # FTKIT_WARM_KERNEL=0 (the tests' workers): no head start of either kind
        threading.Thread(target=warm_up, name="ftkit-warm-report", daemon=True).start()
    return kernels


class HandBackConsumer(Consumer):
    """Huey's consumer, with ftkit's shutdown: the first SIGINT or SIGTERM stops taking jobs and
    asks the running job to checkpoint and go back to the queue (or, with ``drain``, lets it
    finish); a second signal stops at once."""

    def __init__(self, rt: Runtime, *, drain: bool):
        super().__init__(
            rt.huey,
            workers=1,
            worker_type="thread",
            initial_delay=0.05,
            backoff=1.1,
            max_delay=0.1,  # an idle worker looks at the queue ten times a second: a cheap read
            periodic=False,
            check_worker_health=True,
        )
        self.rt, self.drain = rt, drain

    def _handle_signal(self, signum, frame):
        if self._signum is not None:
            raise KeyboardInterrupt  # second signal: huey interrupts the workers now
        self._signum, self._restart, self._graceful = signum, False, True
        job = self.rt.current_job
        if job and not self.drain:
            try:
                self.rt.store.update(job, stop=statuses.STOP_HANDOFF)
            except Exception as exc:
                log.warning("could not ask job %s to hand back: %s", job, exc)
        log.info(
            "shutting down: %s",
            "finishing the running job" if self.drain else "handing back the running job",
        )


# -- the heartbeat ---------------------------------------------------------------------------------
def heartbeat_loop(rt: Runtime, stop: threading.Event) -> None:
    """Say we are alive every ``heartbeat_seconds``; re-queue the jobs of workers that are not,
    and the jobs this worker left to a larger one (all of them as it stops)."""
    reaper = Reaper(rt)
    facts = worker_facts(rt)
    while not stop.is_set():
        try:
            beat(rt, facts)
            if rt.holds is not None:
                rt.holds.release()
            reaper.sweep()
            if rt.kernels is not None and rt.current_job is None:  # never beside a job
                rt.kernels.keep_warm()
        except Exception as exc:  # a broker outage must not kill the worker: retry next beat
            log.warning("heartbeat failed: %s", exc)
        stop.wait(rt.settings.heartbeat_seconds)
    try:
        if rt.holds is not None:
            rt.holds.release(every=True)
        rt.store.forget_worker(rt.worker_id)
    except Exception as exc:
        log.warning("could not deregister worker: %s", exc)


def worker_facts(rt: Runtime) -> WorkerInfo:
    """What every heartbeat says about this worker that does not change while it runs."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": rt.started_at,
        "queue": rt.settings.queue_location,
        # Clients compare this with their own secret's, so a mismatch is refused at submit.
        "secret_fingerprint": secret_fingerprint(rt.settings.queue_secret),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # set by --gpus
        "device_kind": rt.offer.kind,  # what one job may use here (placement.Offer.of)
        "devices": rt.offer.devices,
        **gpu_info(),
    }


def beat(rt: Runtime, facts: WorkerInfo) -> None:
    """One heartbeat: alive, and which job this worker runs or is claiming."""
    noted_at = time.time()  # before the job is read: see JobStore.orphans
    rt.store.heartbeat(
        rt.worker_id,
        {
            **facts,
            "noted_at": noted_at,
            "current_job": rt.current_job or rt.claiming,
            "kernel_pid": kernel_pid(rt.kernel) if rt.kernel is not None else None,
            "jobs_done": rt.jobs_done,
            "warm_kernel": bool(rt.kernels and rt.kernels.ready),
        },
        ttl=rt.settings.worker_grace_seconds,
    )


class Reaper:
    """Re-queues the jobs of workers that died: their running jobs (orphans) and queued jobs whose
    message was lost, one page of the backlog per beat, in turn."""

    PAGE = 200

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.offset = 0
        self.missing: dict[str, tuple[Any, float]] = {}  # queued jobs seen without a message

    def sweep(self) -> None:
        from ..queue import requeue_lost, requeue_orphans

        rt = self.rt
        for job_id in requeue_orphans(rt.store, rt.huey):
            if rt.notices is not None:  # failed after its last attempt: an end to announce
                rt.notices.announce(job_id)
        requeue_lost(
            rt.store,
            rt.huey,
            grace=rt.settings.worker_grace_seconds,
            offset=self.offset,
            missing=self.missing,
        )
        more = rt.store.count(statuses.QUEUED) > self.offset + self.PAGE
        self.offset = self.offset + self.PAGE if more else 0


# -- what the worker checks and says at its start --------------------------------------------------
def exposure_warnings(settings: Settings) -> list[str]:
    """What a worker on a shared queue should be told at start about what it trusts."""
    if not settings.redis_url:
        return []
    from urllib.parse import urlsplit

    host = urlsplit(settings.redis_url).hostname or ""
    loopback = (
        host in ("localhost", "::1")
        or host.startswith("127.")
        or settings.redis_url.startswith("unix://")
    )
    warnings = []
    if not settings.queue_secret and not loopback:
        warnings.append(
            f"queue messages and job records are not signed, and Redis ({host}) is not on this "
            "machine: anyone who can write to it can queue jobs here. Set FTKIT_QUEUE_SECRET on "
            "every worker and client."
        )
    if not settings.allowed_model_dirs:
        warnings.append(
            "FTKIT_ALLOWED_MODEL_DIRS is not set: jobs may name only hub models, not local folders"
        )
    return warnings


class StackProblem(SystemExit):
    """The worker cannot run jobs with what is installed: it exits (code 3) before taking one, its
    message naming each package and how to install it."""

    def __init__(self, message: str):
        log.error(message)
        super().__init__(3)


def check_stack() -> None:
    """ftkit's declared ranges against what is installed, then the worker's own imports."""
    problems = stack.version_problems()
    if not problems:
        problems = [p for m in ("nbconvert", "papermill") if (p := stack.import_problem(m))]
    if problems:
        raise StackProblem(stack.report(problems))
