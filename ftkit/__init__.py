"""ftkit: fine-tune language models from Jupyter on remote GPU workers.

    import ftkit
    ds = ftkit.upload_dataset("train.jsonl")
    job = ftkit.submit(ds, base_model="./tiny-llama", max_steps=60)
    job.wait(); job.download("./adapter")

Importing ftkit connects to nothing and loads no torch, transformers or papermill.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

from ._version import __version__ as __version__
from .client import Client, Dataset, Job, LocalWorker
from .config import Settings, TrainConfig
from .errors import (
    BrokerUnavailable,
    ConfigError,
    DatasetError,
    FtkitError,
    JobActive,
    JobFailed,
    JobNotFound,
    MissingExtra,
    NoWorkerWarning,
    StorageError,
    WorkerExited,
    WorkerExitedWarning,
)
from .sweeping import Sweep

if typing.TYPE_CHECKING:  # the shapes of what jobs(), health() and workers() return
    from .core.records import Health, JobStatus, WorkerInfo

_client: Client | None = None


def connect(redis_url: str | None = None, storage: str | None = None, **settings: Any) -> Client:
    """Choose the queue and storage (else the environment / .env decide, or the embedded default
    in the per-user folder); the client shows where they are."""
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


def jobs(status: str | None = None, limit: int = 50, *, tag: str | None = None) -> list[JobStatus]:
    """Job statuses, newest first; ``status`` and ``tag`` narrow the list."""
    return client().jobs(status=status, limit=limit, tag=tag)


def cancel(job_id: str) -> str:
    return client().cancel(job_id)


def download(job_id: str, dest: str | os.PathLike) -> Path:
    return client().download(job_id, dest)


def health() -> Health:
    return client().health()


def workers() -> list[WorkerInfo]:
    return client().workers()


def start_local_worker(*, cpu_devices: int | None = None) -> LocalWorker:
    """Start ``ftkit worker`` on this machine in the background, with this client's settings;
    its pid and log file. ``cpu_devices=2``: it trains on the CPU in two processes, to try a
    job with ``devices=2`` on a laptop."""
    return client().start_local_worker(cpu_devices=cpu_devices)


_EXAMPLE_FILES = {"sft": "example_data.jsonl", "preference": "preference_data.jsonl"}


def example_data(kind: str = "sft") -> Path:
    """An example data set packaged with ftkit, from any folder: "sft" (chat format, 120 rows) or
    "preference" (46 pairs of prompt, chosen and rejected answers, for DPO, ORPO or KTO)."""
    if kind not in _EXAMPLE_FILES:
        raise ValueError(f"example_data({kind!r}): use one of {', '.join(_EXAMPLE_FILES)}")
    return Path(__file__).parent / "examples" / _EXAMPLE_FILES[kind]


def sweep(
    dataset: Dataset | str | os.PathLike,
    config: TrainConfig | dict | None = None,
    *,
    mode: str = "grid",
    n: int | None = None,
    sample_seed: int | None = None,
    **fields: Any,
) -> Sweep:
    """Queue one run per combination of the list-valued fields (``mode="grid"``), or ``n`` runs
    drawn from lists and ``(low, high)`` ranges (``mode="random"``, reproducible with
    ``sample_seed``); scalars are fixed. Every run is checked before any is queued. ``tags``,
    ``note``, ``priority`` and ``max_attempts`` apply to each run."""
    from .sweeping import create

    return create(client(), dataset, config, mode=mode, n=n, sample_seed=sample_seed, **fields)


def get_sweep(sweep_id: str) -> Sweep:
    """A sweep queued earlier, from any notebook or process on the same queue."""
    from .sweeping import get

    return get(client(), sweep_id)


def sweeps(limit: int = 20, *, tag: str | None = None) -> list[dict[str, Any]]:
    """Recent sweeps, newest first: what each swept, how many runs, its tags."""
    from .sweeping import recent

    return recent(client(), limit, tag=tag)


def compare(jobs: list[Job | str]):
    """Config differences, final metrics and overlaid loss curves of several jobs."""
    from .report import Comparison

    handles = [j if isinstance(j, Job) else get_job(j) for j in jobs]
    return Comparison([j.status() for j in handles], [j.metrics() for j in handles])


def panel(**kwargs: Any):
    """Upload, configure and monitor in one ipywidgets panel."""
    from .panels.train import Panel

    return Panel(client(), **kwargs).widget


def monitor(job: Job | str):
    """A live monitor of one job (also one submitted elsewhere)."""
    from .panels.monitor import MonitorPanel

    return MonitorPanel(job if isinstance(job, Job) else get_job(job)).widget


def dashboard(**kwargs: Any):
    """Live workers, queue depth and a table of jobs."""
    from .panels.monitor import Dashboard

    return Dashboard(client(), **kwargs).widget


def runs_panel(**kwargs: Any):
    """Recent jobs and sweeps: filter by tag, compare, retry and delete the selected runs."""
    from .panels.sweeps import RunsPanel

    return RunsPanel(client(), **kwargs).widget


def _monitor_in_cell(job: Job, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """A job left as a cell's value shows its live monitor (the panels load on first display)."""
    from .panels.monitor import MonitorPanel

    return MonitorPanel(job).widget._repr_mimebundle_(**kwargs)


def _sweep_in_cell(sweep: Sweep, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """A sweep left as a cell's value shows a live table of its runs."""
    from .panels.sweeps import SweepView

    return SweepView(sweep).widget._repr_mimebundle_(**kwargs)


def _chat_panel(job: Job, options: dict[str, Any]) -> Any:
    """``job.chat()``: the chat panel (loaded on first use, with ipywidgets)."""
    from .panels.chat import ChatPanel

    return ChatPanel(job, **options)


Job.cell_view = _monitor_in_cell  # the client knows no widgets: the face joins the two
Job.chat_view = _chat_panel
Sweep.cell_view = _sweep_in_cell


__all__ = [
    "BrokerUnavailable",
    "Client",
    "ConfigError",
    "Dataset",
    "DatasetError",
    "FtkitError",
    "Job",
    "JobActive",
    "JobFailed",
    "JobNotFound",
    "LocalWorker",
    "MissingExtra",
    "NoWorkerWarning",
    "Settings",
    "StorageError",
    "Sweep",
    "TrainConfig",
    "WorkerExited",
    "WorkerExitedWarning",
    "cancel",
    "client",
    "compare",
    "connect",
    "dashboard",
    "download",
    "example_data",
    "get_job",
    "get_sweep",
    "health",
    "jobs",
    "monitor",
    "panel",
    "runs_panel",
    "start_local_worker",
    "submit",
    "sweep",
    "sweeps",
    "upload_dataset",
    "workers",
]
