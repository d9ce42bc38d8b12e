"""What a worker does with one job, and the worker process itself (a Huey consumer with a
heartbeat thread that also re-queues the jobs of workers that died)."""

from __future__ import annotations

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
from .config import Settings
from .jobstore import JobStore, open_store
from .storage import Storage

log = logging.getLogger("ftkit.worker")
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
    jobs_done: int = 0
    started_at: float = field(default_factory=time.time)


_runtime: Runtime | None = None


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
    record = claim(rt, job_id)
    if record is None:
        return
    run_dir = rt.scratch / "runs" / job_id
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "output").mkdir(parents=True)
    report = run_dir / "report.ipynb"
    final: str = jobs.FAILED
    fields: dict[str, Any] = {"error": "the worker stopped before the job ended"}
    stopped: str | None = None  # why training stopped early, when it did
    rt.current_job = job_id
    try:
        data_path = stage_dataset(rt, job_id, record["dataset"])
        resume = restore_checkpoint(rt, job_id, run_dir / "output" / "checkpoints")
        rt.kernel = rt.kernels.take()
        with Watchdog(rt, job_id, record["config"].get("timeout_minutes")):
            notebook_error = run_notebook(record, data_path, run_dir, report, resume, rt.kernel)
        if notebook_error:
            fields, stopped = notebook_error, rt.store.get_field(job_id, "stop")
        else:
            outputs = json.loads((run_dir / "output" / "result.json").read_text())
            stopped = outputs["result"].get("stopped")
            if stopped != jobs.STOP_HANDOFF:
                upload_outputs(rt, job_id, run_dir)
            final, fields = (
                jobs.COMPLETED,
                {"result": job_result(rt, job_id, outputs, record), "error": None},
            )
    except Exception as exc:  # anything else still ends the job, with what went wrong
        log.exception("job %s failed", job_id)
        fields = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        final, fields = apply_stop_request(stopped, record, final, fields)
        fields["report"] = save_report(rt, job_id, report, record, final, fields)
        finish(rt, job_id, final, fields)
        if rt.kernel is not None:  # one kernel, one job: nothing of this job leaks into the next
            from .kernels import shutdown

            shutdown(rt.kernel)
            rt.kernel = None
        rt.current_job = None
        rt.jobs_done += 1
        shutil.rmtree(run_dir / "output" / "checkpoints", ignore_errors=True)


