"""Data set formats: detect, validate with line numbers, profile, and normalize to the one shape
``render.py`` reads. One streaming pass, bounded memory; no heavy imports at module load."""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import DatasetError

FORMATS = ("alpaca", "chat", "sharegpt", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
PER_KIND_SHOWN = 5
PREVIEW_ROWS = 5


@dataclass
class Problem:
    line: int | None
    field: str | None
    kind: str
    message: str
    fix: str
    severity: str = "error"  # "error" blocks, "warning" does not

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}{f' [{self.field}]' if self.field else ''}: {self.message} (fix: {self.fix})"


@dataclass
class DatasetProfile:
    path: str
    file_kind: str
    format: str | None
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    tokens: dict[str, Any] = field(default_factory=dict)
    over_max_seq_length: int = 0
    tokens_per_epoch: int = 0
    preview: list[dict[str, Any]] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and self.rows > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        """Human text: the profile, then problems grouped by kind, first few of each with totals."""
        head = f"{Path(self.path).name}: {self.file_kind}, format {self.format or 'unknown'}, {self.rows} rows"
        lines = [head]
        if self.tokens:
            est = " (estimated)" if self.tokens.get("estimated") else ""
            lines.append(f"tokens per example: min {self.tokens['min']}, mean {self.tokens['mean']}, "
                         f"p95 {self.tokens['p95']}, max {self.tokens['max']}{est}; ~{self.tokens_per_epoch} per epoch")
        for title, items in (("errors", self.problems), ("warnings", self.warnings)):
            if not items:
                continue
            lines.append(f"{title}:")
            by_kind: dict[str, list[Problem]] = {}
            for p in items:
                by_kind.setdefault(p.kind, []).append(p)
            for kind, group in by_kind.items():
                total = self.problem_counts.get(kind, len(group))
                lines.append(f"  {kind} ({total}):")
                lines += [f"    {p}" for p in group[:PER_KIND_SHOWN]]
                if total > PER_KIND_SHOWN:
                    lines.append(f"    ... and {total - PER_KIND_SHOWN} more")
        return "\n".join(lines)


# -- reading ------------------------------------------------------------------------------------
def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
            ".txt": "txt"}.get(ext, "jsonl")


def iter_records(path: Path) -> Iterator[tuple[int, Any, Problem | None]]:
    """(line or row number, record, problem) for each record, streaming."""
    kind = _kind(path)
    if kind == "parquet":
        yield from _iter_parquet(path)
        return
    try:
        with _open_text(path) as f:
            if kind == "csv":
                yield from _iter_csv(f)
            elif kind == "txt":
                yield from _iter_txt(f)
            else:
                yield from _iter_json(f, array=(kind == "json"))
    except UnicodeDecodeError as exc:
        yield 0, None, Problem(None, None, "encoding", f"the file is not valid UTF-8 text ({exc.reason} at byte {exc.start} of a chunk)",
                               "save the file as UTF-8 (or check it is not a binary file)")


def _iter_json(f: io.TextIOBase, array: bool) -> Iterator[tuple[int, Any, Problem | None]]:
    """JSONL line by line; a JSON array decoded element by element (never json.load whole)."""
    first = ""
    buffered: list[str] = []
    for line in f:
        buffered.append(line)
        if line.strip():
            first = line.lstrip()[0]
            break
    if array or first == "[":
        yield from _iter_json_array(_chain(buffered, f))
        return
    for number, line in enumerate(_chain(buffered, f), start=1):
        if not line.strip():
            continue
        if "\0" in line:
            yield number, None, Problem(number, None, "binary", "binary bytes in a text file", "upload a JSONL/JSON/CSV/Parquet file")
            return
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, Problem(number, None, "invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}",
                                        "make each line one complete JSON object")


def _chain(first: list[str], rest: io.TextIOBase) -> Iterator[str]:
    yield from first
    yield from rest


