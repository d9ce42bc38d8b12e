"""What is wrong with a data set, and where: ``Problem``, the ``DatasetProfile`` that collects them,
the limits they enforce, and the checks of single values that every format shares."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
# The field that gives each format away, in the order they are tried (KTO's unpaired examples
# are told by a "label" beside a "completion": formats.detect_format).
FORMAT_KEYS = (
    ("chosen", "preference"),
    ("rejected", "preference"),
    ("preferred_output", "preference"),
    ("non_preferred_output", "preference"),
    ("messages", "chat"),
    ("conversations", "sharegpt"),
    ("instruction", "alpaca"),
    ("output", "alpaca"),
    ("prompt", "prompt_completion"),
    ("completion", "prompt_completion"),
    ("text", "text"),
)
CANONICAL_COLUMNS = frozenset(
    ["instruction", "input", "output", "system", "history", "messages", "conversations", "tools"]
    + ["prompt", "completion", "text", "chosen", "rejected", "label"]
)
SHOWN_PER_KIND = 5  # problems of one kind that summary() prints
KEPT_PER_KIND = 20  # problems of one kind kept in memory; problem_counts has the totals
PREVIEW_ROWS = 5
MAX_MESSAGES = 512  # per conversation: render.py renders each prefix to find turns (quadratic)
MAX_DEPTH = 100  # nesting of [ and {: deeper records are refused, later code recurses over them
PREVIEW_CHARS = 1000  # a preview's texts are cut here: the profile is stored with the data set


@dataclass
class Problem:
    """One thing wrong with a data set, where it is and how to fix it. Errors block, warnings do not."""

    line: int | None
    field: str | None
    kind: str
    message: str
    fix: str
    severity: str = "error"  # "error" | "warning"

    def describe(self, unit: str = "line") -> str:
        where = f"{unit} {self.line}" if self.line else "file"
        return f"{where}{f' [{self.field}]' if self.field else ''}: {self.message}. Fix: {self.fix}"

    __str__ = describe


@dataclass
class DatasetProfile:
    """What one pass over a data set found: its shape, its problems, and its size in tokens."""

    path: str
    file_kind: str
    format: str | None
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    tokens: dict[str, Any] = field(default_factory=dict)  # min, mean, p95, max, estimated
    over_max_seq_length: int = 0
    tokens_per_epoch: int = 0
    preview: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    max_seq_length: int = 2048
    problem_counts: dict[str, int] = field(default_factory=dict)  # totals per kind
    pairs: int = 0  # preference: pairs that can be trained on
    desirable: int = 0  # unpaired_preference (KTO): answers labelled true, and false
    undesirable: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: records from Parquet can hold dates or bytes, shown as text."""
        return json.loads(json.dumps({**asdict(self), "ok": self.ok}, default=str))

    def summary(self) -> str:
        """The profile, then problems grouped by kind: the first few of each, with totals."""
        lines = [self._headline()]
        if self.tokens:
            lines.append(self._token_line())
        unit = "row" if self.file_kind.startswith("parquet") else "line"
        for title, items in (
            ("errors", self.problems),
            ("warnings (training goes ahead)", self.warnings),
        ):
            if items:
                lines.append(f"{title}:")
                lines += self._grouped(items, unit)
        return "\n".join(lines)

    def _headline(self) -> str:
        errors = sum(self.problem_counts[kind] for kind in {p.kind for p in self.problems})
        verdict = f"{errors} error{'s' * (errors != 1)}: cannot be used yet" if errors else "ready"
        fmt = self.format or "unknown format"
        counts = ""
        if self.format == "preference":
            counts = f" ({self.pairs} pairs)"
        elif self.format == "unpaired_preference":
            counts = f" ({self.desirable} desirable, {self.undesirable} undesirable)"
        return (
            f"{Path(self.path).name}: {self.file_kind}, {fmt}, {self.rows} rows{counts}, {verdict}"
        )

    def _token_line(self) -> str:
        t = self.tokens
        how = " (estimated: ~4 characters a token)" if t["estimated"] else ""
        what = "tokens per example"
        if self.format in ("preference", "unpaired_preference"):
            what += " (a prompt with its longer answer)"
        return (
            f"{what}: min {t['min']}, mean {t['mean']}, p95 {t['p95']}, max {t['max']}{how}; "
            f"{self.over_max_seq_length} over max_seq_length {self.max_seq_length}; "
            f"~{self.tokens_per_epoch} training tokens per epoch"
        )

    def _grouped(self, items: list[Problem], unit: str) -> list[str]:
        by_kind: dict[str, list[Problem]] = {}
        for problem in items:
            by_kind.setdefault(problem.kind, []).append(problem)
        lines = []
        for kind, group in by_kind.items():
            total = self.problem_counts.get(kind, len(group))
            lines.append(f"  {kind} ({total}):")
            lines += [f"    {p.describe(unit)}" for p in group[:SHOWN_PER_KIND]]
            if total > SHOWN_PER_KIND:
                lines.append(f"    ... and {total - SHOWN_PER_KIND} more")
        return lines


# -- reading: (line, record, problem) events from any file kind ------------------------------------
Event = tuple[int | None, Any, Problem | None]


