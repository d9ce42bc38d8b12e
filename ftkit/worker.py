"""What a worker does with one job, and the worker process itself (a Huey consumer with a
heartbeat thread that also re-queues the jobs of workers that died)."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huey.consumer import Consumer

from . import jobstore as jobs
from . import stack
from .config import Settings
from .core import statuses
from .core.records import JobRecord, WorkerInfo
from .core.retry import through_outages
from .data import checked_columns
from .errors import BrokerUnavailable, ConfigError, StorageUnavailable
from .jobstore import JobStore, open_store
from .lineage import (
    ADAPTER_FILES,
    CHECKPOINT_FILES,
    checkpoint_step,
    has_adapter,
    newest_checkpoint,
)
from .output_log import OutputLog
from .spec import (
    DatasetRef,
    JobSpec,
    RecordRefused,
    check_model_path,
    is_job_id,
    looks_like_path,
    secret_fingerprint,
    verify_signature,
)
from .storage import Storage

log = logging.getLogger("ftkit.worker")
RETRY = "retry"  # not a status: the kernel died mid-run, so the job wants a new attempt
TEMPLATE = Path(__file__).parent / "templates" / "train_template.ipynb"


@dataclass
class Runtime:
    """The worker's connections and identity, shared by the task thread and the heartbeat."""

    settings: Settings
    store: JobStore
    storage: Storage
    worker_id: str
    scratch: Path
    huey: Any = None
    kernels: Any = None  # KernelPool
    kernel: Any = None  # the running job's kernel manager
    current_job: str | None = None
    claiming: str | None = None  # the job being claimed, until it is current_job
    jobs_done: int = 0
    started_at: float = field(default_factory=time.time)


_runtime: Runtime | None = None
_phases: dict[str, float] = {}  # seconds per phase of the running job (one job at a time)


def phase(name: str):
    """Adds the decorated step's wall time to the running job's phases, logged when it ends."""

    def wrap(fn):
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - started

        return timed

    return wrap


def timed_job(job_id: str) -> None:
    """execute_job, then one log line of where its time went (the bench's breakdown reads it)."""
    _phases.clear()
    started = time.perf_counter()
    try:
        execute_job(job_id)
    finally:
        took = time.perf_counter() - started
        log.info("job %s phases %s", job_id, json.dumps({"total": took, **_phases}))


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError(
            "execute_job runs inside an ftkit worker (ftkit worker), not in a client"
        )
    return _runtime


