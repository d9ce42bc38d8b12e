"""A job's experiment trackers after its notebook, on the worker: what the kernel left in the run's
output folder goes where it belongs (TensorBoard's event files and an offline W&B run's files to
storage; the report to the MLflow run, which then ends as the job did), and the trackers' warnings
go into the job's record. Each step only warns: a tracker never fails a job. The kernel's side is
ftkit/training/trackers.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core import statuses
from ..core.records import JobRecord
from ..storage import Storage
from ..trackers import mlflow_client, read_state, tracking_uri, unreachable, warning_text
from .runtime import Runtime

# How an MLflow run ends, by how its job ended (a job going back to the queue leaves it running:
# its next attempt continues the run).
RUN_STATUS = {
    statuses.COMPLETED: "FINISHED",
    statuses.FAILED: "FAILED",
    statuses.CANCELLED: "KILLED",
}


def upload_tracker_files(rt: Runtime, job_id: str, run_dir: Path) -> tuple[list[str], list[str]]:
    """TensorBoard's event files to runs/<job_id>/tensorboard/ and an offline W&B run's files
    (when W&B wrote them in the run's folder) to runs/<job_id>/wandb/, for every job that made
    them, failed or stopped ones too. The kernel's warnings, and this step's."""
    output = run_dir / "output"
    state = read_state(output)
    if not state:
        return [], []
    wanted = {"tensorboard": "tensorboard" in state["used"], "wandb": state["wandb_offline"]}
    warnings = []
    for name, upload in wanted.items():
        if upload and (output / name).is_dir():
            try:
                put_files(rt.storage, output / name, Storage.run_parts(job_id, name))
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                warnings.append(warning_text(name, f"its files did not reach storage: {why}"))
    return state["warnings"], warnings


def put_files(storage: Storage, folder: Path, parts: tuple[str, ...]) -> None:
    """The folder's files, each written atomically; symbolic links left out (W&B links its run's
    logs, and its cache outside the folder)."""
    for root, _, files in os.walk(folder):  # not into linked folders
        for name in sorted(files):
            path = Path(root) / name
            if not path.is_symlink():
                storage.put_file(path, *parts, *path.relative_to(folder).parts)


def close_mlflow_run(run_dir: Path, report: Path, final: str) -> list[str]:
    """The report added to the job's MLflow run, and the run ended as the job did (FINISHED,
    FAILED, KILLED); a job going back to the queue leaves its run to its next attempt. Warnings."""
    run_id = read_state(run_dir / "output").get("mlflow_run_id")
    if not run_id or final not in RUN_STATUS:
        return []
    uri = tracking_uri()
    try:
        if uri is None:
            raise RuntimeError("MLFLOW_TRACKING_URI is not set in the worker's environment")
        why = unreachable(uri)
        if why:
            raise ConnectionError(why)
        client = mlflow_client(uri)
        if report.is_file():
            client.log_artifact(run_id, str(report))
        client.set_terminated(run_id, status=RUN_STATUS[final])
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        return [warning_text("mlflow", f"run {run_id} did not get the report or its end: {why}")]
    return []


def add_warnings(record: JobRecord, fields: dict[str, Any], new: list[str]) -> None:
    """``new`` warnings after the job's (those ``fields`` already set, else the record's, from
    submit or an earlier attempt), each once."""
    if not new:
        return
    kept = fields.get("warnings", record.get("warnings"))
    earlier = [w for w in kept if isinstance(w, str)] if isinstance(kept, list) else []
    fields["warnings"] = list(dict.fromkeys([*earlier, *new]))