def _unreadable(line: int | None, why: str) -> Problem:
    return Problem(
        line,
        None,
        "unreadable_file",
        why,
        "re-export the file (JSONL, JSON, CSV or Parquet, optionally .gz)",
    )


def _binary(line: int | None) -> Problem:
    return Problem(
        line,
        None,
        "binary_file",
        "this is a binary file, not text",
        "upload JSONL, JSON, CSV, Parquet or .txt (a spreadsheet: save it as CSV UTF-8)",
    )


def _line_too_long(line: int, limit: int) -> Problem:
    return Problem(
        line,
        None,
        "line_too_long",
        f"the line is over {limit >> 20} MB; it was not read",
        "shorten or split the example: training truncates it to max_seq_length tokens anyway",
    )


def _element_too_long(line: int, limit: int) -> Problem:
    return Problem(
        line,
        None,
        "element_too_long",
        f"the array element starting here is over {limit >> 20} MB; the rest of the file was "
        "not checked",
        "shorten or split the example: training truncates it to max_seq_length tokens anyway",
    )


def _not_utf8(line: int, exc: UnicodeDecodeError) -> Problem:
    byte = exc.object[exc.start]
    return Problem(
        line,
        None,
        "not_utf8",
        f"byte 0x{byte:02x} (at byte {exc.start + 1} of the line) is not UTF-8 text",
        "save the file as UTF-8 (a spreadsheet: 'CSV UTF-8'; Python: encoding='utf-8')",
    )


def _invalid_json(line: int, message: str, fix: str) -> Problem:
    return Problem(line, None, "invalid_json", f"invalid JSON: {message}", fix)


def _shallow(line: int, record: Any, text: str) -> Event:
    """The record, or a problem when it nests deeper than MAX_DEPTH (counted only when its text
    has that many brackets at all, which almost no record has)."""
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth_over(record, MAX_DEPTH):
        return line, None, _too_deep(line)
    return line, record, None


def _depth_over(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest deeper than limit; without recursion, so any depth is safe."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return False


def _too_deep(line: int | None, name: str | None = None) -> Problem:
    return Problem(
        line,
        name,
        "too_deep",
        f"the JSON nests [ and {{ more than {MAX_DEPTH} levels deep",
        "write each example as a flat object: messages are a list of {role, content} objects",
    )


# -- validating and normalizing one record ---------------------------------------------------------
Found = tuple[dict[str, Any] | None, list[Problem]]


def _too_many_turns(line: int | None, turns: int) -> Problem:
    return Problem(
        line,
        None,
        "too_many_turns",
        f"{turns:,} messages in one conversation, more than {MAX_MESSAGES} (finding each turn "
        "for the label mask costs the square of the turns)",
        f"split it into conversations of at most {MAX_MESSAGES} messages",
    )


def _string(
    record: dict[str, Any],
    name: str,
    line: int | None,
    *,
    required: bool = True,
    may_be_empty: bool = False,
) -> tuple[str, list[Problem]]:
    value = record.get(name)
    if value is None:
        if not required:
            return "", []
        return "", [
            Problem(
                line, name, "missing_field", f"no '{name}' field", f"add '{name}' to every record"
            )
        ]
    if not isinstance(value, str):
        return "", [
            Problem(
                line,
                name,
                "wrong_type",
                f"'{name}' is {type(value).__name__}, not text",
                f"make '{name}' a string",
            )
        ]
    if required and not may_be_empty and not value.strip():
        return "", [
            Problem(
                line,
                name,
                "empty_content",
                f"'{name}' is empty",
                f"fill '{name}' or remove the record",
            )
        ]
    return value, []


def _structured(record: dict[str, Any], name: str, line: int | None) -> tuple[Any, list[Problem]]:
    """A list field; CSV and Parquet string columns may hold it as JSON text."""
    value = record.get(name)
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        text = value
        try:
            value = json.loads(text)
            if _shallow(0, value, text)[2] is not None:
                return None, [_too_deep(line, name)]
        except RecursionError:
            return None, [_too_deep(line, name)]
        except json.JSONDecodeError as exc:
            return None, [
                Problem(
                    line,
                    name,
                    "wrong_type",
                    f"'{name}' holds text that is not valid JSON ({exc.msg})",
                    f"make '{name}' a list",
                )
            ]
    return value, []


def _not_a_conversation(line: int | None, name: str, value: Any, shape: str) -> Problem:
    if value is None:
        return Problem(line, name, "missing_field", f"no '{name}' field", f"add '{name}': {shape}")
    if isinstance(value, list):
        return Problem(
            line,
            name,
            "empty_content",
            f"'{name}' is empty",
            "remove the record or add the conversation",
        )
    return Problem(
        line,
        name,
        "wrong_type",
        f"'{name}' is {type(value).__name__}, not a list",
        f"write it as {shape}",
    )


def _unknown_role(line: int | None, where: str, role: Any, known: tuple[str, ...]) -> Problem:
    return Problem(
        line, where, "unknown_role", f"unknown role {role!r}", f"use one of {', '.join(known)}"
    )
