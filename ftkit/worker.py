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
    current_job: str | None = None
    jobs_done: int = 0
    started_at: float = field(default_factory=time.time)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("execute_job runs inside an ftkit worker (ftkit worker), not in a client")
    return _runtime


# -- one job --------------------------------------------------------------------------------------
def execute_job(job_id: str) -> None:
    """Claim the job, stage its data, run the template notebook, upload report and adapter, and
    always end the job completed, failed or cancelled (set in ``finally``)."""
    rt = runtime()
    record = claim(rt, job_id)
    if record is None:
        return
    run_dir = rt.scratch / "runs" / job_id
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    report = run_dir / "report.ipynb"
    final, fields = jobs.FAILED, {"error": "the worker stopped before the job ended"}
    rt.current_job = job_id
    try:
        data_path = stage_dataset(rt, job_id, record["dataset"])
        notebook_error = run_notebook(record, data_path, run_dir, report)
        if notebook_error:
            fields = notebook_error
        else:
            outputs = json.loads((run_dir / "output" / "result.json").read_text())
            upload_outputs(rt, job_id, run_dir)
            cancelled = outputs["result"].get("cancelled")
            final = jobs.CANCELLED if cancelled else jobs.COMPLETED
            fields = {"result": job_result(rt, job_id, outputs, record), "error": "cancelled while training" if cancelled else None}
    except Exception as exc:  # anything else still ends the job, with what went wrong
        log.exception("job %s failed", job_id)
        fields = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        fields["report"] = save_report(rt, job_id, report)
        if final == jobs.FAILED and rt.store.get_field(job_id, "cancel_requested"):
            final = jobs.CANCELLED
        rt.store.transition(job_id, final, allowed=jobs.ACTIVE, expect_worker=rt.worker_id,
                            finished_at=time.time(), **fields)
        rt.store.add_event(job_id, f"{final}" + (f": {fields['error']}" if fields.get("error") else ""))
        rt.current_job = None
        rt.jobs_done += 1
        shutil.rmtree(run_dir / "output" / "checkpoints", ignore_errors=True)


def claim(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    """queued -> preparing for this worker, or None when the job is not ours to run (cancelled
    while queued, or already taken by another worker)."""
    try:
        claimed = rt.store.transition(job_id, jobs.PREPARING, allowed=(jobs.QUEUED,), worker=rt.worker_id,
                                      started_at=time.time(), host=socket.gethostname())
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
        rt.store.add_event(job_id, f"data set {dataset['name']} already on this machine (cached by sha256)")
        return local
    rt.storage.get_file(Storage.dataset_parts(dataset["sha256"], dataset["name"]), local)
    rt.store.add_event(job_id, f"data set {dataset['name']} staged from storage")
    return local


def run_notebook(record: dict[str, Any], data_path: Path, run_dir: Path, report: Path) -> dict[str, Any] | None:
    """Execute the template with the job's values as typed parameters; the error fields on failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parameters = {
        "job_id": record["job_id"], "dataset_path": str(data_path),
        "dataset_format": record["dataset"]["format"], "output_dir": str(run_dir / "output"),
        **record["config"],
    }
    try:
        papermill.execute_notebook(
            str(TEMPLATE), str(report), parameters=parameters, kernel_name="python3",
            cwd=str(run_dir), progress_bar=False, log_output=False,
        )
    except PapermillExecutionError as exc:
        first_line = str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ""
        return {"error": f"{exc.ename}: {first_line} (notebook cell {exc.exec_count})",
                "error_cell": exc.exec_count, "error_traceback": "\n".join(exc.traceback[-20:])}
    return None


def upload_outputs(rt: Runtime, job_id: str, run_dir: Path) -> None:
    rt.storage.put_dir(run_dir / "output" / "adapter", *Storage.run_parts(job_id, "adapter"))
    rt.storage.put_file(run_dir / "output" / "result.json", *Storage.run_parts(job_id, "result.json"))


def save_report(rt: Runtime, job_id: str, report: Path) -> str | None:
    """Upload the executed notebook, also after a failure; its URL, or None when there is none."""
    if not report.is_file():
        return None
    try:
        rt.storage.put_file(report, *Storage.run_parts(job_id, "report.ipynb"))
    except Exception:
        log.exception("could not upload the report of job %s", job_id)
        return None
    return rt.storage.full_url(*Storage.run_parts(job_id, "report.ipynb"))


def job_result(rt: Runtime, job_id: str, outputs: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
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
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
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

    static = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": rt.started_at, **gpu_info()}
    max_attempts = int(os.environ.get("FTKIT_MAX_ATTEMPTS", "3"))
    while not stop.is_set():
        try:
            rt.store.heartbeat(rt.worker_id, {**static, "current_job": rt.current_job, "jobs_done": rt.jobs_done},
                               ttl=rt.settings.worker_grace_seconds)
            requeue_orphans(rt.store, huey, max_attempts=max_attempts)
        except Exception as exc:  # a broker outage must not kill the worker: retry next beat
            log.warning("heartbeat failed: %s", exc)
        stop.wait(rt.settings.heartbeat_seconds)
    try:
        rt.store.forget_worker(rt.worker_id)
    except Exception as exc:
        log.warning("could not deregister worker: %s", exc)


def run_worker(settings: Settings | None = None, *, worker_id: str | None = None) -> None:
    """Run a worker until it is stopped (SIGINT: finish the job; SIGTERM: stop now)."""
    global _runtime
    from .queue import make_huey

    settings = settings or Settings.from_env()
    os.environ.update(settings.to_env())  # the notebook kernels read the same settings
    import papermill  # noqa: F401  -- once here, not per job

    scratch = Path(settings.scratch_dir).expanduser().resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    _runtime = Runtime(settings=settings, store=open_store(settings),
                       storage=Storage(settings.storage, endpoint_url=settings.s3_endpoint_url),
                       worker_id=worker_id or jobs.new_worker_id(), scratch=scratch)
    huey = make_huey(settings)
    stop = threading.Event()
    beat = threading.Thread(target=heartbeat_loop, args=(_runtime, huey, stop), name="ftkit-heartbeat", daemon=True)
    beat.start()
    consumer = huey.create_consumer(workers=1, worker_type="thread", initial_delay=0.05, backoff=1.1,
                                    max_delay=0.25, periodic=False, check_worker_health=True)
    log.info("worker %s on %s queue, storage %s", _runtime.worker_id, settings.broker, settings.storage)
    try:
        consumer.run()
    finally:
        stop.set()
        beat.join(timeout=10)
