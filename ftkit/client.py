"""The public API behind ``import ftkit``: upload a data set, submit a job, follow it, collect it.

Connections are made on first use, never at import: a notebook client starts fast and light.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import jobstore as jobs
from .config import Settings, TrainConfig
from .errors import BrokerUnavailable, ConfigError, DatasetError, JobFailed, JobNotFound
from .storage import Storage

TIME_FIELDS = ("created_at", "started_at", "finished_at")


@dataclass(frozen=True)
class Dataset:
    """An uploaded data set: content-addressed, so uploading the same bytes twice is free."""

    id: str
    name: str
    url: str
    format: str
    rows: int
    sha256: str
    uploaded_at: str
    size_bytes: int = 0
    columns: dict[str, str] | None = None
    profile: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Dataset:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in meta.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Client:
    """One connection to a queue, job store and storage, chosen by Settings."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()

    @cached_property
    def store(self) -> jobs.JobStore:
        return jobs.open_store(self.settings)

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings.storage, endpoint_url=self.settings.s3_endpoint_url)

    @cached_property
    def huey(self):
        from .queue import make_huey

        return make_huey(self.settings)

    # -- data sets --------------------------------------------------------------------------------
    def upload_dataset(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        format: str | None = None,
        columns: dict[str, str] | None = None,
        max_seq_length: int = 2048,
    ) -> Dataset:
        """Validate (line by line, before any GPU is spent), then store under its sha256."""
        from .data import validate_dataset

        path = Path(path).expanduser()
        if not path.is_file():
            raise DatasetError(f"data set file not found: {path}")
        name = safe_name(name or path.name)
        profile = validate_dataset(
            path, format=format, columns=columns, max_seq_length=max_seq_length
        )
        sha256, size = file_digest(path)
        existing = self._find_dataset(sha256)
        if (
            existing is not None
            and existing.format == profile.format
            and existing.columns == columns
        ):
            return existing
        meta = {
            "id": sha256,
            "name": name,
            "format": profile.format,
            "rows": profile.rows,
            "sha256": sha256,
            "uploaded_at": _iso(time.time()),
            "size_bytes": size,
            "columns": columns,
            "url": self.storage.full_url(*Storage.dataset_parts(sha256, name)),
            "profile": profile.to_dict(),
        }
        self.storage.put_file(path, *Storage.dataset_parts(sha256, name))
        self.storage.save_dataset_meta(meta)
        return Dataset.from_meta(meta)

    def _find_dataset(self, sha256: str) -> Dataset | None:
        try:
            return Dataset.from_meta(self.storage.dataset_meta(sha256))
        except JobNotFound:
            return None

    def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.from_meta(self.storage.dataset_meta(dataset_id))

    def _resolve_dataset(self, dataset: Dataset | str | os.PathLike) -> Dataset:
        if isinstance(dataset, Dataset):
            return dataset
        if isinstance(dataset, os.PathLike) or Path(str(dataset)).expanduser().is_file():
            return self.upload_dataset(dataset)
        if isinstance(dataset, str):
            return self.get_dataset(dataset)
        raise DatasetError(
            f"dataset must be a Dataset, an uploaded data set's id or a file path, not {type(dataset).__name__}"
        )

    # -- jobs -------------------------------------------------------------------------------------
    def submit(
        self,
        dataset: Dataset | str | os.PathLike,
        config: TrainConfig | dict | None = None,
        *,
        idempotency_key: str | None = None,
        priority: int = 0,
        **fields: Any,
    ) -> Job:
        """Validate everything, record the job, queue it. Nothing is queued when anything is wrong."""
        cfg = resolve_config(config, fields)
        self._check_model_allowed(cfg.base_model)
        ds = self._resolve_dataset(dataset)
        job_id = uuid.uuid4().hex[:12]
        record = {
            "job_id": job_id,
            "status": jobs.QUEUED,
            "created_at": time.time(),
            "started_at": None,
            "finished_at": None,
            "progress": 0.0,
            "current_step": 0,
            "total_steps": cfg.max_steps,
            "loss": None,
            "error": None,
            "attempt": 1,
            "worker": None,
            "result": None,
            "cancel_requested": False,
            "priority": priority,
            "idempotency_key": idempotency_key,
            "submitted_by": getpass.getuser(),
            "config": cfg.to_dict(),
            "dataset": {k: v for k, v in ds.to_dict().items() if k != "profile"},
            "dataset_profile": {
                **{
                    k: ds.profile.get(k)
                    for k in (
                        "rows",
                        "format",
                        "tokens",
                        "over_max_seq_length",
                        "tokens_per_epoch",
                        "problem_counts",
                    )
                },
                "warnings": ds.profile.get("warnings", [])[:20],
                "sha256": ds.sha256,
            },
            "warnings": [w.get("message") for w in ds.profile.get("warnings", [])][:20],
        }
        stored_id = self.store.create(record)
        if stored_id == job_id:
            from .queue import enqueue

            enqueue(self.huey, job_id, priority=priority)
        return Job(stored_id, self)

    def _check_model_allowed(self, base_model: str) -> None:
        roots = self.settings.allowed_model_dirs
        if not roots or not base_model.startswith((".", "/", "~")):
            return
        real = Path(base_model).expanduser().resolve()
        if not any(real.is_relative_to(Path(r).expanduser().resolve()) for r in roots):
            raise ConfigError(
                f"base_model {base_model!r} is outside FTKIT_ALLOWED_MODEL_DIRS ({', '.join(roots)})"
            )

    def get_job(self, job_id: str) -> Job:
        self.store.get(job_id)  # JobNotFound early
        return Job(job_id, self)

    def jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if status is not None and status not in jobs.STATUSES:
            raise ConfigError(f"unknown status {status!r}; one of {', '.join(jobs.STATUSES)}")
        return [public_status(r) for r in self.store.list_jobs(status=status, limit=limit)]

    def cancel(self, job_id: str) -> str:
        return self.store.request_cancel(job_id)

    def download(self, job_id: str, dest: str | os.PathLike) -> Path:
        record = self.store.get(job_id)
        if record["status"] not in (jobs.COMPLETED, jobs.CANCELLED) or not record.get("result"):
            raise JobFailed(f"job {job_id} has no adapter to download (status {record['status']})")
        return self.storage.get_dir(Storage.run_parts(job_id, "adapter"), Path(dest).expanduser())

    def workers(self) -> list[dict[str, Any]]:
        return self.store.workers()

    def reap_if_orphaned(self, record: dict[str, Any]) -> bool:
        """An active job whose worker stopped heart-beating goes back to the queue (or fails after
        its last attempt) as soon as anyone looks, even when no worker is left to notice."""
        if record.get("worker") in {w["worker_id"] for w in self.store.workers()}:
            return False
        from .queue import requeue_orphans

        return bool(requeue_orphans(self.store, self.huey, only=record["job_id"]))

    def health(self) -> dict[str, Any]:
        connected = self.store.ping()
        workers = queue_depth = 0
        if connected:
            try:
                workers = len(self.store.workers())
                queue_depth = self.huey.pending_count()
            except Exception:
                connected = False
        status = "unhealthy" if not connected else ("healthy" if workers else "degraded")
        return {
            "status": status,
            "broker": self.settings.broker,
            "broker_connected": connected,
            "workers": workers,
            "queue_depth": queue_depth,
        }