def apply_stop_request(
    stopped: str | None, record: dict[str, Any], final: str, fields: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A job that stopped early ends by why it was asked to: cancelled, timed out, or handed back."""
    if stopped == jobs.STOP_CANCEL:
        return jobs.CANCELLED, {**fields, "error": "cancelled while running"}
    if stopped == jobs.STOP_TIMEOUT:
        return jobs.FAILED, {
            **fields,
            "error": f"timed out after {record['config'].get('timeout_minutes'):g} minutes",
        }
    if stopped == jobs.STOP_HANDOFF:
        return jobs.QUEUED, {"worker": None, "stop": None, "report": fields.get("report")}
    return final, fields


def through_outages(fn, *args: Any, patience: float = 600.0, **kwargs: Any) -> Any:
    """Call a job-store function, waiting out a broker outage (a Redis restart) with back-off: a
    job's claim and its final status must not be lost to a few seconds without Redis."""
    from .errors import BrokerUnavailable

    deadline, delay = time.monotonic() + patience, 0.2
    while True:
        try:
            return fn(*args, **kwargs)
        except BrokerUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("job store unreachable, retrying in %.1f s: %s", delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def finish(rt: Runtime, job_id: str, final: str, fields: dict[str, Any]) -> None:
    through_outages(_finish, rt, job_id, final, fields)


def _finish(rt: Runtime, job_id: str, final: str, fields: dict[str, Any]) -> None:
    if final == jobs.QUEUED:  # handed back: the next worker resumes from the checkpoint just saved
        from .queue import enqueue

        if rt.store.transition(
            job_id, jobs.QUEUED, allowed=jobs.ACTIVE, expect_worker=rt.worker_id, **fields
        ):
            rt.store.add_event(
                job_id, f"handed back to the queue by worker {rt.worker_id} (shutting down)"
            )
            enqueue(rt.huey, job_id)
        return
    rt.store.transition(
        job_id,
        final,
        allowed=jobs.ACTIVE,
        expect_worker=rt.worker_id,
        finished_at=time.time(),
        **fields,
    )
    rt.store.add_event(job_id, f"{final}" + (f": {fields['error']}" if fields.get("error") else ""))


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
                    self.rt.store.update(self.job_id, stop=jobs.STOP_TIMEOUT)
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


def restore_checkpoint(rt: Runtime, job_id: str, local: Path) -> str:
    """Download the newest complete checkpoint an earlier attempt saved; its local path, or ""."""
    parts = Storage.run_parts(job_id, "checkpoints")
    complete = [
        name for name in rt.storage.listdir(*parts) if rt.storage.exists(*parts, name, "complete")
    ]
    if not complete:
        return ""
    name = max(complete, key=lambda n: int(n.rsplit("-", 1)[-1]))
    rt.storage.get_dir((*parts, name), local / name)
    step = int(name.rsplit("-", 1)[-1])
    rt.store.trim_metrics(job_id, after_step=step)
    rt.store.add_event(job_id, f"resuming from {name} (steps 1-{step} are not trained again)")
    return str(local / name)


def claim(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    """queued -> preparing for this worker, or None when the job is not ours to run (cancelled
    while queued, or already taken by another worker)."""

    def take() -> bool:
        # After an outage our own claim may have landed with its reply lost: that is ours too.
        record = rt.store.get(job_id)
        if record["status"] == jobs.PREPARING and record.get("worker") == rt.worker_id:
            return True
        return rt.store.transition(
            job_id,
            jobs.PREPARING,
            allowed=(jobs.QUEUED,),
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


def stage_dataset(rt: Runtime, job_id: str, dataset: dict[str, Any]) -> Path:
    """A local copy of the data set, cached by content hash: ten jobs on one file fetch it once."""
    local = rt.scratch / "datasets" / dataset["sha256"] / dataset["name"]
    if local.is_file():
        rt.store.add_event(
            job_id, f"data set {dataset['name']} already on this machine (cached by sha256)"
        )
        return local
    rt.storage.get_file(Storage.dataset_parts(dataset["sha256"], dataset["name"]), local)
    rt.store.add_event(job_id, f"data set {dataset['name']} staged from storage")
    return local


def run_notebook(
    record: dict[str, Any],
    data_path: Path,
    run_dir: Path,
    report: Path,
    resume_from_checkpoint: str = "",
    kernel: Any = None,
) -> dict[str, Any] | None:
    """Execute the template with the job's values as typed parameters; the error fields on failure."""
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    parameters = {
        "job_id": record["job_id"],
        "dataset_path": str(data_path),
        "dataset_format": record["dataset"]["format"],
        "output_dir": str(run_dir / "output"),
        "resume_from_checkpoint": resume_from_checkpoint,
        "dataset_profile": record.get("dataset_profile") or {},
        **record["config"],
    }
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
        )
    except DeadKernelError as exc:
        return {"error": f"the notebook kernel died (killed, or out of memory): {exc}"}
    except PapermillExecutionError as exc:
        first_line = str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ""
        return {
            "error": f"{exc.ename}: {first_line} (notebook cell {exc.exec_count})",
            "error_cell": exc.exec_count,
            "error_traceback": "\n".join(exc.traceback[-20:]),
        }
    return None


def upload_outputs(rt: Runtime, job_id: str, run_dir: Path) -> None:
    rt.storage.put_dir(run_dir / "output" / "adapter", *Storage.run_parts(job_id, "adapter"))
    rt.storage.put_file(
        run_dir / "output" / "result.json", *Storage.run_parts(job_id, "result.json")
    )


def save_report(
    rt: Runtime,
    job_id: str,
    report: Path,
    record: dict[str, Any],
    final: str,
    fields: dict[str, Any],
) -> str | None:
    """Write the run summary into the report's header cell, render report.html, and upload both,
    also after a failure; the report's URL, or None when there is none."""
    if not report.is_file():
        return None
    try:
        from .report import finalize_report

        html = finalize_report(
            report, {**record, **fields, "status": final, "finished_at": time.time()}
        )
        rt.storage.put_file(report, *Storage.run_parts(job_id, "report.ipynb"))
        rt.storage.write_text(html, *Storage.run_parts(job_id, "report.html"))
    except Exception:
        log.exception("could not save the report of job %s", job_id)
        return None
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
    }


# -- the worker process ---------------------------------------------------------------------------
def gpu_info() -> dict[str, Any]:
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
    from .queue import requeue_orphans

    static = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": rt.started_at,
        **gpu_info(),
    }
    while not stop.is_set():
        try:
            rt.store.heartbeat(
                rt.worker_id,
                {
                    **static,
                    "current_job": rt.current_job,
                    "jobs_done": rt.jobs_done,
                    "warm_kernel": bool(rt.kernels and rt.kernels.ready),
                },
                ttl=rt.settings.worker_grace_seconds,
            )
            requeue_orphans(rt.store, huey)
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
                self.rt.store.update(job, stop=jobs.STOP_HANDOFF)
            except Exception as exc:
                log.warning("could not ask job %s to hand back: %s", job, exc)
        log.info(
            "shutting down: %s",
            "finishing the running job" if self.drain else "handing back the running job",
        )


def run_worker(
    settings: Settings | None = None, *, worker_id: str | None = None, drain: bool = False
) -> None:
    """Run a worker until it is stopped (SIGINT or SIGTERM: hand back the running job, or finish it
    with ``drain``; a second signal: stop now)."""
    global _runtime
    from .queue import make_huey

    settings = settings or Settings.from_env()
    os.environ.update(settings.to_env())  # the notebook kernels read the same settings
    import nbconvert  # noqa: F401  -- once here, not per job
    import papermill  # noqa: F401

    from .kernels import KernelPool

    scratch = Path(settings.scratch_dir).expanduser().resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    huey = make_huey(settings)
    _runtime = Runtime(
        settings=settings,
        store=open_store(settings),
        storage=Storage(settings.storage, endpoint_url=settings.s3_endpoint_url),
        worker_id=worker_id or jobs.new_worker_id(),
        scratch=scratch,
        huey=huey,
        kernels=KernelPool().start(),
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
        max_delay=0.25,
        periodic=False,
        check_worker_health=True,
    )
    log.info(
        "worker %s on %s queue, storage %s", _runtime.worker_id, settings.broker, settings.storage
    )
    try:
        consumer.run()
    finally:
        _runtime.kernels.close()
        stop.set()
        beat.join(timeout=10)
