"""Data set formats: detect, validate with line numbers, profile, and normalize to the one shape
``render.py`` reads.

One streaming pass in bounded memory: files are read line by line (a JSON array element by element),
never loaded whole. Bad data never raises; it comes back as ``Problem``s, each with its line (or
Parquet row), field and fix. Nothing heavy is imported at module load (pyarrow only for Parquet, a
tokenizer only when one is passed), so the notebook client stays light.

Normalized shapes, what ``read_examples`` yields and ``render.tokenize_example`` takes:

    alpaca, chat, sharegpt  {"messages": [{"role", "content", "loss_weight"?, "tool_calls"?}], "tools"?}
    prompt_completion       {"prompt": str, "completion": str}
    text                    {"text": str}
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import math
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from .errors import DatasetError, require

FORMATS = ("alpaca", "chat", "sharegpt", "prompt_completion", "text")
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
# The field that gives each format away, in the order they are tried.
FORMAT_KEYS = (
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
    + ["prompt", "completion", "text"]
)
SHOWN_PER_KIND = 5  # problems of one kind that summary() prints
KEPT_PER_KIND = 20  # problems of one kind kept in memory; problem_counts has the totals
PREVIEW_ROWS = 5
SNIFF_BYTES = 8192
ARRAY_PIECE_BYTES = 1 << 20  # a minified JSON array is one huge line: read it in pieces
ARRAY_CHUNK_CHARS = 1 << 16  # decode a JSON array once this much text has arrived
MAX_RECORD_CHARS = 64 << 20  # past this a JSON error is not a record cut by the chunk
GZIP_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"PAR1"
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
EXTENSIONS.update({".txt": "txt", ".parquet": "parquet"})


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
        return f"{Path(self.path).name}: {self.file_kind}, {fmt}, {self.rows} rows, {verdict}"

    def _token_line(self) -> str:
        t = self.tokens
        how = " (estimated: ~4 characters a token)" if t["estimated"] else ""
        return (
            f"tokens per example: min {t['min']}, mean {t['mean']}, p95 {t['p95']}, max {t['max']}{how}; "
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


# -- public entry points ---------------------------------------------------------------------------
def inspect_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    tokenizer: Any = None,
    max_seq_length: int = 2048,
) -> DatasetProfile:
    """Detect, validate and profile in one streaming pass. Bad data gives problems, not exceptions;
    only a missing or unreadable path (or a wrong argument) raises DatasetError."""
    path = _readable_file(path)
    _check_arguments(format, columns)
    source, problem = _sniff(path)
    scan = _Scan(
        DatasetProfile(str(path), source.label, format, max_seq_length=max_seq_length),
        columns,
        tokenizer,
    )
    if problem is not None:
        scan.add(problem)
        return scan.finish()
    for line, record, problem in _records(source):
        if problem is not None:
            scan.add(problem)
        else:
            scan.record(line, _renamed(record, columns))
    return scan.finish()


def validate_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    tokenizer: Any = None,
    max_seq_length: int = 2048,
) -> DatasetProfile:
    """inspect_dataset, raising DatasetError (its summary, and every problem kept) when not ok."""
    profile = inspect_dataset(
        path, format=format, columns=columns, tokenizer=tokenizer, max_seq_length=max_seq_length
    )
    if not profile.ok:
        raise DatasetError(profile.summary(), profile.problems)
    return profile


def read_examples(
    path: str | Path, *, format: str, columns: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Normalized examples, streaming. Records with errors are skipped: validation reported them."""
    path = _readable_file(path)
    _check_arguments(format, columns)
    source, problem = _sniff(path)
    if problem is not None:
        return
    for line, record, problem in _records(source):
        if problem is None and isinstance(record, dict):
            example, _ = normalize(_renamed(record, columns), format, line)
            if example is not None:
                yield example


def detect_format(record: Any) -> str | None:
    """The format a record's fields give away, or None."""
    if isinstance(record, dict):
        for key, fmt in FORMAT_KEYS:
            if key in record:
                return fmt
    return None


