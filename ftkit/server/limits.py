"""Request size limits, and a multipart upload streamed straight to a file on disk.

A body is counted as it arrives: a Content-Length over the limit is refused before a byte is read,
and a chunked body is cut off with 413 as soon as it passes the limit. An upload never sits in
memory: python-multipart hands over each piece of the file part, which goes to a temporary file
named by the server (the client's file name is only kept, cleaned, as the data set's name).
A body is taken whole or not at all: one file part, and its closing boundary (a client that died
mid-upload sends none), else a 422 and the partial file goes with its temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import DatasetError
from .asgi import send_json

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

KNOWN_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".parquet")
MAX_NAME_CHARS, MAX_NAME_BYTES = 200, 255  # a file name longer than 255 bytes cannot be stored


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing re-raises it as a 413 instead of a 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: at most ``upload_limit`` bytes for POST /upload, ``limit`` elsewhere."""

    def __init__(self, app: ASGIApp, *, limit: int, upload_limit: int, upload_path: str):
        self.app, self.limit, self.upload_limit, self.upload_path = (
            app,
            limit,
            upload_limit,
            upload_path,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] == self.upload_path else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send, limit: int) -> None:
    detail = f"request body larger than the limit of {limit} bytes"
    await send_json(send, 413, {"detail": detail}, ((b"connection", b"close"),))


@dataclass
class Upload:
    """The one file part of a multipart body, on disk."""

    path: Path
    filename: str
    size: int


def clean_filename(raw: str) -> str:
    """The client's file name as a plain name: its last path component, no control characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if len(name) > MAX_NAME_CHARS or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise DatasetError(
            f"file name {name[:40]!r}... is too long: at most {MAX_NAME_CHARS} characters and "
            f"{MAX_NAME_BYTES} bytes (UTF-8); rename the file"
        )
    if not name or name in (".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DatasetError(
            f"invalid file name {raw[:80]!r}: send a plain file name such as 'train.jsonl'"
        )
    return name


def local_name(filename: str) -> str:
    """The temporary file's name: a fixed stem and only a known suffix, for format detection."""
    lower = filename.lower()
    gz = ".gz" if lower.endswith(".gz") else ""
    base = lower.removesuffix(".gz")
    suffix = next((s for s in KNOWN_SUFFIXES if base.endswith(s)), "")
    return f"upload{suffix}{gz}"


async def receive_file(
    stream: AsyncIterator[bytes], content_type: str, folder: Path, field: str = "file"
) -> Upload:
    """Parse a multipart body chunk by chunk, writing the part named ``field`` into ``folder``."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser

    boundary = _boundary(content_type)
    part = _FilePart(folder, field)
    parser = MultipartParser(boundary, part.callbacks())
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise DatasetError(f"the multipart body cannot be parsed: {exc}") from exc
    finally:
        part.close()
    return part.whole_upload()


def _boundary(content_type: str) -> bytes:
    """The multipart boundary, or a DatasetError that says how to send the file."""
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise DatasetError(
            "send the data set as multipart/form-data with a part named 'file' "
            "(curl -F file=@train.jsonl)"
        )
    return params[b"boundary"]


class _FilePart:
    """python-multipart's callbacks: each part's headers gathered, and the one file part's bytes
    written to a file named by the server; a second file part is refused."""

    def __init__(self, folder: Path, field: str):
        self.folder, self.field = folder, field
        self.headers: dict[bytes, bytes] = {}
        self.name, self.value = b"", b""
        self.file: BinaryIO | None = None
        self.upload: Upload | None = None
        self.ended = False  # the closing boundary arrived

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.name.lower()] = self.value
        self.name, self.value = b"", b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        is_file = options.get(b"name") == self.field.encode() or b"filename" in options
        if is_file and self.upload is not None:
            raise DatasetError(
                "more than one file in the request: send one data set per upload, as the part "
                f"named {self.field!r}"
            )
        if options.get(b"name") == self.field.encode() and b"filename" in options:
            filename = clean_filename(options[b"filename"].decode("utf-8", "replace"))
            path = self.folder / local_name(filename)
            self.file = open(path, "wb")
            self.upload = Upload(path=path, filename=filename, size=0)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.file is not None and self.upload is not None:
            self.file.write(data[start:end])
            self.upload.size += end - start

    def on_part_end(self) -> None:
        self.close()
        self.headers = {}

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def whole_upload(self) -> Upload:
        """The file, if the body was whole: its closing boundary came, and one non-empty file."""
        if not self.ended:
            raise DatasetError(
                "the upload was cut off: the multipart body ends before its closing boundary; "
                "send the file again"
            )
        if self.upload is None:
            raise DatasetError("no file in the request: send it as the multipart part named 'file'")
        if self.upload.size == 0:
            os.unlink(self.upload.path)
            raise DatasetError(f"{self.upload.filename}: the file is empty")
        return self.upload
