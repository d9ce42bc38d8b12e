"""The job spec: what a client asked for, in one canonical form.

A client builds it at submit and, with ``FTKIT_QUEUE_SECRET`` set, signs it. A worker rebuilds it
from the job record, which anyone with the Redis password can edit, and verifies the signature
before it stages anything. Every value a worker takes from a record passes through here: the job
id (used in paths), the data set reference (used in paths), the configuration (whose field names
become notebook parameters) and the base model (a folder the worker reads).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .core.rules import (
    DATASET_FORMATS,
    SHA256,
    check_webhook,
    is_job_id,
    method_format_mismatch,
    safe_name,
)
from .errors import ConfigError, FtkitError
from .storage import check_model_ref

# What a client signs at submit: everything that decides what a worker reads and trains.
SIGNED_FIELDS = (
    "job_id",
    "dataset",
    "model",
    "config",
    "submitted_by",
    "created_at",
    "max_attempts",
)
# Signed when present: a record without them signs the same bytes as before they existed. The
# webhook is signed too: whoever can write to Redis cannot send a job's end somewhere else.
OPTIONAL_SIGNED_FIELDS = ("resume_from", "retry_of", "webhook")


class RecordRefused(FtkitError, ValueError):
    """A job record a worker will not run: tampered with, malformed, or asking for a forbidden path."""


def looks_like_path(base_model: str) -> bool:
    """A local folder rather than a hub id (org/name)."""
    return base_model.startswith((".", "/", "~")) or Path(base_model).is_absolute()


def check_model_path(base_model: str, roots: tuple[str, ...]) -> None:
    """A local base model must lie under one of ``roots`` (FTKIT_ALLOWED_MODEL_DIRS) when they are
    set; symbolic links are followed first, so a link cannot point out of them."""
    if not roots or not looks_like_path(base_model):
        return
    real = Path(base_model).expanduser().resolve()
    if not any(real.is_relative_to(Path(r).expanduser().resolve()) for r in roots):
        raise ConfigError(
            f"base_model {base_model!r} is outside FTKIT_ALLOWED_MODEL_DIRS ({', '.join(roots)})"
        )


@dataclass(frozen=True)
class DatasetRef:
    """Which uploaded data set a job trains on: content hash, stored file name, format, columns."""

    sha256: str
    name: str
    format: str
    columns: dict[str, str] | None = None

    @classmethod
    def parse(cls, value: Any) -> DatasetRef:
        if not isinstance(value, dict):
            raise RecordRefused("the job's data set reference is not an object")
        sha256, fmt, columns = value.get("sha256"), value.get("format"), value.get("columns")
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
            raise RecordRefused(f"data set sha256 {sha256!r} is not a sha256 hex digest")
        try:
            name = safe_name(value.get("name"))
        except ValueError as exc:
            raise RecordRefused(str(exc)) from exc
        if fmt not in DATASET_FORMATS:
            raise RecordRefused(
                f"data set format {fmt!r} is not one of {', '.join(DATASET_FORMATS)}"
            )
        if columns is not None and not (
            isinstance(columns, dict)
            and len(columns) <= 50
            and all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items())
        ):
            raise RecordRefused("the data set's column mapping is not a mapping of names to names")
        return cls(sha256=sha256, name=name, format=fmt, columns=columns or None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "name": self.name,
            "format": self.format,
            "columns": self.columns,
        }


@dataclass(frozen=True)
class JobSpec:
    """A job record's signed fields, validated: what a worker may act on."""

    job_id: str
    dataset: DatasetRef
    config: TrainConfig
    submitted_by: str
    created_at: float
    model: dict[str, str] | None = None  # an uploaded base-model folder: {"sha256", "name"}
    resume_from: str | None = (
        None  # the job whose last checkpoint (else adapter) this one starts from
    )
    retry_of: str | None = None  # the failed or cancelled job this one runs again (for people)
    webhook: str | None = None  # where the job's end is announced (ftkit.webhooks)

    def with_base_model(self, path: Path) -> JobSpec:
        """The spec as a worker runs it: the base model read from the folder it staged."""
        return dataclasses.replace(self, config=self.config.replace(base_model=str(path)))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> JobSpec:
        """Rebuild the spec from a record read from the job store, refusing anything malformed:
        the configuration goes through ``TrainConfig.from_dict`` (unknown keys, bad values)."""
        job_id = record.get("job_id")
        if not isinstance(job_id, str) or not is_job_id(job_id):
            raise RecordRefused(f"job id {job_id!r} is not 12 hex characters")
        config = record.get("config")
        if not isinstance(config, dict):
            raise RecordRefused("the job's configuration is not an object")
        try:
            train_config = TrainConfig.from_dict(config)
        except (ConfigError, TypeError) as exc:
            raise RecordRefused(f"the job's configuration is invalid: {exc}") from exc
        submitted_by, created_at = record.get("submitted_by"), record.get("created_at")
        if not isinstance(submitted_by, str) or len(submitted_by) > 200:
            raise RecordRefused("the job's submitter is not a short string")
        if isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
            raise RecordRefused("the job's creation time is not a number")
        model = record.get("model")
        if model is not None:
            try:
                model = check_model_ref(model)
            except FtkitError as exc:
                raise RecordRefused(f"the job's model reference is invalid: {exc}") from exc
        resume_from, retry_of = record.get("resume_from"), record.get("retry_of")
        if resume_from is not None and (not is_job_id(resume_from) or resume_from == job_id):
            raise RecordRefused(f"the job it continues, {str(resume_from)[:40]!r}, is not a job id")
        if retry_of is not None and (not is_job_id(retry_of) or retry_of == job_id):
            raise RecordRefused(f"the job it retries, {str(retry_of)[:40]!r}, is not a job id")
        try:
            webhook = check_webhook(record.get("webhook"))
        except ConfigError as exc:
            raise RecordRefused(f"the job's {exc}") from exc
        dataset = DatasetRef.parse(record.get("dataset"))
        mismatch = method_format_mismatch(train_config.method, dataset.format)
        if mismatch:
            raise RecordRefused(f"the job's method does not fit its data set: {mismatch}")
        return cls(
            job_id=job_id,
            dataset=dataset,
            config=train_config,
            submitted_by=submitted_by,
            created_at=float(created_at),
            model=model,
            resume_from=resume_from,
            retry_of=retry_of,
            webhook=webhook,
        )