def _readable_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"data set file not found: {path}")
    try:
        with open(path, "rb"):
            return path
    except OSError as exc:
        raise DatasetError(f"cannot read the data set file {path}: {exc.strerror}") from exc


def _check_arguments(format: str | None, columns: dict[str, str] | None) -> None:
    if format is not None and format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    unknown = sorted(set(columns or {}) - CANONICAL_COLUMNS)
    if unknown:
        raise DatasetError(
            f"columns= maps unknown field(s) {', '.join(unknown)}: its keys are ftkit's names "
            f"({', '.join(sorted(CANONICAL_COLUMNS))}) and its values your column names"
        )


def _renamed(record: Any, columns: dict[str, str] | None) -> Any:
    """The record with the user's columns under ftkit's names (columns maps ours -> theirs)."""
    if not columns or not isinstance(record, dict):
        return record
    out = dict(record)
    for canonical, theirs in columns.items():
        if theirs in out:
            out[canonical] = out.pop(theirs)
    return out


# -- reading: (line, record, problem) events from any file kind ------------------------------------
Event = tuple[int | None, Any, Problem | None]


@dataclass(frozen=True)
class _Source:
    path: Path
    kind: str  # jsonl | json (an array) | csv | tsv | txt | parquet
    gzipped: bool

    @property
    def label(self) -> str:
        return self.kind + (".gz" if self.gzipped else "")

    def open(self) -> io.BufferedIOBase:
        return gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")


def _sniff(path: Path) -> tuple[_Source, Problem | None]:
    """What the file holds, judged by its first bytes as well as its name, or why it cannot be read."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = EXTENSIONS.get(suffixes[-1] if suffixes else "", "jsonl")
    source = _Source(path, kind, gzipped)
    try:
        with source.open() as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        return source, _unreadable(None, f"cannot decompress it ({exc})")
    if head.startswith(PARQUET_MAGIC) or kind == "parquet":
        return replace(source, kind="parquet"), None
    head = head.removeprefix(codecs.BOM_UTF8)
    if not head.strip():
        return source, Problem(
            None, None, "empty_file", "the file is empty", "upload a file with at least one example"
        )
    if b"\0" in head:
        return source, _binary(None)
    if kind == "jsonl" and head.lstrip()[:1] == b"[":
        return replace(source, kind="json"), None
    return source, None


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


def _records(source: _Source) -> Iterator[Event]:
    """Every record with its line (or row) number, and every problem met on the way."""
    try:
        if source.kind == "parquet":
            yield from _parquet_records(source)
            return
        with source.open() as raw:
            piece = ARRAY_PIECE_BYTES if source.kind == "json" else -1
            lines = _decoded_lines(raw, piece)
            if source.kind in ("csv", "tsv"):
                yield from _csv_records(lines, "\t" if source.kind == "tsv" else ",")
            elif source.kind == "txt":
                yield from _txt_records(lines)
            elif source.kind == "json":
                yield from _json_array_records(lines)
            else:
                yield from _jsonl_records(lines)
    except (OSError, EOFError, zlib.error) as exc:  # a gzip stream cut short or corrupt
        yield None, None, _unreadable(None, f"reading stopped: {exc}")


def _decoded_lines(
    raw: io.BufferedIOBase, piece_bytes: int = -1
) -> Iterator[tuple[int, str, Problem | None]]:
    """(line number, text, problem) for each line. Bytes that are not UTF-8 become U+FFFD and a
    problem naming the line. With piece_bytes, a longer line comes in pieces (same number), so one
    huge line never has to fit in memory at once."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    number = 1
    for piece in iter(partial(raw.readline, piece_bytes), b""):
        if b"\0" in piece:
            yield number, "", _binary(number)
            return
        try:
            yield number, decoder.decode(piece), None
        except UnicodeDecodeError as exc:
            yield number, _replacing(decoder, piece), _not_utf8(number, exc)
        number += piece.endswith(b"\n")
    try:
        decoder.decode(b"", True)
    except UnicodeDecodeError as exc:
        yield number, "", _not_utf8(number, exc)