def _iter_json_array(lines: Iterator[str]) -> Iterator[tuple[int, Any, Problem | None]]:
    """Decode ``[obj, obj, ...]`` one element at a time; memory holds about one record."""
    decoder = json.JSONDecoder()
    buf, pos, line, started = "", 0, 1, False  # ``line`` is the line number at buf[pos]

    def error(at: int, message: str, fix: str) -> tuple[int, None, Problem]:
        where = line + buf.count("\n", pos, at)
        return where, None, Problem(where, None, "invalid_json", message, fix)

    for chunk in lines:
        buf += chunk
        while True:
            skip = pos
            while skip < len(buf) and buf[skip] in " \t\r\n,":
                skip += 1
            line, pos = line + buf.count("\n", pos, skip), skip
            if pos >= len(buf):
                break
            if not started:
                if buf[pos] != "[":
                    yield error(pos, "a .json file must hold a JSON array of objects",
                                "wrap the records in [ ... ] or save them as JSONL")
                    return
                started, pos = True, pos + 1
                continue
            if buf[pos] == "]":
                return
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if "\n" in buf[exc.pos :].rstrip():  # text follows the error: not just a record cut by the chunk
                    yield error(exc.pos, f"invalid JSON: {exc.msg}", "fix the JSON at this line")
                    return
                break
            start = line
            line, pos = line + buf.count("\n", pos, end), end
            yield start, value, None
        buf, pos = buf[pos:], 0
    if started and buf.strip():
        yield error(len(buf), "the JSON array is not closed or its last record is cut off", "end the file with ]")


def _iter_csv(f: io.TextIOBase) -> Iterator[tuple[int, Any, Problem | None]]:
    import csv

    reader = csv.DictReader(f)
    for number, row in enumerate(reader, start=2):
        yield number, dict(row), None


def _iter_txt(f: io.TextIOBase) -> Iterator[tuple[int, Any, Problem | None]]:
    block: list[str] = []
    start = 1
    for number, line in enumerate(f, start=1):
        if line.strip():
            if not block:
                start = number
            block.append(line.rstrip("\n"))
        elif block:
            yield start, {"text": "\n".join(block)}, None
            block = []
    if block:
        yield start, {"text": "\n".join(block)}, None


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, Problem | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:
        yield 0, None, Problem(None, None, "invalid_file", f"not a readable Parquet file: {exc}", "re-export the file")
        return
    row = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, record, None


# -- formats ------------------------------------------------------------------------------------
def detect_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def _apply_columns(record: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    if not columns:
        return record
    out = dict(record)
    for canonical, theirs in columns.items():
        if theirs in record:
            out[canonical] = record[theirs]
    return out


def _text(content: Any) -> str | None:
    """Message content: a string, or a list of typed parts ({type: text, text|value})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                value = part.get("text", part.get("value"))
                if not isinstance(value, str):
                    return None
                parts.append(value)
            else:
                return None
        return "".join(parts)
    return None


def normalize(record: dict[str, Any], fmt: str, line: int | None = None) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The example in its normalized shape, or the problems that stop it."""
    def bad(field_: str | None, kind: str, message: str, fix: str) -> tuple[None, list[Problem]]:
        return None, [Problem(line, field_, kind, message, fix)]

    if fmt == "text":
        text = record.get("text")
        if not isinstance(text, str):
            return bad("text", "missing_field", "'text' must be a string", "give each record a 'text' string")
        if not text.strip():
            return bad("text", "empty_content", "empty text", "remove the empty record")
        return {"text": text}, []
    if fmt == "prompt_completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return bad("prompt" if not isinstance(prompt, str) else "completion", "missing_field",
                       "'prompt' and 'completion' must be strings", "give each record both strings")
        if not completion.strip():
            return bad("completion", "empty_content", "empty completion", "remove the record or fill it")
        return {"prompt": prompt, "completion": completion}, []
    if fmt == "alpaca":
        messages, problems = _alpaca_messages(record, line)
    elif fmt == "sharegpt":
        messages, problems = _sharegpt_messages(record, line)
    else:
        messages, problems = _chat_messages(record, line)
    if problems:
        return None, problems
    problems = _check_conversation(messages, line)
    if problems:
        return None, problems
    example: dict[str, Any] = {"messages": messages}
    if record.get("tools"):
        example["tools"] = record["tools"]
    return example, []