# -- one job --------------------------------------------------------------------------------------
def execute_job(job_id: str) -> None:
    """Claim the job, stage its data, run the template notebook (resuming from a checkpoint when an
    earlier attempt left one), upload report and adapter, and always end the job: completed, failed,
    cancelled, or handed back to the queue (set in ``finally``)."""
    rt = runtime()
    if not is_job_id(job_id):  # never let it near a path
        log.warning("dropping a task whose job id is malformed: %r", str(job_id)[:80])
        return
    # Heartbeats name the job from before the claim on: one that does not, sent after the claim,
    # tells the reapers this worker is not running it (JobStore.orphans).
    rt.claiming = job_id
    try:
        record = claim(rt, job_id)
        if record is None:
            return
        try:
            spec = verify_record(rt, record)
        except RecordRefused as exc:
            refuse(rt, job_id, str(exc))
            return
        run_dir = inside(rt.scratch, "runs", spec.job_id)
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "output").mkdir(parents=True)
        rt.current_job = job_id
    finally:
        rt.claiming = None
    report = run_dir / "report.ipynb"
    final: str = statuses.FAILED
    fields: dict[str, Any] = {"error": "the worker stopped before the job ended"}
    stopped: str | None = None  # why training stopped early, when it did
    try:
        data_path = patiently(stage_dataset, rt, job_id, spec.dataset)
        if spec.model:  # a local model folder the client uploaded: use the staged copy
            spec = spec.with_base_model(patiently(stage_model, rt, job_id, spec.model))
        checkpoints = run_dir / "output" / "checkpoints"
        resume = patiently(restore_checkpoint, rt, job_id, checkpoints)
        adapter = ""
        if not resume and spec.resume_from:  # its own checkpoint first: a later attempt of it
            resume, adapter = patiently(continue_from, rt, job_id, run_dir, spec.resume_from)
            record["started_from"] = Path(resume).name if resume else "adapter"
            through_outages(rt.store.update, job_id, started_from=record["started_from"])
        rt.kernel = phase("kernel")(rt.kernels.take)(backend=spec.config.backend)
        output = OutputLog(rt.store, job_id)
        try:
            with Watchdog(rt, job_id, spec.config.timeout_minutes):
                notebook_error = run_notebook(
                    notebook_parameters(spec, record, data_path, run_dir, resume, adapter),
                    run_dir,
                    report,
                    rt.kernel,
                    output,
                )
        finally:
            output.close()
        if notebook_error:
            fields, stopped = notebook_error, through_outages(rt.store.get_field, job_id, "stop")
            if fields.pop("kernel_died", False) and not stopped:
                final = RETRY  # killed from outside (out of memory, say), not by our watchdog
        else:
            outputs = json.loads((run_dir / "output" / "result.json").read_text())
            stopped = outputs["result"].get("stopped")
            if stopped not in (statuses.STOP_HANDOFF, statuses.STOPPED_SUPERSEDED):
                patiently(upload_outputs, rt, job_id, run_dir)
            final, fields = (
                statuses.COMPLETED,
                {"result": job_result(rt, job_id, outputs, record), "error": None},
            )
    except Exception as exc:  # anything else still ends the job, with what went wrong
        log.exception("job %s failed", job_id)
        fields = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if stopped == statuses.STOPPED_SUPERSEDED:  # the job is another run's: its report, its end
            note = f"worker {rt.worker_id} stopped its run of attempt {record.get('attempt')}"
            through_outages(rt.store.add_event, job_id, f"{note}: the job is another run's now")
        else:
            final, fields = apply_stop_request(stopped, spec, final, fields)
            event = None
            if final == RETRY:
                final, fields, event = through_outages(retry_or_give_up, rt, job_id, fields)
            fields["report"] = save_report(rt, job_id, report, record, final, fields)
            finish(rt, job_id, final, fields, event)
        if rt.kernel is not None:  # one kernel, one job: nothing of this job leaks into the next
            from .kernels import shutdown

            shutdown(rt.kernel)
            rt.kernel = None
        rt.current_job = None
        rt.jobs_done += 1
        shutil.rmtree(run_dir / "output" / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "parent", ignore_errors=True)
        if rt.kernels is not None:
            rt.kernels.idle()  # the next job's kernel warms now, with no job beside it


def patiently(fn, *args: Any) -> Any:
    """A step of a job that waits out a storage outage and a broker outage both (staging and
    upload write events as they go): each step is safe to repeat, and a Redis restart is never the
    job's fault."""
    return through_outages(fn, *args, outage=(StorageUnavailable, BrokerUnavailable))