def _replacing(decoder: codecs.IncrementalDecoder, piece: bytes) -> str:
    decoder.errors = "replace"
    try:
        return decoder.decode(piece)
    finally:
        decoder.errors = "strict"


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


def _jsonl_records(lines: Iterable[tuple[int, str, Problem | None]]) -> Iterator[Event]:
    for number, text, problem in lines:
        if problem is not None:
            yield number, None, problem  # a line with bad bytes is skipped, not half-read
        elif text.strip():
            try:
                yield number, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield (
                    number,
                    None,
                    _invalid_json(
                        number,
                        f"{exc.msg.removesuffix(' at')} at column {exc.colno}",
                        "make each line one complete JSON object (JSONL), or the whole file one JSON array",
                    ),
                )


def _json_array_records(lines: Iterable[tuple[int, str, Problem | None]]) -> Iterator[Event]:
    reader = _JsonArray()
    pending: list[str] = []
    size = 0
    for number, text, problem in lines:
        if problem is not None:
            yield number, None, problem
            if problem.kind == "binary_file":  # the lines stop here; no need to say it is cut
                return
        pending.append(text)
        size += len(text)
        if size >= ARRAY_CHUNK_CHARS:
            yield from reader.feed("".join(pending))
            pending, size = [], 0
            if reader.done:
                return
    yield from reader.feed("".join(pending), final=True)


