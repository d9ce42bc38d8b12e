"""A ``.env`` file's variables, read as the settings read them (ftkit/config.py)."""

from __future__ import annotations

import os
from pathlib import Path


def read_dotenv(path: str | os.PathLike = ".env") -> dict[str, str]:
    """Parse a ``.env`` file (KEY=VALUE lines, # comments, optional quotes, optional ``export``)."""
    values: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        return values
    for raw in p.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values
