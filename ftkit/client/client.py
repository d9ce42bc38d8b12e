"""The public API behind ``import ftkit``: upload a data set, submit a job, follow it, collect it.

Connections are made on first use, never at import: a notebook client starts fast and light.
"""

from __future__ import annotations

import functools
import getpass
import os
import time
import uuid
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from .. import jobstore as jobs
from ..config import Settings, TrainConfig
from ..core import statuses
from ..core.records import Health, JobRecord, JobStatus, WorkerInfo
from ..core.rules import (
    check_attempts,
    check_idempotency_key,
    check_job_id,
    check_method_format,
    check_note,
    check_priority,
    check_tags,
    check_webhook,
    is_job_id,
)
from ..errors import ConfigError, DatasetError, JobFailed, JobNotFound
from ..spec import check_model_path, secret_fingerprint, sign
from ..storage import Storage, check_model_ref, folder_digest, model_files, safe_model_name
from .datasets import (
    Dataset,
    dataset_ref,
    file_digest,
    looks_like_id,
    profile_digest,
    safe_name,
    warning_messages,
)
from .health import health_of
from .job import Job
from .status import iso_time, public_status
from .workers import LocalWorker, start_local_worker, warn_if_waiting


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
        from ..queue import make_huey

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
        from ..data import validate_dataset

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
            "uploaded_at": iso_time(time.time()),
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
            {"job_id": job_id, "dataset_id": dataset.id, "reserved_at": iso_time(time.time())}
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
        if isinstance(dataset, str) and not looks_like_id(dataset):
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
        webhook: str | None = None,
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
        and base model must be this job's. ``webhook``: a URL the worker POSTs the job's end to,
        signed (README, Webhooks; default FTKIT_WEBHOOK_URL, "" for none)."""
        from ..lineage import start_point
        from ..queue import message_for

        check_priority(priority)
        attempts = check_attempts(
            self.settings.max_attempts if max_attempts is None else max_attempts
        )
        check_idempotency_key(idempotency_key)
        check_job_id(job_id)
        tags, note = check_tags(tags), check_note(note)
        hook = check_webhook(self.settings.webhook_url if webhook is None else webhook)
        parent = resume_from.id if isinstance(resume_from, Job) else resume_from
        cfg = resolve_config(config, fields)
        cfg, model_ref = self._resolve_base_model(cfg)
        if parent is not None:
            start_point(self.store, self.storage, parent, cfg, model_ref)
        self._check_signing()
        ds = self.resolve_dataset(dataset)
        check_method_format(cfg.method, ds.format)
        record = self._job_record(
            job_id or uuid.uuid4().hex[:12],
            cfg,
            ds,
            model=model_ref,
            max_attempts=attempts,
            priority=priority,
            idempotency_key=idempotency_key,
            tags=tags,
            note=note,
            signed={"resume_from": parent, "retry_of": _retry_of, "webhook": hook},
        )
        stored_id = self.store.create(record, message_for(self.huey, record["job_id"], priority))
        warn_if_waiting(stored_id, cfg, self.store.workers)
        return Job(stored_id, self)

    def _job_record(
        self,
        job_id: str,
        cfg: TrainConfig,
        ds: Dataset,
        *,
        model: dict[str, str] | None,
        max_attempts: int,
        priority: int,
        idempotency_key: str | None,
        tags: list[str],
        note: str | None,
        signed: dict[str, str | None],
    ) -> JobRecord:
        """A new job's record, queued and signed (when this client has a secret): all a worker
        needs to run it, and all a person needs to recognise it. ``signed``: the fields written
        only when set (spec.OPTIONAL_SIGNED_FIELDS): the job it continues, retries, reports to."""
        now = time.time()
        record: JobRecord = {
            "job_id": job_id,
            "status": statuses.QUEUED,
            "created_at": now,
            "queued_at": now,
            "max_attempts": max_attempts,
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
            "model": model,  # a local base-model folder uploaded to storage, or None
            "dataset": dataset_ref(ds),
            "dataset_profile": profile_digest(ds),
            "warnings": warning_messages(ds),
        }
        record.update({k: v for k, v in signed.items() if v})  # type: ignore[typeddict-item]
        secret = self.settings.queue_secret
        record["signature"] = sign(dict(record), secret) if secret else None
        return record

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
    ) -> list[JobStatus]:
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
        live = functools.cache(self.store.workers)  # read once, and only if a job needs them
        return [public_status(r, live) for r in records]

    def count_jobs(self, status: str | None = None) -> int:
        return self.store.count(status)

    def cancel(self, job_id: str) -> str:
        return self.store.request_cancel(job_id)

    def delete(self, job_id: str, *, force: bool = False) -> dict[str, Any]:
        """Remove a job's record, metrics, logs and run folder; what was freed. JobActive while it
        is queued or running, unless ``force`` (cancels it first)."""
        from ..cleanup import delete_job

        return delete_job(self, job_id, force=force)

    def gc(
        self, older_than: str | float, *, status: str | None = None, dry_run: bool = False
    ) -> list[dict[str, Any]]:
        """Delete ended jobs older than ``older_than`` (``30d``, ``12h`` or seconds), each row
        with the bytes freed; ``dry_run`` deletes nothing."""
        from ..cleanup import collect

        return collect(self, older_than, status=status, dry_run=dry_run)

    def download(self, job_id: str, dest: str | os.PathLike) -> Path:
        record = self.store.get(job_id)
        if record["status"] not in (statuses.COMPLETED, statuses.CANCELLED) or not record.get(
            "result"
        ):
            raise JobFailed(f"job {job_id} has no adapter to download (status {record['status']})")
        return self.storage.get_dir(Storage.run_parts(job_id, "adapter"), Path(dest).expanduser())

    def workers(self) -> list[WorkerInfo]:
        """The live workers' last heartbeats."""
        return cast(list[WorkerInfo], self.store.workers())

    def reap_if_orphaned(self, record: Mapping[str, Any]) -> bool:
        """An active job whose worker stopped heart-beating goes back to the queue (or fails after
        its last attempt) as soon as anyone looks, even when no worker is left to notice."""
        if record.get("worker") in {w["worker_id"] for w in self.store.workers()}:
            return False
        from ..queue import requeue_orphans

        return bool(requeue_orphans(self.store, self.huey, only=record["job_id"]))

    def health(self) -> Health:
        """Whether jobs can run now: the broker answers, how many workers listen, and which
        queued jobs no live worker can run (``waiting_jobs``, each with its reason)."""
        return health_of(self)

    def no_worker_message(self) -> str:
        where = f"the {self.settings.broker} queue {self.settings.queue_location}"
        if self.settings.redis_url:
            how = "on a GPU machine with FTKIT_REDIS_URL pointing at this queue"
        else:
            how = "in a terminal on this machine, or ftkit.start_local_worker()"
        return f"no worker is listening on {where}; start one with `ftkit worker` {how}"

    def start_local_worker(
        self, *, env: dict[str, str] | None = None, cpu_devices: int | None = None
    ) -> LocalWorker:
        """A detached ``ftkit worker`` on this machine with these settings, logging to a file in
        the per-user folder, so a laptop user need not leave the notebook. It runs in its own
        session: it outlives the kernel (stop it with ``LocalWorker.stop()``). Should it exit,
        ``Job.wait()`` and the monitor panel say so within a second, with its log's last lines.
        ``cpu_devices=2``: it trains on the CPU in two processes (a job with devices=2)."""
        return start_local_worker(self.settings, env, cpu_devices=cpu_devices)


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