def apply_stop_request(
    stopped: str | None, spec: JobSpec, final: str, fields: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A job that stopped early ends by why it was asked to: cancelled, timed out, or handed back."""
    if stopped == statuses.STOP_CANCEL:
        return statuses.CANCELLED, {**fields, "error": "cancelled while running"}
    if stopped == statuses.STOP_TIMEOUT:
        return statuses.FAILED, {
            **fields,
            "error": f"timed out after {spec.config.timeout_minutes:g} minutes",
        }
    if stopped == statuses.STOP_HANDOFF:
        return statuses.QUEUED, {"worker": None, "stop": None, "report": fields.get("report")}
    return final, fields


def retry_or_give_up(
    rt: Runtime, job_id: str, fields: dict[str, Any]
) -> tuple[str, dict[str, Any], str]:
    """A job whose kernel died goes back to the queue as its next attempt (resuming from its last
    checkpoint), as when its worker dies; after the job's own ``max_attempts`` it fails, saying so.
    The status, fields and event to finish with."""
    from .queue import max_attempts_of

    record = rt.store.get(job_id)
    attempt, most = record.get("attempt"), max_attempts_of(record)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        attempt = most  # a record edited by hand: no number to count on, so no further attempt
    if attempt >= most:
        error = f"{fields['error']}; gave up after {attempt} attempts (max_attempts={most})"
        return statuses.FAILED, {**fields, "error": error}, f"failed: {error}"
    return (
        statuses.QUEUED,
        {"attempt": attempt + 1, "worker": None, "stop": None},
        f"{fields['error']}: re-queued as attempt {attempt + 1} of {most}",
    )


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
    """A claimed job whose record the worker will not run ends failed, saying why; nothing staged."""
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


def refuse_message(job_id: str | None, reason: str) -> None:
    """A queue message the worker could not read or verify. Its job id is unverified: the job is
    failed only when its own record fails verification too (a client without the secret, say);
    a legitimate job stays queued, untouched by whoever forged the message."""
    rt = runtime()
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
        return
    rt.store.add_event(
        job_id, f"ignored a queue message that failed verification ({reason}); the job is intact"
    )


def inside(root: Path, *parts: str) -> Path:
    """``root/parts``, refusing anything that would resolve outside ``root``."""
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RecordRefused(f"refusing a path outside {root}: {'/'.join(parts)!r}")
    return path


@phase("finish")
def finish(
    rt: Runtime, job_id: str, final: str, fields: dict[str, Any], event: str | None = None
) -> None:
    through_outages(_finish, rt, job_id, final, fields, event)


def _finish(
    rt: Runtime, job_id: str, final: str, fields: dict[str, Any], event: str | None = None
) -> None:
    if (
        final == statuses.QUEUED
    ):  # handed back: the next worker resumes from the checkpoint just saved
        from .queue import message_for, priority_of

        record = rt.store.get(job_id)
        if rt.store.transition(
            job_id,
            statuses.QUEUED,
            allowed=statuses.ACTIVE,
            expect_worker=rt.worker_id,
            message=message_for(rt.huey, job_id, priority_of(record)),
            queued_at=time.time(),
            **fields,
        ):
            rt.store.add_event(
                job_id,
                event or f"handed back to the queue by worker {rt.worker_id} (shutting down)",
            )
        return
    rt.store.transition(
        job_id,
        final,
        allowed=statuses.ACTIVE,
        expect_worker=rt.worker_id,
        finished_at=time.time(),
        **fields,
    )
    rt.store.add_event(
        job_id, event or f"{final}" + (f": {fields['error']}" if fields.get("error") else "")
    )


class Watchdog:
    """While a notebook runs: asks the job to stop when it passes its timeout, and kills the kernel
    when a stop request (cancel, timeout, hand-back) is not honoured within the grace period."""

    def __init__(self, rt: Runtime, job_id: str, timeout_minutes: float | None):
        self.rt, self.job_id, self.timeout_minutes = rt, job_id, timeout_minutes
        self.grace = float(os.environ.get("FTKIT_KILL_GRACE_SECONDS", "30"))
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="ftkit-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _watch(self) -> None:
        started, asked_at = time.monotonic(), None
        while not self.done.wait(0.5):
            try:
                now = time.monotonic()
                if (
                    self.timeout_minutes
                    and now - started > self.timeout_minutes * 60
                    and asked_at is None
                ):
                    self.rt.store.update(self.job_id, stop=statuses.STOP_TIMEOUT)
                    self.rt.store.add_event(
                        self.job_id, f"timed out after {self.timeout_minutes:g} minutes: stopping"
                    )
                if asked_at is None and self.rt.store.get_field(self.job_id, "stop"):
                    asked_at = now
                if asked_at is not None and now - asked_at > self.grace:
                    from .kernels import kill_kernel

                    killed = kill_kernel(self.rt.kernel)
                    self.rt.store.add_event(
                        self.job_id,
                        f"the kernel did not stop within {self.grace:g} s: "
                        f"{'killed' if killed else 'could not kill'} it",
                    )
                    return
            except Exception as exc:  # a broker blip: look again next tick
                log.warning("watchdog: %s", exc)


@phase("staging")
def restore_checkpoint(rt: Runtime, job_id: str, local: Path) -> str:
    """Download the newest complete checkpoint an earlier attempt saved; its local path, or ""."""
    name = newest_checkpoint(rt.storage, job_id)
    if name is None:
        return ""
    rt.storage.get_dir(
        Storage.run_parts(job_id, "checkpoints", name), local / name, only=CHECKPOINT_FILES
    )
    step = checkpoint_step(name)
    rt.store.trim_metrics(job_id, after_step=step or 0)
    rt.store.add_event(job_id, f"resuming from {name} (steps 1-{step} are not trained again)")
    return str(local / name)


@phase("staging")
def continue_from(rt: Runtime, job_id: str, run_dir: Path, parent: str) -> tuple[str, str]:
    """A job that continues (or retries) ``parent`` starts from the parent's newest complete
    checkpoint (adapter, optimizer state and step; its history starts with the parent's), else
    from the parent's adapter (its weights only: a fresh optimizer, steps from 1). The local
    checkpoint and adapter folders, one of them ""."""
    name = newest_checkpoint(rt.storage, parent, to_continue=True)
    if name is not None:
        local = inside(run_dir, "output", "checkpoints", name)
        rt.storage.get_dir(
            Storage.run_parts(parent, "checkpoints", name), local, only=CHECKPOINT_FILES
        )
        step = checkpoint_step(name) or 0
        if not rt.store.metrics(job_id):
            history = [m for m in rt.store.metrics(parent) if m.get("step", 0) <= step]
            rt.store.add_metrics(job_id, history)
        rt.store.add_event(
            job_id,
            f"continuing job {parent} from its {name} (steps 1-{step} are not trained again)",
        )
        return str(local), ""
    if not has_adapter(rt.storage, parent):
        raise ConfigError(
            f"job {parent}, which this job continues, kept neither a complete checkpoint nor an "
            "adapter"
        )
    local = inside(run_dir, "parent", parent)  # parent: a job id, checked by JobSpec.from_record
    for name in ADAPTER_FILES:
        rt.storage.get_file(Storage.run_parts(parent, "adapter", name), local / name)
    rt.store.add_event(
        job_id,
        f"continuing from job {parent}'s adapter (no checkpoint kept: fresh optimizer, steps "
        "from 1)",
    )
    return "", str(local)


@phase("claim")
def claim(rt: Runtime, job_id: str) -> JobRecord | None:
    """queued -> preparing for this worker, or None when the job is not ours to run (cancelled
    while queued, or already taken by another worker)."""

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
        return None
    rt.store.add_event(job_id, f"picked up by worker {rt.worker_id}")
    return rt.store.get(job_id)


@phase("staging")
def stage_dataset(rt: Runtime, job_id: str, dataset: DatasetRef) -> Path:
    """A local copy of the data set, cached by content hash: ten jobs on one file fetch it once."""
    local = inside(rt.scratch, "datasets", dataset.sha256, dataset.name)
    if local.is_file():
        rt.store.add_event(
            job_id, f"data set {dataset.name} already on this machine (cached by sha256)"
        )
        return local
    rt.storage.get_file(Storage.dataset_parts(dataset.sha256, dataset.name), local)
    rt.store.add_event(job_id, f"data set {dataset.name} staged from storage")
    return local


@phase("staging")
def stage_model(rt: Runtime, job_id: str, ref: Any) -> Path:
    """A local copy of an uploaded base-model folder, cached by its content digest: jobs on one
    model fetch it once per machine. The reference comes from the job record, so it is checked
    (hex digest, plain name, a path inside the cache) and the fetched files must hash to it
    before they are used or cached."""
    import uuid

    from .errors import StorageError
    from .storage import check_model_ref, folder_digest, model_files

    ref = check_model_ref(ref)
    sha256, name = ref["sha256"], ref["name"]
    cache = (rt.scratch / "models").resolve()
    local = (cache / sha256 / name).resolve()
    if not local.is_relative_to(cache):
        raise StorageError(f"refusing model {name}: its cache path leaves {cache}")
    if local.is_dir():
        rt.store.add_event(job_id, f"model {name} already on this machine (cached by sha256)")
        return local
    partial = cache / sha256 / f".partial-{uuid.uuid4().hex[:8]}"
    try:
        rt.storage.get_model(sha256, name, partial)
        if folder_digest(model_files(partial)) != sha256:
            raise StorageError(
                f"model {name} in storage does not match its digest {sha256[:12]}: refusing it"
            )
        try:
            os.rename(partial, local)
        except OSError:
            if not local.is_dir():  # else another worker on this machine staged it first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    rt.store.add_event(job_id, f"model {name} staged from storage")
    return local


def notebook_parameters(
    spec: JobSpec,
    record: dict[str, Any],
    data_path: Path,
    run_dir: Path,
    resume_from_checkpoint: str = "",
    resume_from_adapter: str = "",
) -> dict[str, Any]:
    """The notebook's parameters: fixed names chosen here and TrainConfig's own field names, never
    a name read from the record (papermill writes names into the parameters cell as code)."""
    return {
        "job_id": spec.job_id,
        "dataset_path": str(data_path),
        "dataset_format": spec.dataset.format,
        "dataset_columns": checked_columns(spec.dataset.columns),
        "output_dir": str(run_dir / "output"),
        "resume_from_checkpoint": resume_from_checkpoint,
        "resume_from_adapter": resume_from_adapter,
        "dataset_profile": plain_json(record.get("dataset_profile")),
        **spec.config.to_dict(),
    }


def plain_json(value: Any) -> dict[str, Any]:
    """An informational record field as plain JSON (no NaN, bounded), or {} when it is not one."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return {}
    return value if isinstance(value, dict) and len(text) <= 100_000 else {}


@phase("notebook")
def run_notebook(
    parameters: dict[str, Any],
    run_dir: Path,
    report: Path,
    kernel: Any = None,
    output: Any = None,
) -> dict[str, Any] | None:
    """Execute the template with typed parameters; the error fields on failure. ``output`` (a
    file-like OutputLog) receives the cells' printed stdout and stderr as they run."""
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            str(TEMPLATE),
            str(report),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(run_dir),
            progress_bar=False,
            log_output=False,
            km=kernel,
            stdout_file=output,
            stderr_file=output,
        )
    except DeadKernelError as exc:
        return {
            "error": f"the notebook kernel died (killed, or out of memory): {exc}",
            "kernel_died": True,
        }
    except PapermillExecutionError as exc:
        first_line = str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ""
        return {
            "error": f"{exc.ename}: {first_line} (notebook cell {exc.exec_count})",
            "error_cell": exc.exec_count,
            "error_traceback": "\n".join(exc.traceback[-20:]),
        }
    return None


@phase("upload")
def upload_outputs(rt: Runtime, job_id: str, run_dir: Path) -> None:
    """The adapter and result.json; each file is atomic, so uploading again after an outage is safe."""
    rt.storage.put_dir(run_dir / "output" / "adapter", *Storage.run_parts(job_id, "adapter"))
    rt.storage.put_file(
        run_dir / "output" / "result.json", *Storage.run_parts(job_id, "result.json")
    )


@phase("report")
def save_report(
    rt: Runtime,
    job_id: str,
    report: Path,
    record: dict[str, Any],
    final: str,
    fields: dict[str, Any],
) -> str | None:
    """Write the run summary into the report's header cell and upload the notebook, then render
    report.html and upload it, also after a failure; the report's URL, or None when there is none.
    A report that could not be rendered as HTML adds a warning to ``fields``: the job says so."""
    if not report.is_file():
        return None
    from .report import finalize_report, render_html

    try:
        nb = finalize_report(
            report, {**record, **fields, "status": final, "finished_at": time.time()}
        )
        through_outages(
            rt.storage.put_file,
            report,
            *Storage.run_parts(job_id, "report.ipynb"),
            outage=StorageUnavailable,
        )
    except Exception:
        log.exception("could not save the report of job %s", job_id)
        return None
    try:
        html = render_html(nb)
        through_outages(
            rt.storage.write_text,
            html,
            *Storage.run_parts(job_id, "report.html"),
            outage=StorageUnavailable,
        )
    except Exception as exc:
        log.exception("could not render the HTML report of job %s", job_id)
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        fields.setdefault("warnings", []).append(
            f"the HTML report was not written ({why}); the notebook report.ipynb was"
        )
    return rt.storage.full_url(*Storage.run_parts(job_id, "report.ipynb"))


def job_result(
    rt: Runtime, job_id: str, outputs: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any]:
    url = rt.storage.full_url
    return {
        "output_dir": url(*Storage.run_parts(job_id)),
        "adapter_dir": url(*Storage.run_parts(job_id, "adapter")),
        "report": url(*Storage.run_parts(job_id, "report.ipynb")),
        "training_duration_seconds": outputs["result"]["training_duration_seconds"],
        "dataset_size": record["dataset"].get("rows"),
        "global_step": outputs["result"]["global_step"],
        "first_loss": outputs["result"].get("first_loss"),
        "final_loss": outputs["result"].get("final_loss"),
        "trainable_parameters": outputs["model"].get("trainable_parameters"),
        "backend": outputs["model"].get("backend"),
        "samples": outputs.get("samples") or [],  # base and fine-tuned answers, as in the report
    }


# -- the worker process ---------------------------------------------------------------------------
def gpu_info() -> WorkerInfo:
    """The GPU this worker trains on, read without importing torch (nvidia-smi), or CPU."""
    smi = shutil.which("nvidia-smi")
    if smi:
        import subprocess

        try:
            out = (
                subprocess.run(
                    [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                .stdout.strip()
                .splitlines()
            )
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            index = int(visible.split(",")[0]) if visible and visible.split(",")[0].isdigit() else 0
            if out:
                name, memory = [s.strip() for s in out[min(index, len(out) - 1)].split(",")]
                return {"gpu": name, "gpu_memory": memory}
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return {"gpu": None, "gpu_memory": None}


def heartbeat_loop(rt: Runtime, huey, stop: threading.Event) -> None:
    """Say we are alive every ``heartbeat_seconds``; re-queue the jobs of workers that are not."""
    from .kernels import kernel_pid
    from .queue import requeue_lost, requeue_orphans

    offset = 0  # the queued-job reaper looks at one page of the backlog per beat, in turn
    missing: dict[str, tuple[Any, float]] = {}  # queued jobs seen without a message, and since when

    static: WorkerInfo = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": rt.started_at,
        "queue": rt.settings.queue_location,
        # Clients compare this with their own secret's, so a mismatch is refused at submit.
        "secret_fingerprint": secret_fingerprint(rt.settings.queue_secret),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # set by --gpus
        **gpu_info(),
    }
    while not stop.is_set():
        try:
            noted_at = time.time()  # before the job is read: see JobStore.orphans
            rt.store.heartbeat(
                rt.worker_id,
                {
                    **static,
                    "noted_at": noted_at,
                    "current_job": rt.current_job or rt.claiming,
                    "kernel_pid": kernel_pid(rt.kernel) if rt.kernel is not None else None,
                    "jobs_done": rt.jobs_done,
                    "warm_kernel": bool(rt.kernels and rt.kernels.ready),
                },
                ttl=rt.settings.worker_grace_seconds,
            )
            requeue_orphans(rt.store, huey)
            requeue_lost(
                rt.store,
                huey,
                grace=rt.settings.worker_grace_seconds,
                offset=offset,
                missing=missing,
            )
            offset = offset + 200 if rt.store.count(statuses.QUEUED) > offset + 200 else 0
            if rt.kernels is not None and rt.current_job is None:  # never beside a job
                rt.kernels.keep_warm()
        except Exception as exc:  # a broker outage must not kill the worker: retry next beat
            log.warning("heartbeat failed: %s", exc)
        stop.wait(rt.settings.heartbeat_seconds)
    try:
        rt.store.forget_worker(rt.worker_id)
    except Exception as exc:
        log.warning("could not deregister worker: %s", exc)


class HandBackConsumer(Consumer):
    """Huey's consumer, with ftkit's shutdown: the first SIGINT or SIGTERM stops taking jobs and asks
    the running job to checkpoint and go back to the queue (or, with ``drain``, lets it finish);
    a second signal stops at once."""

    def __init__(self, huey, rt: Runtime, *, drain: bool, **options: Any):
        super().__init__(huey, **options)
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


def run_worker(
    settings: Settings | None = None, *, worker_id: str | None = None, drain: bool = False
) -> None:
    """Run a worker until it is stopped (SIGINT or SIGTERM: hand back the running job, or finish it
    with ``drain``; a second signal: stop now)."""
    global _runtime
    from .queue import make_huey

    settings = settings or Settings.from_env()
    os.environ.update(settings.to_env())  # the notebook kernels read the same settings
    check_stack()  # nbconvert and papermill, once here, not per job

    from .kernels import KernelPool
    from .report import warm_up

    kernels = KernelPool().start()
    # What a job imports, imported for real before the first job (FTKIT_CHECK_IMPORTS=0: not,
    # for the tests' many short-lived workers).
    if os.environ.get("FTKIT_CHECK_IMPORTS", "1") != "0":
        problems = kernels.import_problems()
        if problems:
            kernels.close()
            raise StackProblem(stack.report(problems))
    if kernels.warm:  # FTKIT_WARM_KERNEL=0 (the tests' workers): no head start of either kind
        threading.Thread(target=warm_up, name="ftkit-warm-report", daemon=True).start()

    scratch = Path(settings.scratch_dir).expanduser().resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    huey = make_huey(settings, run_job=timed_job, refuse=refuse_message)
    _runtime = Runtime(
        settings=settings,
        store=open_store(settings),
        storage=Storage(settings.storage, endpoint_url=settings.s3_endpoint_url),
        worker_id=worker_id or jobs.new_worker_id(),
        scratch=scratch,
        huey=huey,
        kernels=kernels,
    )
    stop = threading.Event()
    beat = threading.Thread(
        target=heartbeat_loop, args=(_runtime, huey, stop), name="ftkit-heartbeat", daemon=True
    )
    beat.start()
    consumer = HandBackConsumer(
        huey,
        _runtime,
        drain=drain,
        workers=1,
        worker_type="thread",
        initial_delay=0.05,
        backoff=1.1,
        max_delay=0.1,  # an idle worker looks at the queue ten times a second: a cheap read
        periodic=False,
        check_worker_health=True,
    )
    log.info(
        "worker %s on %s queue %s, storage %s",
        _runtime.worker_id,
        settings.broker,
        settings.queue_location,
        settings.storage,
    )
    for warning in exposure_warnings(settings):
        log.warning(warning)
    try:
        consumer.run()
    finally:
        _runtime.kernels.close()
        stop.set()
        beat.join(timeout=10)
