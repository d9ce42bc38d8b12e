"""``ftkit validate``: check a data set file here, before anything is uploaded or queued."""

from __future__ import annotations

import argparse
import json


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the data set's profile (or its problems); exit 1 when it would be refused."""
    from ..data import inspect_dataset

    columns = _columns(args.columns)
    profile = inspect_dataset(
        args.file, format=args.format, columns=columns, max_seq_length=args.max_seq_length
    )
    print(json.dumps(profile.to_dict(), indent=2, default=str) if args.json else profile.summary())
    return 0 if profile.ok else 1


def _columns(text: str | None) -> dict[str, str] | None:
    """--columns '{"instruction": "question"}': JSON, checked as upload_dataset(columns=) checks it."""
    from ..data import checked_columns
    from ..errors import DatasetError

    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"--columns is not valid JSON ({exc.msg} at character {exc.pos + 1}): write it as "
            """'{"instruction": "question", "output": "answer"}' (double quotes inside single)"""
        ) from None
    return checked_columns(value)
