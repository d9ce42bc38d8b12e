"""Streaming readers, one per file kind (JSONL, JSON array, CSV/TSV, text, Parquet; gzip too): each
yields ``(line, record, problem)`` events in bounded memory, never a whole file.

The rest of the package reads a file in two calls: ``sniff(path)`` says what it holds (a ``Source``)
or why it cannot be read, and ``records(source)`` streams its events."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from ..errors import DatasetError, require
from .problems import (
    Event,
    Problem,
    _binary,
    _element_too_long,
    _invalid_json,
    _line_too_long,
    _not_utf8,
    _shallow,
    _too_deep,
    _unreadable,
)

SNIFF_BYTES = 8192
ARRAY_PIECE_BYTES = 1 << 20  # a minified JSON array is one huge line: read it in pieces
ARRAY_CHUNK_CHARS = 1 << 16  # decode a JSON array once this much text has arrived
MAX_RECORD_CHARS = 64 << 20  # past this a JSON error is not a record cut by the chunk
MAX_LINE_BYTES = 8 << 20  # a longer line (JSONL, CSV, text) is refused, never held whole
GZIP_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"PAR1"
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
EXTENSIONS.update({".txt": "txt", ".parquet": "parquet"})


def _readable_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"data set file not found: {path}")
    try:
        with open(path, "rb"):
            return path
    except OSError as exc:
        raise DatasetError(f"cannot read the data set file {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # jsonl | json (an array) | csv | tsv | txt | parquet
    gzipped: bool

    @property
    def label(self) -> str:
        return self.kind + (".gz" if self.gzipped else "")

    def open(self) -> io.BufferedIOBase:
        return gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")


def sniff(path: Path) -> tuple[Source, Problem | None]:
    """What the file holds, judged by its first bytes as well as its name, or why it cannot be read."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = EXTENSIONS.get(suffixes[-1] if suffixes else "", "jsonl")
    source = Source(path, kind, gzipped)
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


def records(source: Source) -> Iterator[Event]:
    """Every record with its line (or row) number, and every problem met on the way."""
    try:
        if source.kind == "parquet":
            yield from _parquet_records(source)
            return
        with source.open() as raw:
            if source.kind == "json":  # one element may span many lines, or one line many elements
                lines = _decoded_lines(raw, ARRAY_PIECE_BYTES)
            else:
                lines = _decoded_lines(raw, max_line=MAX_LINE_BYTES)
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
    raw: io.BufferedIOBase, piece_bytes: int = -1, max_line: int | None = None
) -> Iterator[tuple[int, str, Problem | None]]:
    """(line number, text, problem) for each line. Bytes that are not UTF-8 become U+FFFD and a
    problem naming the line. With piece_bytes, a longer line comes in pieces (same number), so one
    huge line never has to fit in memory at once. With max_line, a line longer than that many
    bytes is skipped unread: one problem and an empty text in its place."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    number = 1
    read = partial(raw.readline, max_line + 1 if max_line else piece_bytes)
    for piece in iter(read, b""):
        if b"\0" in piece:
            yield number, "", _binary(number)
            return
        if max_line and len(piece) > max_line and not piece.endswith(b"\n"):
            while piece and not piece.endswith(b"\n"):
                piece = read()
            decoder.reset()
            yield number, "", _line_too_long(number, max_line)
            number += 1
            continue
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


def _jsonl_records(lines: Iterable[tuple[int, str, Problem | None]]) -> Iterator[Event]:
    for number, text, problem in lines:
        if problem is not None:
            yield number, None, problem  # a line with bad bytes is skipped, not half-read
        elif text.strip():
            try:
                record = json.loads(text)
            except RecursionError:
                yield number, None, _too_deep(number)
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
            else:
                yield _shallow(number, record, text)


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
            if not self.opened:  # the file starts with "[": sniff chose this reader for it
                self.opened, self.pos = True, self.pos + 1
            elif self.buf[self.pos] == "]":
                self.done = True
            else:
                try:
                    value, end = self.decoder.raw_decode(self.buf, self.pos)
                except RecursionError:  # where this element ends cannot be known
                    self.done = True
                    yield self._error(self.pos, "an element is nested too deeply to read")
                    break
                except json.JSONDecodeError as exc:
                    if not final and self._may_be_cut(exc):
                        if len(self.buf) - self.pos > MAX_LINE_BYTES:  # never held whole
                            self.done = True
                            yield self.line, None, _element_too_long(self.line, MAX_LINE_BYTES)
                        break
                    self.done = True
                    yield self._error(exc.pos, exc.msg)
                    break
                yield _shallow(self.line, value, self.buf[self.pos : end])
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


def _parquet_records(source: Source) -> Iterator[Event]:
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
