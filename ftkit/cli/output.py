"""How the command line prints: JSON, a key-value listing, or a table of rows."""

from __future__ import annotations

import json
from typing import Any

JOB_COLUMNS = [
    "job_id",
    "status",
    "progress",
    "current_step",
    "total_steps",
    "loss",
    "created_at",
    "worker",
]
SWEEP_COLUMNS = ["sweep_id", "created_at", "mode", "swept", "runs", "dataset", "tags"]
LOSSES = ("loss", "final_loss", "eval_loss")


def print_value(value: Any, as_json: bool) -> None:
    """A dict as aligned ``key  value`` lines, a list as a table, anything else (or --json) as JSON."""
    if as_json or not isinstance(value, (dict, list)):
        print(json.dumps(value, indent=2, default=str) if not isinstance(value, str) else value)
    elif isinstance(value, dict):
        width = max((len(k) for k in value), default=0)
        for k, v in value.items():
            print(
                f"{k:<{width}}  {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}"
            )
    else:
        print_table(value)


def print_table(rows: list[dict[str, Any]], cols: list[str] = JOB_COLUMNS) -> None:
    cells = [[_text(c, r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _text(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in LOSSES and isinstance(value, (int, float)):
        return f"{value:.4f}"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def human_size(n: int) -> str:
    """Bytes for a person: ``512 B``, ``1.5 KB``, ``2.0 GB``."""
    if n < 1024:
        return f"{n} B"
    power = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**power:.1f} {('KB', 'MB', 'GB')[power - 1]}"