class _JsonArray:
    """Decodes ``[{...}, {...}]`` element by element from text that arrives in chunks, holding about
    one element (json.JSONDecoder.raw_decode on a sliding buffer). Stops at the first broken element:
    past it, where the next element starts cannot be known."""

    def __init__(self) -> None:
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.line = "", 0, 1  # self.line is the line number at buf[pos]
        self.opened = self.done = False

    def feed(self, text: str, final: bool = False) -> Iterator[Event]:
        self.buf, self.pos = self.buf[self.pos :] + text, 0
        while not self.done:
            self._skip(",\t\n\r " if self.opened else "\t\n\r ")
            if self.pos >= len(self.buf):
                break
            if not self.opened:  # the file starts with "[": _sniff chose this reader for it
                self.opened, self.pos = True, self.pos + 1
            elif self.buf[self.pos] == "]":
                self.done = True
            else:
                try:
                    value, end = self.decoder.raw_decode(self.buf, self.pos)
                except json.JSONDecodeError as exc:
                    if not final and self._may_be_cut(exc):
                        break
                    self.done = True
                    yield self._error(exc.pos, exc.msg)
                    break
                yield self.line, value, None
                self._move_to(end)
        if final and not self.done:
            self.done = True
            yield self._error(len(self.buf), "the array is not closed")

    def _skip(self, chars: str) -> None:
        end = self.pos
        while end < len(self.buf) and self.buf[end] in chars:
            end += 1
        self._move_to(end)

    def _move_to(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def _may_be_cut(self, exc: json.JSONDecodeError) -> bool:
        """A valid element cut by the chunk's end fails with no complete line after the error."""
        rest = self.buf[exc.pos :].rstrip()
        return "\n" not in rest and len(self.buf) - self.pos < MAX_RECORD_CHARS

    def _error(self, at: int, message: str) -> Event:
        line = self.line + self.buf.count("\n", self.pos, at)
        return (
            line,
            None,
            _invalid_json(
                line,
                f"{message}; the rest of the file was not checked",
                "fix the JSON here (a .json file must be one array: [ {...}, {...} ])",
            ),
        )


def _csv_records(
    lines: Iterable[tuple[int, str, Problem | None]], delimiter: str
) -> Iterator[Event]:
    """Rows as dicts keyed by the header; a row's number is the line it starts on."""
    met: list[tuple[int, Problem]] = []

    def texts() -> Iterator[str]:
        for number, text, problem in lines:
            if problem is not None:
                met.append((number, problem))
            yield text

    reader = csv.reader(texts(), delimiter=delimiter)
    separator = "tabs" if delimiter == "\t" else "commas"
    try:
        header = [name.strip() for name in next(reader, [])]
        last = reader.line_num
        for row in reader:
            start, last = last + 1, reader.line_num
            for number, problem in met:
                yield number, None, problem
            met.clear()
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield (
                    start,
                    None,
                    Problem(
                        start,
                        None,
                        "csv_columns",
                        f"{len(row)} values, but the header has {len(header)} columns",
                        f'quote values that contain {separator} ("a, b")',
                    ),
                )
            else:
                yield start, dict(zip(header, row)), None
    except csv.Error as exc:
        yield (
            reader.line_num,
            None,
            Problem(
                reader.line_num,
                None,
                "invalid_csv",
                f"{exc}; the rest was not checked",
                "re-export the file as CSV",
            ),
        )
    for number, problem in met:
        yield number, None, problem


def _txt_records(lines: Iterable[tuple[int, str, Problem | None]]) -> Iterator[Event]:
    """One document per block of lines separated by blank lines."""
    block: list[str] = []
    start = 1
    for number, text, problem in lines:
        if problem is not None:
            yield number, None, problem
        if text.strip():
            if not block:
                start = number
            block.append(text)
        elif block:
            yield start, {"text": "".join(block).rstrip()}, None
            block = []
    if block:
        yield start, {"text": "".join(block).rstrip()}, None


def _parquet_records(source: _Source) -> Iterator[Event]:
    pa = require("pyarrow", "worker")
    pq = require("pyarrow.parquet", "worker")
    row = 0
    with source.open() as raw:
        try:  # pyarrow reads a path itself, faster than through a Python file object
            parquet = pq.ParquetFile(raw if source.gzipped else source.path)
            for batch in parquet.iter_batches(batch_size=256):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record, None
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield row + 1, None, _unreadable(row + 1, f"not a readable Parquet file ({exc})")


# -- validating and normalizing one record ---------------------------------------------------------
Found = tuple[dict[str, Any] | None, list[Problem]]


def normalize(record: dict[str, Any], format: str, line: int | None = None) -> Found:
    """The record in its normalized shape (None when it has errors), and its problems."""
    example, problems = NORMALIZERS[format](record, line)
    if any(p.severity == "error" for p in problems):
        return None, problems
    return example, problems


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
        try:
            value = json.loads(value)
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


def _text_record(record: dict[str, Any], line: int | None) -> Found:
    text, problems = _string(record, "text", line)
    return {"text": text}, problems


def _prompt_completion(record: dict[str, Any], line: int | None) -> Found:
    prompt, problems = _string(record, "prompt", line, may_be_empty=True)
    completion, more = _string(record, "completion", line)
    return {"prompt": prompt, "completion": completion}, problems + more


def _alpaca(record: dict[str, Any], line: int | None) -> Found:
    instruction, problems = _string(record, "instruction", line)
    output, more = _string(record, "output", line)
    given_input, more_input = _string(record, "input", line, required=False)
    system, more_system = _string(record, "system", line, required=False)
    history, more_history = _alpaca_history(record, line)
    problems += more + more_input + more_system + more_history
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += history
    user = f"{instruction}\n{given_input}" if given_input.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}, problems


def _alpaca_history(
    record: dict[str, Any], line: int | None
) -> tuple[list[dict[str, Any]], list[Problem]]:
    history, problems = _structured(record, "history", line)
    if problems or not history:
        return [], problems
    pairs: list[Any] = history if isinstance(history, list) else [None]
    if not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in pairs
    ):
        return [], [
            Problem(
                line,
                "history",
                "wrong_type",
                "'history' must be a list of [user, assistant] pairs",
                'write it as [["question", "answer"], ...]',
            )
        ]
    return [
        {"role": role, "content": text}
        for pair in pairs
        for role, text in zip(("user", "assistant"), pair)
    ], []