def signed_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: the record's signed fields as sorted-key JSON. Read from the raw
    record, before any parsing, so a tampered record fails its signature whatever it holds."""
    body = {name: record.get(name) for name in SIGNED_FIELDS}
    body.update({n: record[n] for n in OPTIONAL_SIGNED_FIELDS if record.get(n) is not None})
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        raise RecordRefused(f"the job record cannot be read: {exc}") from exc


def sign(record: Mapping[str, Any], secret: str) -> str:
    return hmac.new(secret.encode(), signed_bytes(record), hashlib.sha256).hexdigest()


def verify_signature(record: Mapping[str, Any], secret: str | None) -> None:
    """With a secret, the record must carry the signature its client made at submit."""
    if not secret:
        return
    signature = record.get("signature")
    if not isinstance(signature, str) or not signature:
        raise RecordRefused(
            "job record is not signed: this worker requires FTKIT_QUEUE_SECRET, and the job was "
            "submitted by a client without it (set the same FTKIT_QUEUE_SECRET where you submit)"
        )
    if not hmac.compare_digest(signature, sign(record, secret)):
        raise RecordRefused(
            "job record changed after submit (or was signed with another FTKIT_QUEUE_SECRET): "
            "signature does not match"
        )


def secret_fingerprint(secret: str | None) -> str | None:
    """What a worker publishes about its secret: enough to tell two secrets apart, not to sign."""
    if not secret:
        return None
    return hmac.new(secret.encode(), b"ftkit queue secret fingerprint", hashlib.sha256).hexdigest()[
        :16
    ]
