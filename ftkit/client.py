"""The public API behind ``import ftkit``: upload a data set, submit a job, follow it, collect it.

Connections are made on first use, never at import: a notebook client starts fast and light.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import importlib.util
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, cast, overload

from . import jobstore as jobs
from .config import Settings, TrainConfig
from .core import statuses
from .core.records import DatasetRef, JobRecord, WorkerInfo
from .core.rules import (
    check_attempts,
    check_idempotency_key,
    check_job_id,
    check_note,
    check_priority,
    check_tags,
    is_job_id,
)
from .core.rules import safe_name as _safe_name
from .errors import (
    BrokerUnavailable,
    ConfigError,
    DatasetError,
    JobFailed,
    JobNotFound,
    MissingExtra,
    NoWorkerWarning,
    WorkerExited,
    WorkerExitedWarning,
)
from .spec import check_model_path, secret_fingerprint, sign
from .storage import (
    DATASET_META,
    Storage,
    check_model_ref,
    folder_digest,
    model_files,
    safe_model_name,
)

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
        self._model_digests: dict[tuple, str] = {}  # unchanged folders are not hashed again

    def __repr__(self) -> str:
        return (
            f"<ftkit.Client {self.settings.broker} queue {self.settings.queue_location}, "
            f"storage {self.settings.storage}>"
        )

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

        path = Path(path).expanduser().absolute()  # read here, in the caller's folder
        if not path.is_file():
            raise DatasetError(
                f"data set file not found: {path} (relative paths are read from {Path.cwd()}, "
                "the folder this process runs in)"
            )
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

    def find_dataset(self, name: str) -> Dataset:
        """The newest uploaded data set stored under this file name."""
        ids = self.storage.datasets_named(safe_name(name))
        found = [d for d in map(self.get_dataset, ids) if d.name == name]
        if not found:
            raise JobNotFound(f"no uploaded data set named {name!r} in {self.storage.url}")
        return max(found, key=lambda d: d.uploaded_at)

    def reserve_job_id(self, dataset: Dataset) -> str:
        """A fresh job id set aside for a later ``submit(dataset, job_id=...)``: a caller can keep
        it from the upload on. Kept in storage, beside the data sets, so any client sees it."""
        job_id = uuid.uuid4().hex[:12]
        self.storage.save_reservation(
            {"job_id": job_id, "dataset_id": dataset.id, "reserved_at": _iso(time.time())}
        )
        return job_id

    def reserved_dataset(self, job_id: str) -> Dataset:
        """The data set a reserved job id was set aside for; JobNotFound when it was not reserved."""
        if not is_job_id(job_id):
            raise JobNotFound(f"no reservation for job id {job_id!r}: ids are 12 hex digits")
        return self.get_dataset(self.storage.reservation(job_id)["dataset_id"])

    def resolve_dataset(self, dataset: Dataset | str | os.PathLike) -> Dataset:
        """The Dataset that ``submit(dataset)`` trains on: given, found by id, or a file uploaded."""
        if isinstance(dataset, Dataset):
            return dataset
        if isinstance(dataset, os.PathLike) or Path(str(dataset)).expanduser().is_file():
            return self.upload_dataset(dataset)
        if isinstance(dataset, str) and not _looks_like_id(dataset):
            return self.upload_dataset(dataset)  # a path that is not there: the clear error
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
        max_attempts: int | None = None,
        job_id: str | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        note: str | None = None,
        resume_from: Job | str | None = None,
        _retry_of: str | None = None,
        **fields: Any,
    ) -> Job:
        """Validate everything, then record the job and queue it in one transaction: a failure at
        any point leaves no job, or a job that will run. ``max_attempts`` (default
        FTKIT_MAX_ATTEMPTS, else 3) is how often it is tried when its worker dies. ``job_id``: an
        id chosen beforehand (reserve_job_id); JobExists when a job holds it. ``tags`` (find the
        job again with ``jobs(tag=...)``) and ``note`` are for people: they change nothing that
        trains. ``resume_from`` (a Job or an id): start from that job's newest kept checkpoint,
        else from its adapter (a completed job's; fresh optimizer, steps from 1); its LoRA shape
        and base model must be this job's."""
        from .lineage import start_point
        from .queue import message_for

        check_priority(priority)
        attempts = check_attempts(
            self.settings.max_attempts if max_attempts is None else max_attempts
        )
        check_idempotency_key(idempotency_key)
        check_job_id(job_id)
        tags, note = check_tags(tags), check_note(note)
        parent = resume_from.id if isinstance(resume_from, Job) else resume_from
        cfg = resolve_config(config, fields)
        cfg, model_ref = self._resolve_base_model(cfg)
        if parent is not None:
            start_point(self.store, self.storage, parent, cfg, model_ref)
        self._check_signing()
        ds = self.resolve_dataset(dataset)
        job_id = job_id or uuid.uuid4().hex[:12]
        now = time.time()
        record: JobRecord = {
            "job_id": job_id,
            "status": statuses.QUEUED,
            "created_at": now,
            "queued_at": now,
            "max_attempts": attempts,
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
            "tags": tags,
            "note": note,
            "config": cfg.to_dict(),
            "model": model_ref,  # a local base-model folder uploaded to storage, or None
            "dataset": cast(DatasetRef, {k: v for k, v in ds.to_dict().items() if k != "profile"}),
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
        if parent:  # only on a job that continues another, or retries it
            record["resume_from"] = parent
        if _retry_of:
            record["retry_of"] = _retry_of
        secret = self.settings.queue_secret
        record["signature"] = sign(record, secret) if secret else None
        stored_id = self.store.create(record, message_for(self.huey, job_id, priority))
        return Job(stored_id, self)

    def check_config(self, config: TrainConfig | dict | None = None, **fields: Any) -> TrainConfig:
        """What submit checks of a configuration, queueing nothing: its values, a local base
        model's folder (uploaded where workers need it), and that the live workers take this
        client's signature. A sweep checks every run so before it queues one."""
        cfg, _ = self._resolve_base_model(resolve_config(config, fields))
        self._check_signing()
        return cfg

    def _resolve_base_model(self, cfg: TrainConfig) -> tuple[TrainConfig, dict[str, str] | None]:
        """A local base model is read here, where the user typed its path: resolved against this
        process's folder and checked before anything is queued. Uploaded to storage (the
        reference comes back) when workers cannot read this machine's files."""
        folder = local_model_path(cfg.base_model)
        if folder is None:
            return cfg, None  # a hub id: each worker fetches it, or finds it in its cache
        check_model_path(
            str(folder), self.settings.allowed_model_dirs
        )  # first: say nothing of folders outside them
        if not (folder / "config.json").is_file():
            what = (
                "does not exist"
                if not folder.exists()
                else "is not a folder"
                if not folder.is_dir()
                else "has no config.json"
            )
            raise ConfigError(
                f"base_model {cfg.base_model!r}: {folder} {what} (relative paths are read from "
                f"{Path.cwd()}, the folder this process runs in). Give a model folder with a "
                "config.json, or a hub id such as org/name"
            )
        cfg = cfg.replace(base_model=str(folder))
        return cfg, (self.upload_model(folder) if self.uploads_models else None)

    @property
    def uploads_models(self) -> bool:
        """Whether local model folders go to storage: with storage on this machine (a laptop and
        its local worker) the worker reads the folder where it is, and a 10 GB model is not
        copied; with S3 storage, workers elsewhere cannot read it, so it is uploaded once."""
        mode = self.settings.upload_models
        return mode == "always" or (mode == "auto" and not self.storage.is_local)

    def upload_model(self, folder: str | os.PathLike) -> dict[str, str]:
        """Store a local model folder under its content digest (once: a stored copy is reused);
        the reference ({"sha256", "name"}) a worker stages it by."""
        folder = Path(folder).expanduser().resolve()
        files = model_files(folder)
        if not files:
            raise ConfigError(f"model folder {folder} has no files to upload")
        key = (
            str(folder),
            tuple((rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files),
        )
        if key not in self._model_digests:
            self._model_digests[key] = folder_digest(files)
        sha256 = self._model_digests[key]
        meta = self.storage.model_meta(sha256)
        if meta is None:
            meta = self.storage.put_model(files, sha256, safe_model_name(folder))
        return check_model_ref({"sha256": sha256, "name": meta["name"]})

    def _check_signing(self) -> None:
        """Refuse to queue a job that the live workers would refuse: they require signed jobs
        (they publish a fingerprint of their secret) and this client signs with no or another one."""
        ours = secret_fingerprint(self.settings.queue_secret)
        theirs = {w.get("secret_fingerprint") for w in self.store.workers()}
        theirs.discard(None)
        if theirs and ours not in theirs:
            raise ConfigError(
                "the workers on this queue require jobs signed with FTKIT_QUEUE_SECRET, and "
                + (
                    "this client has none set"
                    if ours is None
                    else "this client's FTKIT_QUEUE_SECRET is a different one"
                )
                + ": set the workers' FTKIT_QUEUE_SECRET here (environment, .env, or "
                "ftkit.connect(queue_secret=...))"
            )

    def get_job(self, job_id: str) -> Job:
        self.store.get(job_id)  # JobNotFound early
        return Job(job_id, self)

    def jobs(
        self,
        status: str | None = None,
        limit: int = 50,
        *,
        offset: int = 0,
        tag: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``offset`` skips that many; ``tag`` keeps the jobs submitted with that
        tag. Read through indexes: a page costs what it shows, however many jobs there are."""
        if status is not None and status not in statuses.STATUSES:
            raise ConfigError(
                f"unknown status {status!r}; one of {', '.join(statuses.STATUSES)}", field="status"
            )
        for name, value in (("limit", limit), ("offset", offset)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}={value!r}: give a whole number, 0 or more", field=name)
        if tag is not None:
            tag = check_tags([tag])[0]
        records = self.store.list_jobs(status=status, limit=limit, tag=tag, offset=offset)
        return [public_status(r) for r in records]

    def count_jobs(self, status: str | None = None) -> int:
        return self.store.count(status)

    def cancel(self, job_id: str) -> str:
        return self.store.request_cancel(job_id)

    def delete(self, job_id: str, *, force: bool = False) -> dict[str, Any]:
        """Remove a job's record, metrics, logs and run folder; what was freed. JobActive while it
        is queued or running, unless ``force`` (cancels it first)."""
        from .runs import delete_job

        return delete_job(self, job_id, force=force)

    def gc(
        self, older_than: str | float, *, status: str | None = None, dry_run: bool = False
    ) -> list[dict[str, Any]]:
        """Delete ended jobs older than ``older_than`` (``30d``, ``12h`` or seconds), each row
        with the bytes freed; ``dry_run`` deletes nothing."""
        from .runs import collect

        return collect(self, older_than, status=status, dry_run=dry_run)

    def download(self, job_id: str, dest: str | os.PathLike) -> Path:
        record = self.store.get(job_id)
        if record["status"] not in (statuses.COMPLETED, statuses.CANCELLED) or not record.get(
            "result"
        ):
            raise JobFailed(f"job {job_id} has no adapter to download (status {record['status']})")
        return self.storage.get_dir(Storage.run_parts(job_id, "adapter"), Path(dest).expanduser())

    def workers(self) -> list[WorkerInfo]:
        return self.store.workers()

    def reap_if_orphaned(self, record: JobRecord) -> bool:
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
                queue_depth = self.store.count(statuses.QUEUED)  # kept, not counted: O(1)
            except Exception:
                connected = False
        status = "unhealthy" if not connected else ("healthy" if workers else "degraded")
        warning = (
            f"cannot reach the {self.settings.broker} queue at {self.settings.queue_location}"
            if not connected
            else None
            if workers
            else self.no_worker_message()
        )
        return {
            "status": status,
            "broker": self.settings.broker,
            "broker_connected": connected,
            "workers": workers,
            "queue_depth": queue_depth,
            "queue": self.settings.queue_location,
            "storage": self.settings.storage,
            "warning": warning,
            "signed_messages": bool(self.settings.queue_secret),
        }

    def no_worker_message(self) -> str:
        where = f"the {self.settings.broker} queue {self.settings.queue_location}"
        if self.settings.redis_url:
            how = "on a GPU machine with FTKIT_REDIS_URL pointing at this queue"
        else:
            how = "in a terminal on this machine, or ftkit.start_local_worker()"
        return f"no worker is listening on {where}; start one with `ftkit worker` {how}"

    def start_local_worker(self, *, env: dict[str, str] | None = None) -> LocalWorker:
        """A detached ``ftkit worker`` on this machine with these settings, logging to a file in
        the per-user folder, so a laptop user need not leave the notebook. It runs in its own
        session: it outlives the kernel (stop it with ``LocalWorker.stop()``). Should it exit,
        ``Job.wait()`` and the monitor panel say so within a second, with its log's last lines."""
        if importlib.util.find_spec("papermill") is None:
            raise MissingExtra(
                "a local worker needs the training stack: pip install 'ftkit[worker]'"
            )
        logs = Path(self.settings.home) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ftkit.cli", "worker"],
                env={
                    **os.environ,
                    **self.settings.to_env(),
                    "PYTHONUNBUFFERED": "1",
                    **(env or {}),
                },
                cwd=self.settings.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _local_workers[proc.pid] = (proc, log)
        return LocalWorker(pid=proc.pid, log=log)


class Job:
    """A handle on one job; every call reads the live record."""

    def __init__(self, job_id: str, client: Client):
        self.id = job_id
        self._client = client

    def __repr__(self) -> str:
        return f"<ftkit.Job {self.id}>"

    # How a job shows itself in a notebook cell: the layer above (``ftkit/__init__``, with the panels)
    # registers its live monitor here, so the client knows no widgets.
    cell_view: ClassVar[Callable[[Job, dict[str, Any]], dict[str, Any] | None] | None] = None

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """In a notebook, a job shows its live monitor (None: IPython falls back to the repr)."""
        view = type(self).cell_view
        return view(self, kwargs) if view is not None else None

    def status(self) -> dict[str, Any]:
        record = self._client.store.get(self.id)
        if record["status"] in statuses.ACTIVE and self._client.reap_if_orphaned(record):
            record = self._client.store.get(self.id)
        return public_status(record)

    def metrics(self, start: int = 0) -> list[dict[str, Any]]:
        """Logged rows ({"step", "loss", "learning_rate", "epoch", ...}), from index ``start`` on."""
        return self._client.store.metrics(self.id, start)

    @overload
    def logs(self, n: int = ..., *, follow: Literal[False] = ...) -> list[str]: ...
    @overload
    def logs(
        self, n: int = ..., *, follow: Literal[True], poll: float = ..., timeout: float | None = ...
    ) -> Iterator[str]: ...

    def logs(
        self,
        n: int = 50,
        *,
        follow: bool = False,
        poll: float = 0.5,
        timeout: float | None = None,
    ) -> list[str] | Iterator[str]:
        """The job's last ``n`` output lines: what its cells print (stdout and stderr) and ftkit's
        events. ``follow=True``: every kept line, then each new one as it comes, until the job
        ends (or ``timeout`` s pass: TimeoutError)."""
        if not follow:
            return self._client.store.logs(self.id, n)
        return self._follow(poll, timeout)

    def _follow(self, poll: float, timeout: float | None) -> Iterator[str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor, ended = 0, False
        while True:
            lines, cursor = self._client.store.logs_since(self.id, cursor)
            yield from lines
            if ended and not lines:
                return
            if ended:
                continue
            if self.status()["status"] in statuses.FINAL:
                # The final event is written just after the final status: read on until quiet.
                ended = True
                time.sleep(poll)
            elif not lines:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still running after {timeout} s of logs")
                time.sleep(poll)

    def cancel(self) -> str:
        return self._client.cancel(self.id)

    def retry(self) -> Job:
        """A new job with this failed or cancelled job's data set, config, tags and note, starting
        from its last kept checkpoint; when it kept none, from where this job started (step 1, or
        the job it continued). Its ``retry_of`` names this job."""
        from .lineage import newest_checkpoint

        record = self._client.store.get(self.id)
        if record["status"] not in (statuses.FAILED, statuses.CANCELLED):
            raise ConfigError(
                f"job {self.id} is {record['status']}: only a failed or cancelled job is retried"
            )
        kept = newest_checkpoint(self._client.storage, self.id, to_continue=True) is not None
        return self._client.submit(
            record["dataset"]["id"],
            record["config"],
            priority=record.get("priority") or 0,
            max_attempts=record.get("max_attempts"),
            tags=record.get("tags") or None,
            note=record.get("note"),
            resume_from=self.id if kept else record.get("resume_from"),
            _retry_of=self.id,
        )

    def delete(self, *, force: bool = False) -> dict[str, Any]:
        """Remove this job and everything it left in the store and in storage (see Client.delete)."""
        return self._client.delete(self.id, force=force)

    def download(self, dest: str | os.PathLike) -> Path:
        return self._client.download(self.id, dest)

    def report_html(self) -> str:
        """The rendered run report as one HTML page; JobNotFound while there is none yet."""
        record = self._client.store.get(self.id)
        parts = Storage.run_parts(self.id, "report.html")
        if not self._client.storage.exists(*parts):
            raise JobNotFound(f"job {self.id} has no report yet (status {record['status']})")
        return self._client.storage.read_text(*parts)

    def report(self):
        """The rendered run report, shown inline in a notebook (an isolated frame)."""
        import html

        from IPython.display import HTML

        body = self.report_html()
        # sandbox="": the report shows data set text and model output; it runs no script here.
        return HTML(
            f'<iframe sandbox="" srcdoc="{html.escape(body, quote=True)}" '
            "style='width:100%;height:800px;border:1px solid #ddd'></iframe>"
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
        with warnings.catch_warnings():  # peft's own use of a name transformers 5.23 renamed
            warnings.filterwarnings(
                "ignore", "`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        if device:
            model = model.to(device)
        return model.eval(), AutoTokenizer.from_pretrained(adapter)

    def generate(self, prompt: str, *, max_new_tokens: int = 64) -> str:
        """A quick check: the fine-tuned model's answer to one user message (greedy)."""
        from .training import generate

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
        """Block until the job ends (with a progress bar, redrawn every ``poll`` seconds); the final
        status. The end itself is seen at once, not at the next poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        watch, warned = WorkerWatch(self._client), set()
        with self._client.store.end_watch(self.id) as sleep:
            try:
                while True:
                    status = self.status()
                    if progress:
                        bar = _update_bar(bar, status)
                    if status["status"] in statuses.FINAL:
                        break
                    exited = watch.exited()
                    if exited is not None and raise_on_failure:
                        raise WorkerExited(f"job {self.id} is {status['status']}: {exited}")
                    message = exited or watch.check()
                    if message is not None and message not in warned:
                        category = WorkerExitedWarning if exited else NoWorkerWarning
                        warnings.warn(
                            f"job {self.id} is {status['status']}: {message}",
                            category,
                            stacklevel=2,
                        )
                        warned.add(message)
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(
                            f"job {self.id} still {status['status']} after {timeout} s"
                        )
                    sleep(poll)
            finally:
                if bar is not None:
                    bar.close()
        if raise_on_failure and status["status"] == statuses.FAILED:
            raise JobFailed(f"job {self.id} failed: {status['error']}")
        return status


class WorkerWatch:
    """Notices when no worker has been listening for a few heartbeats: a queued job would wait
    forever (say, a worker started with other settings, on another queue)."""

    HEARTBEATS = 3

    def __init__(self, client: Client):
        self.client = client
        self.message: str | None = None
        self._empty_since: float | None = None
        self._checked = -float("inf")

    def exited(self) -> str | None:
        """A local worker this process started that has exited, said with its exit code and the
        last lines of its log (the newest such worker); looked at on every call: a poll is free."""
        for proc, log in reversed(list(_local_workers.values())):
            if proc.poll() is not None:
                return LocalWorker(pid=proc.pid, log=log).exit_message()
        return None

    def check(self) -> str | None:
        """The warning to show now, or None; reads the live workers at most twice a heartbeat."""
        beat, now = self.client.settings.heartbeat_seconds, time.monotonic()
        if now - self._checked < beat / 2:
            return self.message
        self._checked = now
        if self.client.workers():
            self._empty_since, self.message = None, None
        else:
            self._empty_since = self._empty_since if self._empty_since is not None else now
            if now - self._empty_since >= self.HEARTBEATS * beat:
                self.message = self.client.no_worker_message()
        return self.message


@dataclass(frozen=True)
class LocalWorker:
    """A worker this process started on this machine (``Client.start_local_worker``)."""

    pid: int
    log: Path

    def running(self) -> bool:
        return self.pid in _local_workers and _local_workers[self.pid][0].poll() is None

    def exit_code(self) -> int | None:
        """Its exit status once it has exited on its own; None while it runs (or once stopped)."""
        return _local_workers[self.pid][0].poll() if self.pid in _local_workers else None

    def log_tail(self, lines: int = 12) -> list[str]:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def exit_message(self) -> str | None:
        """'the local worker (pid N) exited with code C; its log (PATH) ends: ...', or None."""
        code = self.exit_code()
        if code is None:
            return None
        tail = "\n".join(f"    {line}" for line in self.log_tail())
        return (
            f"the local worker (pid {self.pid}) exited with code {code}; "
            f"its log ({self.log}) ends:\n{tail or '    (empty)'}"
        )

    def stop(self, timeout: float = 60) -> int | None:
        """SIGINT (the running job is handed back to the queue), then wait; the exit status."""
        import signal

        proc, _ = _local_workers.pop(self.pid, (None, None))
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


# The local workers this process started and has not stopped (kept, so none is reaped as garbage).
_local_workers: dict[int, tuple[subprocess.Popen, Path]] = {}


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


def local_model_path(name: str) -> Path | None:
    """The absolute folder a base_model names on this machine, or None for a hub id (org/name):
    a path-like name, or an existing folder (the rule the worker's check and transformers use)."""
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or path.is_dir():
        return path.resolve()
    return None


def _looks_like_id(text: str) -> bool:
    return 8 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


def public_status(record: Mapping[str, Any]) -> dict[str, Any]:
    """What status() shows: the record with readable times and without internals."""
    out = {k: v for k, v in record.items() if k not in ("idempotency_key",)}
    out.setdefault("tags", [])  # records from before tags and notes
    out.setdefault("note", None)
    out.setdefault("resume_from", None)  # records of jobs that continue or retry no other
    out.setdefault("retry_of", None)
    out.setdefault("warnings", [])  # what went wrong around a job that ended (its HTML report)
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
    """A data set's stored file name: a plain file name, nothing that climbs folders, and not the
    name of the metadata stored beside it."""
    if isinstance(name, str) and name.lower() == DATASET_META:  # also where names ignore case
        raise DatasetError(
            f"a data set cannot be stored as {name!r}: that name holds its metadata; "
            "rename the file, or pass another name, e.g. upload_dataset(path, name='train.json')"
        )
    try:
        return _safe_name(name)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size, reading in 1 MiB chunks (a 1 GB file never sits in memory)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


__all__ = ["BrokerUnavailable", "Client", "Dataset", "Job", "LocalWorker", "WorkerWatch"]
