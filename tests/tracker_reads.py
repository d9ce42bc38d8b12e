"""What a job's experiment trackers wrote, read back with each tracker's own reader: TensorBoard's
event files with tensorboard's EventAccumulator, an MLflow store with MLflow's client. Shared by
the tests of one-device jobs (test_trackers.py) and multi-device ones (test_multi_device.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tensorboard_losses(folder: Path) -> dict[int, float]:
    """The training loss by step in the event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def mlflow_run(uri: str, job_id: str) -> tuple[Any, Any]:
    """MLflow's client for ``uri`` and the one run named by ``job_id`` in the default experiment."""
    from ftkit.trackers import mlflow_client

    client = mlflow_client(uri)
    (run,) = client.search_runs(["0"], filter_string=f"attributes.run_name = '{job_id}'")
    return client, run


def mlflow_losses(client: Any, run_id: str) -> dict[int, float]:
    """The run's loss history by step."""
    return {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
