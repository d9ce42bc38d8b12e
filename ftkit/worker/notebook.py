"""A job's notebook: its parameters, its run under papermill (watched for timeouts and stop
requests nobody honours), and what it leaves: the adapter and result uploaded, the report saved
(also after a failure), and the result a completed job records."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..core import statuses
from ..core.records import JobRecord
from ..core.retry import through_outages
from ..core.rules import MAX_NOTE, MAX_TAGS, TAG
from ..data import checked_columns
from ..errors import StorageUnavailable
from ..spec import JobSpec
from ..storage import Storage
from .runtime import Runtime

log = logging.getLogger(__name__)
TEMPLATE = Path(__file__).parents[1] / "templates" / "train_template.ipynb"


def notebook_parameters(
    spec: JobSpec,
    record: JobRecord,
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
        **labels(record),
        **spec.config.to_dict(),
    }


def labels(record: JobRecord) -> dict[str, Any]:
    """The job's tags and note, which its experiment trackers' runs carry: values checked again
    (the record is untrusted), well-formed tags only."""
    tags, note = record.get("tags"), record.get("note")
    return {
        "job_tags": [t for t in tags if isinstance(t, str) and TAG.fullmatch(t)][:MAX_TAGS]
        if isinstance(tags, list)
        else [],
        "job_note": note[:MAX_NOTE] if isinstance(note, str) else "",
    }


def plain_json(value: Any) -> dict[str, Any]:
    """An informational record field as plain JSON (no NaN, bounded), or {} when it is not one."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return {}
    return value if isinstance(value, dict) and len(text) <= 100_000 else {}


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
                if asked_at is None and self._past_timeout(now - started):
                    self._ask_to_stop()
                if asked_at is None and self.rt.store.get_field(self.job_id, "stop"):
                    asked_at = now
                if asked_at is not None and now - asked_at > self.grace:
                    self._kill()
                    return
            except Exception as exc:  # a broker blip: look again next tick
                log.warning("watchdog: %s", exc)

    def _past_timeout(self, seconds: float) -> bool:
        return bool(self.timeout_minutes) and seconds > (self.timeout_minutes or 0) * 60

    def _ask_to_stop(self) -> None:
        self.rt.store.update(self.job_id, stop=statuses.STOP_TIMEOUT)
        self.rt.store.add_event(
            self.job_id, f"timed out after {self.timeout_minutes:g} minutes: stopping"
        )

    def _kill(self) -> None:
        from .kernels import kill_kernel

        killed = kill_kernel(self.rt.kernel)
        self.rt.store.add_event(
            self.job_id,
            f"the kernel did not stop within {self.grace:g} s: "
            f"{'killed' if killed else 'could not kill'} it",
        )


def upload_outputs(rt: Runtime, job_id: str, run_dir: Path) -> None:
    """The adapter and result.json; each file is written atomically, so uploading again after an
    outage is safe."""
    rt.storage.put_dir(run_dir / "output" / "adapter", *Storage.run_parts(job_id, "adapter"))
    rt.storage.put_file(
        run_dir / "output" / "result.json", *Storage.run_parts(job_id, "result.json")
    )


def save_report(
    rt: Runtime,
    job_id: str,
    report: Path,
    record: JobRecord,
    final: str,
    fields: dict[str, Any],
) -> str | None:
    """Write the run summary into the report's header cell and upload the notebook, then render
    report.html and upload it, also after a failure; the report's URL, or None when there is none.
    A report that could not be rendered as HTML adds a warning to ``fields``: the job says so."""
    if not report.is_file():
        return None
    from ..report import finalize_report

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
    save_html_report(rt, job_id, nb, fields, kept=record.get("warnings"))
    return rt.storage.full_url(*Storage.run_parts(job_id, "report.ipynb"))


def save_html_report(
    rt: Runtime, job_id: str, nb: Any, fields: dict[str, Any], kept: Any = None
) -> None:
    """report.html beside the notebook; when it cannot be rendered, a warning in ``fields``, after
    the job's ``kept`` warnings (its data set's, from submit), which it must not replace."""
    from ..report import render_html

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
        earlier = [w for w in kept if isinstance(w, str)] if isinstance(kept, list) else []
        fields.setdefault("warnings", earlier).append(
            f"the HTML report was not written ({why}); the notebook report.ipynb was"
        )


def job_result(
    rt: Runtime, job_id: str, outputs: dict[str, Any], record: JobRecord
) -> dict[str, Any]:
    """A completed job's ``result``: where its outputs are, and what the run reported."""
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