def _alpaca_messages(record: dict[str, Any], line: int | None) -> tuple[list[dict], list[Problem]]:
    instruction, inp, output = record.get("instruction"), record.get("input") or "", record.get("output")
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str):
            return [], [Problem(line, name, "missing_field", f"'{name}' must be a string", f"add an '{name}' string")]
        if not value.strip():
            return [], [Problem(line, name, "empty_content", f"empty '{name}'", f"fill '{name}' or remove the record")]
    messages: list[dict[str, Any]] = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for pair in record.get("history") or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            return [], [Problem(line, "history", "wrong_type", "'history' must be a list of [user, assistant] pairs",
                                "fix the history pairs")]
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{inp}" if str(inp).strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return messages, []


def _chat_messages(record: dict[str, Any], line: int | None) -> tuple[list[dict], list[Problem]]:
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        return [], [Problem(line, "messages", "missing_field", "'messages' must be a non-empty list", "add the conversation")]
    messages = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return [], [Problem(line, where, "wrong_type", "a message must be an object", "use {role, content}")]
        role = m.get("role")
        if role not in ROLES:
            return [], [Problem(line, f"{where}.role", "unknown_role", f"unknown role {role!r}",
                                f"use one of {', '.join(ROLES)}")]
        content = _text(m.get("content"))
        if content is None and m.get("tool_calls"):
            content = json.dumps(m["tool_calls"], ensure_ascii=False)
        if content is None:
            return [], [Problem(line, f"{where}.content", "wrong_type", "content must be a string or a list of text parts",
                                "use a string")]
        if not content.strip():
            return [], [Problem(line, f"{where}.content", "empty_content", f"empty {role} message", "fill or remove it")]
        msg: dict[str, Any] = {"role": role, "content": content}
        if "loss_weight" in m:
            weight = m["loss_weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                return [], [Problem(line, f"{where}.loss_weight", "wrong_type", "loss_weight must be a number", "use 0 or 1")]
            msg["loss_weight"] = float(weight)
        messages.append(msg)
    return messages, []


def _sharegpt_messages(record: dict[str, Any], line: int | None) -> tuple[list[dict], list[Problem]]:
    raw = record.get("conversations")
    if not isinstance(raw, list) or not raw:
        return [], [Problem(line, "conversations", "missing_field", "'conversations' must be a non-empty list",
                            "add the conversation")]
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(raw):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            return [], [Problem(line, where, "wrong_type", "a turn must be an object", "use {from, value}")]
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            return [], [Problem(line, f"{where}.from", "unknown_role", f"unknown speaker {turn.get('from')!r}",
                                f"use one of {', '.join(SHAREGPT_ROLES)}")]
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            return [], [Problem(line, f"{where}.value", "empty_content", "empty or missing 'value'", "fill or remove the turn")]
        messages.append({"role": role, "content": value})
    return messages, []


def _check_conversation(messages: list[dict[str, Any]], line: int | None) -> list[Problem]:
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        return [Problem(line, "messages", "no_user_turn", "the conversation has no user message",
                        "add the user's message before the assistant's answer")]
    if "assistant" not in roles:
        return [Problem(line, "messages", "no_assistant_turn", "the conversation has no assistant message",
                        "add the answer the model should learn")]
    if "system" in roles[1:]:
        return [Problem(line, "messages", "role_order", "a system message must come first", "move it to the start")]
    convo = [r for r in roles if r != "system"]
    if convo[0] not in ("user",):
        return [Problem(line, "messages", "role_order", f"the conversation starts with {convo[0]!r}, not 'user'",
                        "start with the user's message")]
    return []


# -- inspect ------------------------------------------------------------------------------------
def _count_tokens(example: dict[str, Any], tokenizer) -> tuple[int, bool]:
    text = example.get("text") or (example.get("prompt", "") + example.get("completion", "")) or " ".join(
        m["content"] for m in example.get("messages", []))
    if tokenizer is None:
        return max(1, math.ceil(len(text) / 4) + 4 * len(example.get("messages", []))), True
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 4 * len(example.get("messages", [])), False


def inspect_dataset(path: str | Path, *, format: str | None = None, columns: dict[str, str] | None = None,
                    tokenizer=None, max_seq_length: int = 2048) -> DatasetProfile:
    """Detect, validate and profile in one streaming pass. Bad data gives problems, not exceptions."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data set file not found: {path}")
    if format is not None and format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    profile = DatasetProfile(path=str(path), file_kind=_kind(path) + (".gz" if path.suffix == ".gz" else ""), format=format)
    lengths: list[int] = []
    estimated = True
    seen: dict[int, int] = {}
    formats_seen: dict[str, int] = {}

    def add(problem: Problem) -> None:
        target = profile.problems if problem.severity == "error" else profile.warnings
        count = profile.problem_counts.get(problem.kind, 0)
        profile.problem_counts[problem.kind] = count + 1
        if count < 50:
            target.append(problem)

    if path.stat().st_size == 0:
        add(Problem(None, None, "empty_file", "the file is empty", "upload a file with at least one example"))
        return profile
    with open(path, "rb") as f:
        head = f.read(8192)
    if path.suffix != ".gz" and _kind(path) != "parquet" and b"\0" in head:
        add(Problem(None, None, "binary", "this looks like a binary file, not text", "upload JSONL, JSON, CSV, Parquet or .txt"))
        return profile
    for line, record, problem in iter_records(path):
        if problem is not None:
            add(problem)
            if problem.kind in ("encoding", "binary", "invalid_file"):
                break
            continue
        if not isinstance(record, dict):
            add(Problem(line, None, "wrong_type", f"a record must be a JSON object, not {type(record).__name__}",
                        "make each record an object with named fields"))
            continue
        profile.rows += 1
        record = _apply_columns(record, columns)
        fmt = detect_format(record)
        if fmt is not None:
            formats_seen[fmt] = formats_seen.get(fmt, 0) + 1
        if profile.format is None:
            if fmt is None:
                add(Problem(line, None, "unknown_format", f"cannot tell the format from the fields {sorted(record)[:8]}",
                            "use messages / conversations / instruction+output / prompt+completion / text, or pass columns="))
                continue
            profile.format = fmt
        elif fmt is not None and fmt != profile.format and format is None:
            add(Problem(line, None, "mixed_formats", f"this record is {fmt}, but the file started as {profile.format}",
                        "keep one format per file"))
            continue
        example, problems = normalize(record, profile.format, line)
        for p in problems:
            add(p)
        if example is None:
            continue
        if len(profile.preview) < PREVIEW_ROWS:
            profile.preview.append(example)
        n, estimated = _count_tokens(example, tokenizer)
        lengths.append(n)
        if n > max_seq_length:
            profile.over_max_seq_length += 1
            add(Problem(line, None, "too_long", f"about {n} tokens, over max_seq_length={max_seq_length}: it will be truncated",
                        "raise max_seq_length or shorten the example", severity="warning"))
        key = hash(json.dumps(example, sort_keys=True))
        if key in seen:
            add(Problem(line, None, "duplicate", f"same example as line {seen[key]}", "remove duplicates", severity="warning"))
        else:
            seen[key] = line
    if not lengths and not profile.problems:
        add(Problem(None, None, "empty_file", "no examples in the file", "upload a file with at least one example"))
    if lengths:
        ordered = sorted(lengths)
        profile.tokens = {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1),
                          "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
                          "max": ordered[-1], "estimated": estimated}
        profile.tokens_per_epoch = sum(min(n, max_seq_length) for n in lengths)
    return profile


def validate_dataset(path: str | Path, **kwargs: Any) -> DatasetProfile:
    """inspect_dataset, raising DatasetError (with every problem) when the data cannot be used."""
    profile = inspect_dataset(path, **kwargs)
    if not profile.ok:
        raise DatasetError(profile.summary(), profile.problems)
    return profile


def read_examples(path: str | Path, *, format: str, columns: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Normalized examples, streaming; records with problems are skipped (validation reported them)."""
    for line, record, problem in iter_records(Path(path)):
        if problem is None and isinstance(record, dict):
            example, _ = normalize(_apply_columns(record, columns), format, line)
            if example is not None:
                yield example
