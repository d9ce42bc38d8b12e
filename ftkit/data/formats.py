"""Format detection, column mappings and normalization of one record to the shape ``render`` reads;
``read_examples`` streams a file's normalized examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.rules import DATASET_FORMATS
from ..errors import DatasetError
from .conversations import _alpaca, _chat, _sharegpt
from .preferences import _pair, _unpaired
from .problems import (
    CANONICAL_COLUMNS,
    FORMAT_KEYS,
    MAX_MESSAGES,
    Found,
    _string,
    _too_many_turns,
)
from .readers import _readable_file, records, sniff


def read_examples(
    path: str | Path, *, format: str, columns: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Normalized examples, streaming. Records with errors are skipped: validation reported them."""
    path = _readable_file(path)
    _check_arguments(format, columns)
    source, problem = sniff(path)
    if problem is not None:
        return
    for line, record, problem in records(source):
        if problem is None and isinstance(record, dict):
            example, _ = normalize(_renamed(record, columns), format, line)
            if example is not None:
                yield example


def detect_format(record: Any) -> str | None:
    """The format a record's fields give away, or None."""
    if isinstance(record, dict):
        if "label" in record and "completion" in record:
            return "unpaired_preference"
        for key, fmt in FORMAT_KEYS:
            if key in record:
                return fmt
    return None


def checked_columns(columns: Any) -> dict[str, str]:
    """A column mapping ({ftkit's name: your column}) as a user gives it or a job record holds it:
    a dict of text to text whose keys are ftkit's names; else DatasetError saying what is wrong."""
    if columns is None:
        return {}
    if not isinstance(columns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in columns.items()
    ):
        raise DatasetError(
            "columns= must map ftkit's field names to your column names, as text, e.g. "
            f'{{"instruction": "question", "output": "answer"}}; got {str(columns)[:200]}'
        )
    unknown = sorted(set(columns) - CANONICAL_COLUMNS)
    if unknown:
        raise DatasetError(
            f"columns= maps unknown field(s) {', '.join(unknown)}: its keys are ftkit's names "
            f"({', '.join(sorted(CANONICAL_COLUMNS))}) and its values your column names"
        )
    return dict(columns)


def _check_arguments(format: str | None, columns: dict[str, str] | None) -> None:
    if format is not None and format not in DATASET_FORMATS:
        raise DatasetError(f"unknown format {format!r}; use one of {', '.join(DATASET_FORMATS)}")
    checked_columns(columns)


def _renamed(record: Any, columns: dict[str, str] | None) -> Any:
    """The record with the user's columns under ftkit's names (columns maps ours -> theirs)."""
    if not columns or not isinstance(record, dict):
        return record
    out = dict(record)
    for canonical, theirs in columns.items():
        if theirs in out:
            out[canonical] = out.pop(theirs)
    return out


def normalize(record: dict[str, Any], format: str, line: int | None = None) -> Found:
    """The record in its normalized shape (None when it has errors), and its problems."""
    example, problems = NORMALIZERS[format](record, line)
    turns = len(example["messages"]) if example and "messages" in example else 0
    if turns > MAX_MESSAGES:
        problems = problems + [_too_many_turns(line, turns)]
    if any(p.severity == "error" for p in problems):
        return None, problems
    return example, problems


def _text_record(record: dict[str, Any], line: int | None) -> Found:
    text, problems = _string(record, "text", line)
    return {"text": text}, problems


def _prompt_completion(record: dict[str, Any], line: int | None) -> Found:
    prompt, problems = _string(record, "prompt", line, may_be_empty=True)
    completion, more = _string(record, "completion", line)
    return {"prompt": prompt, "completion": completion}, problems + more


NORMALIZERS = {
    "alpaca": _alpaca,
    "chat": _chat,
    "sharegpt": _sharegpt,
    "prompt_completion": _prompt_completion,
    "text": _text_record,
    "preference": _pair,
    "unpaired_preference": _unpaired,
}