class Job:
    """A handle on one job; every call reads the live record."""

    def __init__(self, job_id: str, client: Client):
        self.id = job_id
        self._client = client

    def __repr__(self) -> str:
        return f"<ftkit.Job {self.id}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """In a notebook, a job shows its live monitor."""
        from .widgets import MonitorPanel

        return MonitorPanel(self).widget._repr_mimebundle_(**kwargs)

    def status(self) -> dict[str, Any]:
        record = self._client.store.get(self.id)
        if record["status"] in jobs.ACTIVE and self._client.reap_if_orphaned(record):
            record = self._client.store.get(self.id)
        return public_status(record)

    def metrics(self, start: int = 0) -> list[dict[str, Any]]:
        """Logged rows ({"step", "loss", "learning_rate", "epoch", ...}), from index ``start`` on."""
        return self._client.store.metrics(self.id, start)

    def logs(self, n: int = 50) -> list[str]:
        return self._client.store.logs(self.id, n)

    def cancel(self) -> str:
        return self._client.cancel(self.id)

    def download(self, dest: str | os.PathLike) -> Path:
        return self._client.download(self.id, dest)

    def report(self):
        """The rendered run report, shown inline in a notebook (an isolated frame)."""
        import html

        from IPython.display import HTML

        body = self._client.storage.read_text(*Storage.run_parts(self.id, "report.html"))
        return HTML(
            f'<iframe srcdoc="{html.escape(body, quote=True)}" style=\'width:100%;height:800px;border:1px '
            f"solid #ddd'></iframe>"
        )

    def load(self, *, device: str | None = None):
        """(model, tokenizer): the base model with this job's adapter applied (PEFT), ready to generate
        on this machine. The adapter is downloaded once into the local cache."""
        from .errors import require

        require("peft", "worker")
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        adapter = self._adapter_dir()
        base = self.status()["config"]["base_model"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        if device:
            model = model.to(device)
        return model.eval(), AutoTokenizer.from_pretrained(adapter)

    def generate(self, prompt: str, *, max_new_tokens: int = 64) -> str:
        """A quick check: the fine-tuned model's answer to one user message (greedy)."""
        from .train import generate

        if not hasattr(self, "_loaded"):
            self._loaded = self.load()
        model, tokenizer = self._loaded
        return generate(
            model, tokenizer, {"messages": [{"role": "user", "content": prompt}]}, max_new_tokens
        )

    def merge(self, dest: str | os.PathLike) -> Path:
        """Save the base model with the adapter merged in, as a full model (save_pretrained)."""
        model, tokenizer = self.load()
        dest = Path(dest).expanduser()
        model.merge_and_unload().save_pretrained(dest)
        tokenizer.save_pretrained(dest)
        return dest

    def _adapter_dir(self) -> Path:
        cache = Path(self._client.settings.scratch_dir).expanduser() / "adapters" / self.id
        if not (cache / "adapter_config.json").is_file():
            self.download(cache)
        return cache

    @property
    def report_path(self) -> str | None:
        """The executed notebook's URL (or local path), once the job has ended."""
        return self._client.store.get_field(self.id, "report")

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool = True,
        poll: float = 0.5,
        raise_on_failure: bool = False,
    ) -> dict[str, Any]:
        """Block until the job ends (with a progress bar); the final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        try:
            while True:
                status = self.status()
                if progress:
                    bar = _update_bar(bar, status)
                if status["status"] in jobs.FINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {status['status']} after {timeout} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and status["status"] == jobs.FAILED:
            raise JobFailed(f"job {self.id} failed: {status['error']}")
        return status


def _update_bar(bar, status: dict[str, Any]):
    from tqdm.auto import tqdm

    total = status.get("total_steps") or 0
    if bar is None:
        bar = tqdm(total=total or None, desc=f"job {status['job_id']}", unit="step")
    if total and bar.total != total:
        bar.total = total
    bar.n = status.get("current_step") or 0
    loss = status.get("loss")
    bar.set_postfix_str(
        f"{status['status']}" + (f" loss={loss:.4f}" if loss is not None else ""), refresh=False
    )
    bar.refresh()
    return bar


# -- helpers --------------------------------------------------------------------------------------
def resolve_config(config: TrainConfig | dict | None, fields: dict[str, Any]) -> TrainConfig:
    """TrainConfig from an instance, a dict and keyword fields (keywords win)."""
    if isinstance(config, TrainConfig):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = dict(config)
    elif config is None:
        base = {}
    else:
        raise ConfigError(f"config must be a TrainConfig or a dict, not {type(config).__name__}")
    return TrainConfig.from_dict({**base, **fields})


def public_status(record: dict[str, Any]) -> dict[str, Any]:
    """What status() shows: the record with readable times and without internals."""
    out = {k: v for k, v in record.items() if k not in ("idempotency_key",)}
    for key in TIME_FIELDS:
        out[key] = _iso(record.get(key))
    started, finished = record.get("started_at"), record.get("finished_at")
    out["duration_seconds"] = round((finished or time.time()) - started, 3) if started else None
    return out


def _iso(ts: float | None) -> str | None:
    return (
        None
        if ts is None
        else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
    )


def safe_name(name: str) -> str:
    """A data set's stored file name: a plain file name, nothing that climbs folders."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or len(name) > 200
    ):
        raise DatasetError(
            f"invalid data set name {name!r}: use a plain file name such as 'train.jsonl'"
        )
    return name


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size, reading in 1 MiB chunks (a 1 GB file never sits in memory)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


__all__ = ["BrokerUnavailable", "Client", "Dataset", "Job"]