def _chat(record: dict[str, Any], line: int | None) -> Found:
    raw, problems = _structured(record, "messages", line)
    if problems:
        return None, problems
    if not isinstance(raw, list) or not raw:
        return None, [
            _not_a_conversation(line, "messages", raw, '[{"role": "user", "content": "..."}, ...]')
        ]
    messages = []
    for i, item in enumerate(raw):
        message, more = _chat_message(item, f"messages[{i}]", line)
        problems += more
        if message is not None:
            messages.append(message)
    return _conversation(record, messages, "messages", line, problems)


def _chat_message(
    item: Any, where: str, line: int | None
) -> tuple[dict[str, Any] | None, list[Problem]]:
    if _plain_message(item):  # the common case, checked in one go: large files are mostly this
        return {"role": item["role"], "content": item["content"]}, []
    if not isinstance(item, dict):
        return None, [
            Problem(
                line,
                where,
                "wrong_type",
                "a message must be an object",
                'use {"role": ..., "content": ...}',
            )
        ]
    role = item.get("role")
    if role not in ROLES:
        return None, [_unknown_role(line, f"{where}.role", role, ROLES)]
    tool_calls = item.get("tool_calls")
    if tool_calls is not None and not (isinstance(tool_calls, list) and role == "assistant"):
        return None, [
            Problem(
                line,
                f"{where}.tool_calls",
                "wrong_type",
                "tool_calls must be a list, on an assistant message",
                "give the assistant's tool calls as a list",
            )
        ]
    content, problems = _content_text(
        item.get("content"), f"{where}.content", role, bool(tool_calls), line
    )
    message: dict[str, Any] = {"role": role, "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if "loss_weight" in item:
        weight, more = _loss_weight(item["loss_weight"], f"{where}.loss_weight", line)
        problems += more
        message["loss_weight"] = weight
    return message, problems


def _plain_message(item: Any) -> bool:
    """{"role": a known role, "content": non-blank text} and nothing else."""
    if type(item) is not dict or len(item) != 2 or item.get("role") not in ROLES:
        return False
    content = item.get("content")
    return type(content) is str and content != "" and not content.isspace()


def _content_text(
    content: Any, where: str, role: str, has_tool_calls: bool, line: int | None
) -> tuple[str, list[Problem]]:
    """Message content as text: a string, or a list of typed parts {type: text, text | value}."""
    if content is None and has_tool_calls:
        return "", []
    if content is None:
        return "", [
            Problem(
                line,
                where,
                "missing_field",
                f"the {role} message has no content",
                "add its content",
            )
        ]
    if isinstance(content, list):
        texts = [_part_text(part) for part in content]
        if any(t is None for t in texts):
            return "", [
                Problem(
                    line,
                    where,
                    "wrong_type",
                    "only text parts are supported",
                    'use [{"type": "text", "text": "..."}] or a plain string',
                )
            ]
        content = "".join(t for t in texts if t is not None)
    if not isinstance(content, str):
        return "", [
            Problem(
                line,
                where,
                "wrong_type",
                f"content is {type(content).__name__}",
                "make it a string or a list of text parts",
            )
        ]
    if not content.strip() and not has_tool_calls:
        return "", [
            Problem(
                line, where, "empty_content", f"the {role} message is empty", "fill it or remove it"
            )
        ]
    return content, []


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type", "text") == "text":
        value = part.get("text") if part.get("text") is not None else part.get("value")
        return value if isinstance(value, str) else None
    return None


def _loss_weight(value: Any, where: str, line: int | None) -> tuple[float, list[Problem]]:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        return 1.0, [
            Problem(
                line,
                where,
                "wrong_type",
                f"loss_weight {value!r} is not a number >= 0",
                "use 0 (not learned) or 1 (learned)",
            )
        ]
    if value not in (0, 1):
        return float(value), [
            Problem(
                line,
                where,
                "loss_weight",
                f"loss_weight {value} counts as 1",
                "use 0 (not learned) or 1 (learned)",
                "warning",
            )
        ]
    return float(value), []


def _sharegpt(record: dict[str, Any], line: int | None) -> Found:
    raw, problems = _structured(record, "conversations", line)
    if problems:
        return None, problems
    if not isinstance(raw, list) or not raw:
        return None, [
            _not_a_conversation(
                line, "conversations", raw, '[{"from": "human", "value": "..."}, ...]'
            )
        ]
    system, problems = _string(record, "system", line, required=False)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for i, turn in enumerate(raw):
        message, more = _sharegpt_turn(turn, f"conversations[{i}]", line)
        problems += more
        if message is not None:
            messages.append(message)
    return _conversation(record, messages, "conversations", line, problems)


def _sharegpt_turn(
    turn: Any, where: str, line: int | None
) -> tuple[dict[str, Any] | None, list[Problem]]:
    if not isinstance(turn, dict):
        return None, [
            Problem(
                line,
                where,
                "wrong_type",
                "a turn must be an object",
                'use {"from": ..., "value": ...}',
            )
        ]
    speaker = turn.get("from", turn.get("role"))
    role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        return None, [_unknown_role(line, f"{where}.from", speaker, tuple(SHAREGPT_ROLES))]
    value, problems = _content_text(
        turn.get("value", turn.get("content")), f"{where}.value", str(speaker), False, line
    )
    return {"role": role, "content": value}, problems


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


def _conversation(
    record: dict[str, Any],
    messages: list[dict[str, Any]],
    name: str,
    line: int | None,
    problems: list[Problem],
) -> Found:
    tools, more = _tools(record, line)
    problems = problems + more
    if not any(p.severity == "error" for p in problems):
        problems += _turn_order_problems([m["role"] for m in messages], name, line)
    example: dict[str, Any] = {"messages": messages}
    if tools:
        example["tools"] = tools
    return example, problems


def _tools(record: dict[str, Any], line: int | None) -> tuple[Any, list[Problem]]:
    """Tool definitions: a list of JSON schemas, or that list as JSON text (ShareGPT writes it so)."""
    tools, problems = _structured(record, "tools", line)
    if problems or tools in (None, "", []):
        return None, problems
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return None, [
            Problem(
                line,
                "tools",
                "wrong_type",
                "'tools' must be a list of tool schemas (objects)",
                'write it as [{"name": ..., "description": ..., "parameters": {...}}]',
            )
        ]
    return tools, []


def _turn_order_problems(roles: list[str], name: str, line: int | None) -> list[Problem]:
    found = _turn_order_fault(tuple(roles))
    return [Problem(line, name, *found)] if found else []


@lru_cache(maxsize=4096)  # a data set repeats a few role sequences over and over
def _turn_order_fault(roles: tuple[str, ...]) -> tuple[str, str, str, str] | None:
    """(kind, message, fix, severity) of what is wrong with the order of a conversation's roles:
    chat templates and training need a user turn, an assistant turn to learn, and a sane order."""
    if "user" not in roles:
        return (
            "no_user_turn",
            "the conversation has no user message",
            "add the user's message before the assistant's answer",
            "error",
        )
    if "assistant" not in roles:
        return (
            "no_assistant_turn",
            "the conversation has no assistant message",
            "add the answer the model should learn",
            "error",
        )
    turns = roles[next(i for i, role in enumerate(roles) if role != "system") :]
    if turns[0] != "user":
        return (
            "role_order",
            f"the conversation starts with {turns[0]!r}, not 'user'",
            "start with the user's message (after an optional system message)",
            "error",
        )
    pairs = list(zip(turns, turns[1:]))
    if "system" in turns:
        return (
            "role_order",
            "a system message comes after the conversation started",
            "put the system message first",
            "error",
        )
    if any(role == "tool" and before not in ("assistant", "tool") for before, role in pairs):
        return (
            "role_order",
            "a tool result does not follow an assistant tool call",
            "put each tool result right after the assistant message that called the tool",
            "error",
        )
    repeated = [role for before, role in pairs if role == before and role != "tool"]
    if repeated:
        return (
            "repeated_role",
            f"two {repeated[0]!r} messages in a row",
            "merge them, or alternate user and assistant (many chat templates require it)",
            "warning",
        )
    return None


NORMALIZERS = {
    "alpaca": _alpaca,
    "chat": _chat,
    "sharegpt": _sharegpt,
    "prompt_completion": _prompt_completion,
    "text": _text_record,
}


# -- profiling: one pass, memory bounded by what is kept -------------------------------------------
class _Scan:
    """Accumulates a profile record by record: problems (capped per kind), token lengths (as a
    histogram, not a list) and duplicates (one hash per distinct example)."""

    def __init__(self, profile: DatasetProfile, columns: dict[str, str] | None, tokenizer: Any):
        self.profile = profile
        self.fixed_format = profile.format is not None
        self.columns = columns or {}
        self.count_tokens = (
            partial(_counted_tokens, tokenizer=tokenizer) if tokenizer else _estimated_tokens
        )
        self.lengths: Counter[int] = Counter()
        self.seen = _SeenExamples()

    def add(self, problem: Problem) -> None:
        counts = self.profile.problem_counts
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
        if counts[problem.kind] <= KEPT_PER_KIND:
            (
                self.profile.problems if problem.severity == "error" else self.profile.warnings
            ).append(problem)

    def record(self, line: int | None, record: Any) -> None:
        self.profile.rows += 1
        if not isinstance(record, dict):
            self.add(
                Problem(
                    line,
                    None,
                    "wrong_type",
                    f"a record is {type(record).__name__}, not an object",
                    "make each record a JSON object with named fields",
                )
            )
            return
        fmt = self._format_of(line, record)
        if fmt is None:
            return
        example, problems = normalize(record, fmt, line)
        for problem in problems:
            self.add(self._in_user_terms(problem))
        if example is not None:
            self._measure(line, example)

    def _format_of(self, line: int | None, record: dict[str, Any]) -> str | None:
        if self.fixed_format:
            return self.profile.format
        found = detect_format(record)
        if found is None:
            self.add(
                Problem(
                    line,
                    None,
                    "unknown_format",
                    f"no known fields among {sorted(record)[:8]}",
                    "name them messages, conversations, instruction/output, prompt/completion or text, "
                    "or map yours with columns={'instruction': 'question', ...}",
                )
            )
        elif self.profile.format is None:
            self.profile.format = found
        elif found != self.profile.format:
            self.add(
                Problem(
                    line,
                    None,
                    "mixed_formats",
                    f"this record is {found}, the file started as {self.profile.format}",
                    "keep one format per file (split it in two)",
                )
            )
            return None
        return found

    def _in_user_terms(self, problem: Problem) -> Problem:
        """Name the field as the user's file does when columns= renamed it."""
        if problem.field:
            root = problem.field.split(".")[0].split("[")[0]
            if root in self.columns:
                problem.field = self.columns[root] + problem.field[len(root) :]
        return problem

    def _measure(self, line: int | None, example: dict[str, Any]) -> None:
        profile = self.profile
        if len(profile.preview) < PREVIEW_ROWS:
            profile.preview.append(example)
        tokens = self.count_tokens(example)
        self.lengths[tokens] += 1
        if tokens > profile.max_seq_length:
            profile.over_max_seq_length += 1
            self.add(
                Problem(
                    line,
                    None,
                    "too_long",
                    f"{tokens} tokens, over max_seq_length {profile.max_seq_length}: "
                    "it will be truncated",
                    "shorten or split it, or raise max_seq_length",
                    "warning",
                )
            )
        first = self.seen.first_line(_fingerprint(example), line or 0)
        if first is not None:
            profile.duplicates += 1
            self.add(
                Problem(
                    line,
                    None,
                    "duplicate",
                    f"the same example as line {first}",
                    "remove duplicates: they weigh an example twice",
                    "warning",
                )
            )

    def finish(self) -> DatasetProfile:
        profile = self.profile
        if not self.lengths and not profile.problems:
            self.add(
                Problem(
                    None,
                    None,
                    "empty_file",
                    "no examples in the file",
                    "upload a file with at least one example",
                )
            )
        if self.lengths:
            profile.tokens = _token_stats(
                self.lengths, estimated=self.count_tokens is _estimated_tokens
            )
            profile.tokens_per_epoch = sum(
                min(n, profile.max_seq_length) * k for n, k in self.lengths.items()
            )
        return profile


def _fingerprint(example: dict[str, Any]) -> int:
    """A 64-bit hash of what an example says: cheaper than serializing it, and equal for equal
    examples within one process (str hashes are salted per process, which is all a pass needs)."""
    if "messages" not in example:
        return hash(tuple(example.values()))
    turns = tuple(
        (m["role"], m["content"], m.get("loss_weight"), repr(m.get("tool_calls")))
        for m in example["messages"]
    )
    return hash((turns, repr(example.get("tools"))))


class _SeenExamples:
    """Fingerprints with the line each was first seen on, in an open-addressing table over two
    flat arrays: 12 bytes a slot instead of ~100 bytes a dict entry, since it holds one entry per
    distinct example and is what grows with the file."""

    def __init__(self) -> None:
        self.keys, self.lines, self.used = array("q", bytes(8 << 10)), array("i", bytes(4 << 10)), 0

    def first_line(self, key: int, line: int) -> int | None:
        """The line this key was first seen on; None (and remembered) when it is new."""
        key = key or 1  # 0 marks an empty slot
        keys, mask = self.keys, len(self.keys) - 1
        slot = key & mask
        while keys[slot]:
            if keys[slot] == key:
                return self.lines[slot]
            slot = (slot + 1) & mask
        keys[slot], self.lines[slot] = key, line
        self.used += 1
        if self.used * 4 > len(keys) * 3:
            self._grow()
        return None

    def _grow(self) -> None:
        old = zip(self.keys, self.lines)
        size = len(self.keys) * 2
        self.keys, self.lines, self.used = (
            array("q", bytes(8 * size)),
            array("i", bytes(4 * size)),
            0,
        )
        for key, line in old:
            if key:
                self.first_line(key, line)


def _token_stats(lengths: Counter[int], estimated: bool) -> dict[str, Any]:
    total = sum(lengths.values())
    ordered = sorted(lengths)
    p95_rank, seen, p95 = math.ceil(0.95 * total), 0, ordered[-1]
    for n in ordered:
        seen += lengths[n]
        if seen >= p95_rank:
            p95 = n
            break
    mean = sum(n * k for n, k in lengths.items()) / total
    return {
        "min": ordered[0],
        "mean": round(mean, 1),
        "p95": p95,
        "max": ordered[-1],
        "estimated": estimated,
    }


def _estimated_tokens(example: dict[str, Any]) -> int:
    """About 4 characters a token, plus a few for each message's role markers and the end token."""
    if "messages" in example:
        chars = sum(len(m["content"]) for m in example["messages"])
        return math.ceil(chars / 4) + 4 * len(example["messages"]) + 1
    chars = (
        len(example.get("text", ""))
        + len(example.get("prompt", ""))
        + len(example.get("completion", ""))
    )
    return math.ceil(chars / 4) + 1


def _counted_tokens(example: dict[str, Any], tokenizer: Any) -> int:
    from .render import count_tokens

    return count_tokens(example, tokenizer)
