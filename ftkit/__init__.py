"""ftkit: fine-tune language models from Jupyter on remote GPU workers.

    import ftkit
    ds = ftkit.upload_dataset("train.jsonl")
    job = ftkit.submit(ds, base_model="./tiny-llama", max_steps=60)
    job.wait(); job.download("./adapter")

Importing ftkit connects to nothing and loads no torch, transformers or papermill.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .client import Client, Dataset, Job
from .config import Settings, TrainConfig
from .errors import (
    BrokerUnavailable,
    ConfigError,
    DatasetError,
    FtkitError,
    JobFailed,
    JobNotFound,
    MissingExtra,
    StorageError,
)

__version__ = "0.1.0"
_client: Client | None = None


def connect(redis_url: str | None = None, storage: str | None = None, **settings: Any) -> Client:
    """Choose the queue and storage (else the environment / .env decide, or the embedded default)."""
    global _client
    _client = Client(Settings.from_env(redis_url=redis_url, storage=storage, **settings))
    return _client


def client() -> Client:
    """The connection every module-level function uses, made from the environment on first use."""
    global _client
    if _client is None:
        _client = Client()
    return _client


def upload_dataset(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    max_seq_length: int = 2048,
) -> Dataset:
    """Validate a data set line by line and store it; its profile counts examples over max_seq_length."""
    return client().upload_dataset(
        path, name=name, format=format, columns=columns, max_seq_length=max_seq_length
    )


def submit(
    dataset: Dataset | str | os.PathLike, config: TrainConfig | dict | None = None, **fields: Any
) -> Job:
    return client().submit(dataset, config, **fields)


def get_job(job_id: str) -> Job:
    return client().get_job(job_id)


def jobs(status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    return client().jobs(status=status, limit=limit)


def cancel(job_id: str) -> str:
    return client().cancel(job_id)


def download(job_id: str, dest: str | os.PathLike) -> Path:
    return client().download(job_id, dest)


def health() -> dict[str, Any]:
    return client().health()


def workers() -> list[dict[str, Any]]:
    return client().workers()


def compare(jobs: list[Job | str]):
    """Config differences, final metrics and overlaid loss curves of several jobs."""
    from .report import Comparison

    handles = [j if isinstance(j, Job) else get_job(j) for j in jobs]
    return Comparison([j.status() for j in handles], [j.metrics() for j in handles])


def panel(**kwargs: Any):
    """Upload, configure and monitor in one ipywidgets panel."""
    from .widgets import Panel

    return Panel(client(), **kwargs).widget


def monitor(job: Job | str):
    """A live monitor of one job (also one submitted elsewhere)."""
    from .widgets import MonitorPanel

    return MonitorPanel(job if isinstance(job, Job) else get_job(job)).widget


def dashboard(**kwargs: Any):
    """Live workers, queue depth and a table of jobs."""
    from .widgets import Dashboard

    return Dashboard(client(), **kwargs).widget


__all__ = [
    "BrokerUnavailable",
    "Client",
    "ConfigError",
    "Dataset",
    "DatasetError",
    "FtkitError",
    "Job",
    "JobFailed",
    "JobNotFound",
    "MissingExtra",
    "Settings",
    "StorageError",
    "TrainConfig",
    "cancel",
    "client",
    "compare",
    "connect",
    "dashboard",
    "download",
    "get_job",
    "health",
    "jobs",
    "monitor",
    "panel",
    "submit",
    "upload_dataset",
    "workers",
]
