"""One class over an fsspec URL, and the only place that knows the storage layout.

    datasets/<sha256>/<name>           the uploaded file, byte for byte
    datasets/<sha256>/dataset.json     its metadata (format, rows, profile)
    runs/<job_id>/report.ipynb         the executed notebook
    runs/<job_id>/adapter/             the LoRA adapter (save_pretrained)
    runs/<job_id>/checkpoints/         trainer checkpoints, for resuming

Writes are atomic: on a filesystem a file is written under a temporary name and renamed; on an
object store a PUT (or a completed multipart upload) only becomes visible when it is whole.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import JobNotFound, StorageError

T = TypeVar("T")
RETRIES = 3
CHUNK = 16 << 20  # 16 MiB: S3 multipart part size and read size
PERMANENT = (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError)
PERMANENT_NAMES = {"NoCredentialsError", "PartialCredentialsError", "NoSuchBucket"}


def _retrying(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry transient I/O errors with a short back-off, then raise StorageError naming the URL."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(self: Storage, *args: Any, **kwargs: Any) -> T:
            for attempt in range(RETRIES):
                try:
                    return fn(self, *args, **kwargs)
                except StorageError:
                    raise
                except PERMANENT as exc:
                    raise StorageError(f"cannot {what} at {self.url}: {exc}") from exc
                except Exception as exc:  # network and service errors (botocore's are not OSError)
                    if type(exc).__name__ in PERMANENT_NAMES:
                        raise StorageError(f"cannot {what} at {self.url}: {exc}") from exc
                    if attempt == RETRIES - 1:
                        raise StorageError(
                            f"cannot {what} at {self.url} after {RETRIES} tries: {exc}"
                        ) from exc
                    time.sleep(0.2 * 2**attempt)
            raise AssertionError("unreachable")

        return wrapper

    return decorate


class Storage:
    """Datasets, reports, adapters and checkpoints under one fsspec URL (a folder, s3://...)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None):
        import fsspec

        options: dict[str, Any] = {}
        if url.startswith("s3://") or url.startswith("s3a://"):
            from .errors import require

            require("s3fs", "s3")
            # Other processes write here too: never trust a cached listing.
            options["use_listings_cache"] = False
            # A Storage sees the credentials of its moment, and ftkit retries on top of botocore.
            options["skip_instance_cache"] = True
            options["config_kwargs"] = {
                "retries": {"max_attempts": 2, "mode": "standard"},
                "connect_timeout": 5,
            }
            if endpoint_url:
                options["endpoint_url"] = endpoint_url
        elif "://" not in url:
            url = str(Path(url).expanduser().resolve())
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)

    # -- layout ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path of a layout entry; refuses parts that climb out of the root."""
        for part in parts:
            if not part or part.startswith("/") or ".." in part.split("/") or "\\" in part:
                raise StorageError(f"refusing unsafe storage path component {part!r}")
        return "/".join([self.root, *parts])

    def full_url(self, *parts: str) -> str:
        """What to show a user: a local path, or the fsspec URL."""
        p = self.path(*parts)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    @staticmethod
    def dataset_parts(sha256: str, name: str = "") -> tuple[str, ...]:
        return ("datasets", sha256, name) if name else ("datasets", sha256)

    @staticmethod
    def run_parts(job_id: str, *rest: str) -> tuple[str, ...]:
        return ("runs", job_id, *rest)

    # -- files ---------------------------------------------------------------------------------
    @_retrying("check a path")
    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    @_retrying("upload a file")
    def put_file(self, local: str | os.PathLike, *parts: str) -> str:
        """Copy a local file in (streamed; multipart on S3), atomically."""
        target = self.path(*parts)
        if self.is_local:
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            partial = f"{target}.partial-{uuid.uuid4().hex[:8]}"
            try:
                self.fs.put_file(str(local), partial)
                os.replace(partial, target)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
        else:
            self._stream_up(Path(local), target)
        return target

    def _stream_up(self, local: Path, target: str) -> None:
        """Chunked multipart upload: memory holds one chunk, and a failed upload is aborted, so a
        partial object never becomes visible. The stored size is checked against the file's."""
        dst = self.fs.open(target, "wb", block_size=CHUNK)
        try:
            with open(local, "rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)
        except BaseException:
            dst.discard()
            raise
        dst.close()
        stored, expected = self.fs.size(target), local.stat().st_size
        if stored != expected:
            self.fs.rm(target)
            raise OSError(f"{target}: stored {stored} bytes of {expected}")

    def put_dir(self, local: str | os.PathLike, *parts: str) -> str:
        """Copy a local folder in, file by file (each one atomic)."""
        local = Path(local)
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = file.relative_to(local).as_posix()
            self.put_file(file, *parts, *rel.split("/"))
        return self.path(*parts)

    @_retrying("download a file")
    def get_file(self, parts: tuple[str, ...], local: str | os.PathLike) -> Path:
        """Copy a file out (streamed), atomically on the local side."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            if self.is_local:
                self.fs.get_file(self.path(*parts), str(partial))
            else:  # ranged reads of one chunk at a time: a multi-GB checkpoint never sits in memory
                with (
                    self.fs.open(self.path(*parts), "rb", block_size=CHUNK) as src,
                    open(partial, "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst, CHUNK)
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)
        return local

    def get_dir(self, parts: tuple[str, ...], local: str | os.PathLike) -> Path:
        root = self.path(*parts)
        try:
            found = self.fs.find(root)
        except OSError as exc:
            raise StorageError(f"cannot list {self.fs.unstrip_protocol(root)}: {exc}") from exc
        files = [f for f in found if not f.rsplit("/", 1)[-1].startswith(".")]
        if not files:
            raise StorageError(f"nothing stored at {self.fs.unstrip_protocol(root)}")
        for remote in files:
            rel = remote[len(root) :].lstrip("/")
            self.get_file(tuple(remote[len(self.root) + 1 :].split("/")), Path(local) / rel)
        return Path(local)

    @_retrying("write a file")
    def write_text(self, text: str, *parts: str) -> None:
        target = self.path(*parts)
        if self.is_local:
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            partial = f"{target}.partial-{uuid.uuid4().hex[:8]}"
            Path(partial).write_text(text, encoding="utf-8")
            os.replace(partial, target)
        else:
            self.fs.pipe_file(target, text.encode("utf-8"))

    @_retrying("read a file")
    def read_text(self, *parts: str) -> str:
        return self.fs.cat_file(self.path(*parts)).decode("utf-8")

    @_retrying("list a folder")
    def listdir(self, *parts: str) -> list[str]:
        base = self.path(*parts)
        if not self.fs.exists(base):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))

    @_retrying("remove a path")
    def remove(self, *parts: str) -> None:
        target = self.path(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    # -- data sets -----------------------------------------------------------------------------
    def save_dataset_meta(self, meta: dict[str, Any]) -> None:
        self.write_text(
            json.dumps(meta, indent=2), *self.dataset_parts(meta["sha256"], "dataset.json")
        )

    def dataset_meta(self, dataset_id: str) -> dict[str, Any]:
        """Metadata of an uploaded data set, by its id (the sha256) or a unique prefix of 8+ chars."""
        if not (8 <= len(dataset_id) <= 64) or not all(c in "0123456789abcdef" for c in dataset_id):
            raise JobNotFound(
                f"no data set with id {dataset_id!r}: ids are sha256 hex digests (8+ leading characters)"
            )
        matches = [d for d in self.listdir("datasets") if d.startswith(dataset_id)]
        if len(matches) != 1:
            why = "no data set" if not matches else f"{len(matches)} data sets"
            raise JobNotFound(f"{why} with id {dataset_id!r} in {self.url}")
        try:
            return json.loads(self.read_text(*self.dataset_parts(matches[0], "dataset.json")))
        except StorageError as exc:
            raise JobNotFound(f"data set {dataset_id!r} has no metadata in {self.url}") from exc


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
