"""Text from records and errors, made fit for an HTTP client or the page.

Records and exception messages are written for a notebook on the server's machine: they may
carry ANSI colour codes (a worker's traceback) and absolute paths of the server's storage,
scratch, home and working folders. Over HTTP those paths tell a stranger how the server is laid
out, and the codes show as garbage, so both go: each known folder becomes a short placeholder.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def plain(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return ANSI.sub("", text)


class Redactor:
    """Replaces the server's own folders in text, longest first (a folder inside another is
    named by the inner placeholder)."""

    def __init__(self, storage: str, scratch: str):
        places = {
            "<storage>": storage if "://" not in storage else "",
            "<scratch>": scratch,
            "<python>": sys.prefix,
            "<tmp>": tempfile.gettempdir(),
            "<cwd>": os.getcwd(),
            "~": str(Path.home()),
        }
        found: list[tuple[str, str]] = []
        for name, folder in places.items():
            if not folder or folder == "/":
                continue
            expanded = str(Path(folder).expanduser())
            for form in {expanded, str(Path(expanded).resolve())}:
                found.append((form.rstrip("/"), name))
        self.places = sorted(set(found), key=lambda p: -len(p[0]))

    def text(self, value: str) -> str:
        value = plain(value)
        for folder, name in self.places:
            value = value.replace(folder, name)
        return value

    def deep(self, value: Any) -> Any:
        """Every string in a JSON-like value, redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        return value
