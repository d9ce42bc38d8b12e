"""One job on this worker, start to end, as one object: claim -> stage -> execute -> finish.

A job a worker accepts either runs or ends visibly: ``finish`` always runs, every failure keeps
the executed notebook as the job's report, and every step that talks to the broker or storage
waits out an outage. The record is untrusted: it is verified (signature, fields, base model)
before anything is staged, and a record the worker refuses ends the job failed, saying why."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import jobstore as jobs
from ..core import statuses
from ..core.records import JobRecord
from ..core.retry import through_outages
from ..errors import ConfigError
from ..spec import (
    JobSpec,
    RecordRefused,
    check_model_path,
    is_job_id,
    looks_like_path,
    verify_signature,
)
from .notebook import (
    Watchdog,
    job_result,
    notebook_parameters,
    run_notebook,
    save_report,
    upload_outputs,
)
from .output_log import OutputLog
from .runtime import Runtime, patiently
from .staging import (
    continue_from,
    inside,
    restore_checkpoint,
    stage_dataset,
    stage_model,
    stage_parent_adapter,
)
from .trackers import add_warnings, close_mlflow_run, upload_tracker_files

log = logging.getLogger(__name__)


def run_job(rt: Runtime, job_id: str) -> None:
    """The queue's task: run the job, then log one line of where its time went (the bench's
    breakdown reads it)."""
    job = JobRun(rt, job_id)
    started = time.perf_counter()
    try:
        job.run()
    finally:
        took = time.perf_counter() - started
        log.info("job %s phases %s", job_id, json.dumps({"total": took, **job.phases}))


class JobRun:
    """One run of one job. ``final`` and ``fields`` hold how it will end, from the first step on:
    failed, with "the worker stopped before the job ended", until a step says otherwise."""

    spec: JobSpec  # the verified record, set by claim()
    run_dir: Path  # this run's folder, set by claim()

    def __init__(self, rt: Runtime, job_id: str):
        self.rt, self.job_id = rt, job_id
        self.final: str = statuses.FAILED
        self.fields: dict[str, Any] = {"error": "the worker stopped before the job ended"}
        self.stopped: str | None = None  # why training stopped early, when it did
        self.killed = False  # its kernel died with no stop asked of it: it wants a new attempt
        self.phases: dict[str, float] = {}  # seconds per phase, logged when the job ends
        self.record: JobRecord = {}
        self.data_path = Path()
        self.resume = self.adapter = ""  # the checkpoint or the adapter it starts from

    # -- the steps, in order ----------------------------------------------------------------------
    def run(self) -> None:
        """Claim the job, stage its data, run the template notebook (resuming from a checkpoint
        when an earlier attempt left one), upload report and adapter, and always end the job:
        completed, failed, cancelled, or handed back to the queue."""
        if not self.claim():
            return
        try:
            self.stage()
            self.execute()
        except Exception as exc:  # anything else still ends the job, with what went wrong
            log.exception("job %s failed", self.job_id)
            self.fields = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            try:
                self.finish()
            finally:
                self.clean_up()

    def claim(self) -> bool:
        """queued -> preparing for this worker, the record verified and a clean run folder made;
        False when the job is not ours to run (or its record is refused, which ends it)."""
        rt = self.rt
        if not is_job_id(self.job_id):  # never let it near a path
            log.warning("dropping a task whose job id is malformed: %r", str(self.job_id)[:80])
            return False
        if rt.holds is not None and not rt.holds.fits(self.job_id):
            return False  # it needs more devices than this worker has: left on the queue
        # Heartbeats name the job from before the claim on: one that does not, sent after the
        # claim, tells the reapers this worker is not running it (JobStore.orphans).
        rt.claiming = self.job_id
        try:
            with self.timed("claim"):
                record = self.claim_record()
            if record is None:
                return False
            try:
                self.spec = verify_record(rt, record)
            except RecordRefused as exc:
                refuse(rt, self.job_id, str(exc))
                return False
            self.record = record
            self.run_dir = inside(rt.scratch, "runs", self.spec.job_id)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            (self.run_dir / "output").mkdir(parents=True)
            rt.current_job = self.job_id
        finally:
            rt.claiming = None
        return True

    def stage(self) -> None:
        """The data set, an uploaded model, and what the run resumes from, on this machine."""
        rt, job_id = self.rt, self.job_id
        with self.timed("staging"):
            self.data_path = patiently(stage_dataset, rt, job_id, self.spec.dataset)
            if self.spec.model:  # a local model folder the client uploaded: use the staged copy
                staged = patiently(stage_model, rt, job_id, self.spec.model)
                self.spec = self.spec.with_base_model(staged)
            checkpoints = self.run_dir / "output" / "checkpoints"
            self.resume = patiently(restore_checkpoint, rt, job_id, checkpoints)
        parent = self.spec.resume_from
        if parent and self.spec.config.preference:
            self.prefer_from(parent)
        elif not self.resume and parent:  # its own checkpoint first: a later attempt
            self.continue_parent(parent)

    def prefer_from(self, parent: str) -> None:
        """A preference run continuing a job starts from that job's adapter, never its checkpoint
        (another method's steps and optimizer), and scores against that model: every attempt
        stages it, its own checkpoint or not, as the reference is made from it."""
        with self.timed("staging"):
            self.adapter = patiently(stage_parent_adapter, self.rt, self.run_dir, parent)
        if not self.resume:
            self.rt.store.add_event(
                self.job_id,
                f"starting from job {parent}'s adapter, which is also the reference model",
            )
            self.record["started_from"] = "adapter"
            through_outages(self.rt.store.update, self.job_id, started_from="adapter")

    def continue_parent(self, parent: str) -> None:
        """Start from the job this one continues: its checkpoint, else its adapter."""
        with self.timed("staging"):
            self.resume, self.adapter = patiently(
                continue_from, self.rt, self.job_id, self.run_dir, parent
            )
        self.record["started_from"] = Path(self.resume).name if self.resume else "adapter"
        through_outages(self.rt.store.update, self.job_id, started_from=self.record["started_from"])

    def execute(self) -> None:
        """The notebook, in a kernel of its own, watched; then what it says about how it ended."""
        rt = self.rt
        with self.timed("kernel"):
            # a multi-device job's kernel trains nothing itself: never one unsloth has patched
            config = self.spec.config
            backend = "hf" if config.devices > 1 else config.backend
            rt.kernel = rt.kernels.take(backend=backend, devices=config.devices)
        parameters = notebook_parameters(
            self.spec, self.record, self.data_path, self.run_dir, self.resume, self.adapter
        )
        output = OutputLog(rt.store, self.job_id)
        try:
            with (
                Watchdog(rt, self.job_id, self.spec.config.timeout_minutes),
                self.timed("notebook"),
            ):
                error = run_notebook(parameters, self.run_dir, self.report, rt.kernel, output)
        finally:
            output.close()
        if error:
            self.notebook_failed(error)
        else:
            self.notebook_completed()

    def finish(self) -> None:
        """End the job as the run decided, with its report saved: unless another run owns the
        job now, which then ends it itself."""
        if self.stopped == statuses.STOPPED_SUPERSEDED:
            attempt, worker = self.record.get("attempt"), self.rt.worker_id
            note = f"worker {worker} stopped its run of attempt {attempt}"
            note += ": the job is another run's now"
            through_outages(self.rt.store.add_event, self.job_id, note)
            return
        self.apply_stop_request()
        event = self.retry_or_give_up() if self.killed else None
        with self.timed("trackers"):
            self.tracker_warnings(*upload_tracker_files(self.rt, self.job_id, self.run_dir))
        with self.timed("report"):
            self.fields["report"] = save_report(
                self.rt, self.job_id, self.report, self.record, self.final, self.fields
            )
        with self.timed("trackers"):
            self.tracker_warnings([], close_mlflow_run(self.run_dir, self.report, self.final))
        with self.timed("finish"):
            if self.final == statuses.QUEUED:
                through_outages(self.hand_back, event)
            else:
                through_outages(self.end, event)
                announce(self.rt, self.job_id)

    def clean_up(self) -> None:
        """One kernel, one job: nothing of this job leaks into the next; then the pool may warm
        the next job's kernel, with no job beside it."""
        rt = self.rt
        if rt.kernel is not None:
            from .kernels import shutdown

            shutdown(rt.kernel)
            rt.kernel = None
        rt.current_job = None
        rt.jobs_done += 1
        shutil.rmtree(self.run_dir / "output" / "checkpoints", ignore_errors=True)
        shutil.rmtree(self.run_dir / "parent", ignore_errors=True)
        if rt.kernels is not None:
            rt.kernels.idle()

    def tracker_warnings(self, kernel: list[str], worker: list[str]) -> None:
        """The trackers' warnings into the job's record; the worker's own into its log too (the
        kernel printed its own)."""
        for line in worker:
            through_outages(self.rt.store.add_event, self.job_id, f"tracker warning: {line}")
        add_warnings(self.record, self.fields, [*kernel, *worker])

    # -- how the notebook ended --------------------------------------------------------------------
    def notebook_failed(self, error: dict[str, Any]) -> None:
        """A failed notebook: its error, and whether a stop request explains it. A kernel that
        died with no stop asked of it was killed from outside (out of memory, say): a retry."""
        stopped = through_outages(self.rt.store.get_field, self.job_id, "stop")
        self.fields, self.stopped = error, stopped
        self.killed = bool(self.fields.pop("kernel_died", False)) and not self.stopped

    def notebook_completed(self) -> None:
        """A notebook that ran to its end: its outputs uploaded, unless it stopped to hand the job
        back or because the job is another run's now, then the job's result."""
        outputs = json.loads((self.run_dir / "output" / "result.json").read_text())
        self.stopped = outputs["result"].get("stopped")
        if self.stopped not in (statuses.STOP_HANDOFF, statuses.STOPPED_SUPERSEDED):
            with self.timed("upload"):
                patiently(upload_outputs, self.rt, self.job_id, self.run_dir)
        self.final = statuses.COMPLETED
        self.fields = {
            "result": job_result(self.rt, self.job_id, outputs, self.record),
            "error": None,
        }

    # -- the decisions at the end ------------------------------------------------------------------
    def apply_stop_request(self) -> None:
        """A job that stopped early ends by why it was asked to: cancelled, timed out, or handed
        back."""
        if self.stopped == statuses.STOP_CANCEL:
            self.final = statuses.CANCELLED
            self.fields = {**self.fields, "error": "cancelled while running"}
        elif self.stopped == statuses.STOP_TIMEOUT:
            minutes = self.spec.config.timeout_minutes
            self.final = statuses.FAILED
            self.fields = {**self.fields, "error": f"timed out after {minutes:g} minutes"}
        elif self.stopped == statuses.STOP_HANDOFF:
            self.final = statuses.QUEUED
            self.fields = {"worker": None, "stop": None, "report": self.fields.get("report")}

    def retry_or_give_up(self) -> str:
        """A job whose kernel died goes back to the queue as its next attempt (resuming from its
        last checkpoint), as when its worker dies; after the job's own ``max_attempts`` it fails,
        saying so. The event to finish with."""
        from ..queue import max_attempts_of

        record = through_outages(self.rt.store.get, self.job_id)
        attempt, most = record.get("attempt"), max_attempts_of(record)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            attempt = most  # a record edited by hand: no number to count on, so no further attempt
        error = self.fields["error"]
        if attempt >= most:
            error = f"{error}; gave up after {attempt} attempts (max_attempts={most})"
            self.final, self.fields = statuses.FAILED, {**self.fields, "error": error}
            return f"failed: {error}"
        self.final = statuses.QUEUED
        self.fields = {"attempt": attempt + 1, "worker": None, "stop": None}
        return f"{error}: re-queued as attempt {attempt + 1} of {most}"

    def hand_back(self, event: str | None) -> None:
        """Back to the queue, as a new message: the next worker resumes from the checkpoint just
        saved."""
        from ..queue import message_for, priority_of

        rt = self.rt
        record = rt.store.get(self.job_id)
        if rt.store.transition(
            self.job_id,
            statuses.QUEUED,
            allowed=statuses.ACTIVE,
            expect_worker=rt.worker_id,
            message=message_for(rt.huey, self.job_id, priority_of(record)),
            queued_at=time.time(),
            **self.fields,
        ):
            rt.store.add_event(
                self.job_id,
                event or f"handed back to the queue by worker {rt.worker_id} (shutting down)",
            )

    def end(self, event: str | None) -> None:
        """The job's final status (if the job is still this worker's) and an event saying so."""
        rt, final, fields = self.rt, self.final, self.fields
        rt.store.transition(
            self.job_id,
            final,
            allowed=statuses.ACTIVE,
            expect_worker=rt.worker_id,
            finished_at=time.time(),
            **fields,
        )
        rt.store.add_event(
            self.job_id,
            event or f"{final}" + (f": {fields['error']}" if fields.get("error") else ""),
        )

    # -- helpers -----------------------------------------------------------------------------------
    def claim_record(self) -> JobRecord | None:
        """The job's record, now preparing on this worker; None when it is not ours to run
        (cancelled while queued, or already taken by another worker)."""
        rt, job_id = self.rt, self.job_id

        def take() -> bool:
            # After an outage our own claim may have landed with its reply lost: that is ours too.
            record = rt.store.get(job_id)
            if record.get("status") == statuses.PREPARING and record.get("worker") == rt.worker_id:
                return True
            return rt.store.transition(
                job_id,
                statuses.PREPARING,
                allowed=(statuses.QUEUED,),
                worker=rt.worker_id,
                started_at=time.time(),
                host=socket.gethostname(),
            )

        try:
            claimed = through_outages(take)
        except jobs.JobNotFound:
            log.warning("dropping task for unknown job %s", job_id)
            return None
        if not claimed:
            log.info("skipping job %s: no longer queued", job_id)
            announce(rt, job_id)  # cancelled while queued: its end is announced by who sees it
            return None
        rt.store.add_event(job_id, f"picked up by worker {rt.worker_id}")
        return rt.store.get(job_id)

    @property
    def report(self) -> Path:
        return self.run_dir / "report.ipynb"

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the block's wall time to this job's ``phase``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - started


# -- records the worker will not run ---------------------------------------------------------------
def verify_record(rt: Runtime, record: JobRecord) -> JobSpec:
    """The job as its client asked for it, or RecordRefused: the signature first (with a secret),
    then every field a worker acts on, then the base model against this worker's own rules."""
    verify_signature(record, rt.settings.queue_secret)
    spec = JobSpec.from_record(record)
    base_model = spec.config.base_model
    if spec.model is None and looks_like_path(base_model):  # else: staged into our own cache
        if not Path(base_model).expanduser().is_absolute():
            raise RecordRefused(
                f"base_model {base_model!r} is a relative path, which means nothing on a worker; "
                "submit an absolute folder path"
            )
        if rt.settings.redis_url and not rt.settings.allowed_model_dirs:
            raise RecordRefused(
                f"base_model {base_model!r} is a local folder, and this worker on a shared queue "
                "loads local models only from FTKIT_ALLOWED_MODEL_DIRS, which it does not set"
            )
        try:
            check_model_path(base_model, rt.settings.allowed_model_dirs)
        except ConfigError as exc:
            raise RecordRefused(f"{exc} on this worker") from exc
    return spec


def refuse(rt: Runtime, job_id: str, reason: str) -> None:
    """A claimed job whose record the worker will not run ends failed, saying why; nothing is
    staged."""
    log.warning("refusing job %s: %s", job_id, reason)
    if through_outages(
        rt.store.transition,
        job_id,
        statuses.FAILED,
        allowed=statuses.ACTIVE,
        expect_worker=rt.worker_id,
        finished_at=time.time(),
        error=f"refused by worker {rt.worker_id}: {reason}",
    ):
        rt.store.add_event(job_id, f"refused by worker {rt.worker_id}: {reason}")
        announce(rt, job_id)


def refuse_message(rt: Runtime, job_id: str | None, reason: str) -> None:
    """The queue's task for a message the worker could not read or verify. Its job id is
    unverified: the job is failed only when its own record fails verification too (a client
    without the secret, say); a legitimate job stays queued, untouched by whoever forged the
    message."""
    if job_id is None:
        log.warning("dropped a queue message that names no well-formed job: %s", reason)
        return
    try:
        record = rt.store.get(job_id)
    except jobs.JobNotFound:
        log.warning("dropped a queue message for unknown job %s: %s", job_id, reason)
        return
    if record.get("status") != statuses.QUEUED:
        log.warning("ignored an unverified queue message for job %s: %s", job_id, reason)
        return
    try:
        verify_record(rt, record)
    except RecordRefused as exc:
        if rt.store.transition(
            job_id,
            statuses.FAILED,
            allowed=(statuses.QUEUED,),
            finished_at=time.time(),
            error=f"refused by worker {rt.worker_id}: {exc}",
        ):
            rt.store.add_event(job_id, f"refused by worker {rt.worker_id}: {exc} ({reason})")
            announce(rt, job_id)
        return
    rt.store.add_event(
        job_id, f"ignored a queue message that failed verification ({reason}); the job is intact"
    )


def announce(rt: Runtime, job_id: str) -> None:
    """The job's end to its webhook, from a thread (``notify``): never a wait, never an error."""
    if rt.notices is not None:
        rt.notices.announce(job_id)
