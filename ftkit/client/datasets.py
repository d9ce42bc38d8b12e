"""An uploaded data set as the client hands it out, the rules for storing one (its digest and its
stored file name), and what a job record keeps of it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ..core.records import DatasetRef
from ..core.rules import safe_name as plain_file_name
from ..errors import DatasetError
from ..storage import DATASET_META

# What a job record keeps of its data set's profile (the rest stays with the data set).
PROFILE_KEYS = (
    "rows",
    "format",
    "tokens",
    "over_max_seq_length",
    "tokens_per_epoch",
    "problem_counts",
    "pairs",
    "desirable",
    "undesirable",
)
MAX_WARNINGS = 20


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


def safe_name(name: str) -> str:
    """A data set's stored file name: a plain file name, nothing that climbs folders, and not the
    name of the metadata stored beside it."""
    if isinstance(name, str) and name.lower() == DATASET_META:  # also where names ignore case
        raise DatasetError(
            f"a data set cannot be stored as {name!r}: that name holds its metadata; "
            "rename the file, or pass another name, e.g. upload_dataset(path, name='train.json')"
        )
    try:
        return plain_file_name(name)
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


def looks_like_id(text: str) -> bool:
    """Whether a string given as a data set is an uploaded one's id (hex), not a file path."""
    return 8 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


def dataset_ref(ds: Dataset) -> DatasetRef:
    """What a job record names of its data set (the profile stays with the data set)."""
    return cast(DatasetRef, {k: v for k, v in ds.to_dict().items() if k != "profile"})


def profile_digest(ds: Dataset) -> dict[str, Any]:
    """What a job record keeps of its data set's profile: the counts, and the first warnings."""
    return {
        **{k: ds.profile.get(k) for k in PROFILE_KEYS},
        "warnings": ds.profile.get("warnings", [])[:MAX_WARNINGS],
        "sha256": ds.sha256,
    }


def warning_messages(ds: Dataset) -> list[str]:
    """The first of the data set's warnings, in words: they go into the job's report."""
    return [w.get("message") for w in ds.profile.get("warnings", [])][:MAX_WARNINGS]
