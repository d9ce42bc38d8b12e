"""One class over an fsspec URL, and the only place that knows the storage layout.

    datasets/<sha256>/<name>           the uploaded file, byte for byte
    datasets/<sha256>/dataset.json     its metadata (format, rows, profile)
    models/<sha256>/<name>/...         a local base-model folder, byte for byte (hidden files left out)
    models/<sha256>/model.json         its name and file list, written last: the upload is whole
    runs/<job_id>/report.ipynb         the executed notebook
    runs/<job_id>/adapter/             the LoRA adapter (save_pretrained)
    runs/<job_id>/checkpoints/         trainer checkpoints, for resuming
    reservations/<job_id>.json         a job id handed out at an upload, before the job exists
    runs/<job_id>/attempts/<n>.trained written when attempt n's training ran to its end: one per
                                       job, unless training ran twice (the soak counts these)

Writes are atomic: on a filesystem a file is written under a temporary name and renamed; on an
object store a PUT (or a completed multipart upload) only becomes visible when it is whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .errors import JobNotFound, StorageError, StorageUnavailable

T = TypeVar("T")
log = logging.getLogger("ftkit.storage")
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
                        raise StorageUnavailable(
                            f"cannot {what} at {self.url} after {RETRIES} tries: {exc}"
                        ) from exc
                    time.sleep(0.2 * 2**attempt)
            raise AssertionError("unreachable")

        return wrapper

    return decorate


DATASET_META = (
    "dataset.json"  # beside the data file in datasets/<sha256>/: no data set may take its name
)


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

    @staticmethod
    def model_parts(sha256: str, name: str = "") -> tuple[str, ...]:
        """A model folder's place; refuses anything but a hex digest and a plain folder name."""
        ref = check_model_ref({"sha256": sha256, "name": name or "model"})
        return ("models", ref["sha256"], ref["name"]) if name else ("models", ref["sha256"])

    @staticmethod
    def trained_marker_parts(job_id: str, attempt: int) -> tuple[str, ...]:
        """Where attempt ``attempt`` of a job records that its training ran to the end."""
        return ("runs", job_id, "attempts", f"{int(attempt)}.trained")

    def trained_markers(self, job_id: str) -> list[str]:
        """The training-completed markers of every attempt of a job (more than one: trained twice)."""
        folder = self.trained_marker_parts(job_id, 0)[:-1]
        return [name for name in self.listdir(*folder) if name.endswith(".trained")]

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
            with open(local, "rb") as src:
                self.put_stream(src, Path(local).stat().st_size, *parts)
        return target

    def put_stream(self, src: BinaryIO, size: int, *parts: str) -> str:
        """Copy ``size`` bytes from a stream in, one chunk in memory at a time (multipart on S3).
        A failed copy is aborted, so a partial object never becomes visible, and the stored size
        is checked. Not retried: a stream reads once (``put_file`` retries from its file)."""
        target = self.path(*parts)
        if self.is_local:
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            partial = f"{target}.partial-{uuid.uuid4().hex[:8]}"
            try:
                with open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                self._check_size(partial, size)
                os.replace(partial, target)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
            return target
        dst = self.fs.open(target, "wb", block_size=CHUNK)
        try:
            shutil.copyfileobj(src, dst, CHUNK)
        except BaseException:
            dst.discard()
            dst.closed = True  # discarded: closing it later (when collected) must not upload
            raise
        dst.close()
        self._check_size(target, size)
        return target

    def _check_size(self, target: str, expected: int) -> None:
        stored = self.fs.size(target)
        if stored != expected:
            self.fs.rm(target)
            raise OSError(f"{target}: stored {stored} bytes of {expected}")

    def put_dir(self, local: str | os.PathLike, *parts: str, skip: tuple[str, ...] = ()) -> str:
        """Copy a local folder in, file by file (each one atomic), leaving out the top-level files
        named in ``skip``."""
        local = Path(local)
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            if file.parent == local and file.name in skip:
                continue
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

    def get_dir(
        self,
        parts: tuple[str, ...],
        local: str | os.PathLike,
        *,
        only: frozenset[str] | None = None,
    ) -> Path:
        """Copy a folder out; with ``only``, just the files at those paths inside it."""
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
            if only is not None and rel not in only:
                continue
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

    @_retrying("measure a folder")
    def size(self, *parts: str) -> int:
        """Bytes stored under a path (0 when there is nothing)."""
        target = self.path(*parts)
        if not self.fs.exists(target):
            return 0
        return int(self.fs.du(target, total=True))

    @_retrying("remove a path")
    def remove(self, *parts: str) -> None:
        target = self.path(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    # -- model folders -------------------------------------------------------------------------
    def model_meta(self, sha256: str) -> dict[str, Any] | None:
        """The stored model with this content digest (name, files), or None: not stored, or its
        upload never finished (model.json is written last)."""
        parts = (*self.model_parts(sha256), "model.json")
        if not self.exists(*parts):
            return None
        return json.loads(self.read_text(*parts))

    def put_model(self, files: list[tuple[str, Path]], sha256: str, name: str) -> dict[str, Any]:
        """Upload a model folder's files (from ``model_files``), then its model.json."""
        for rel, path in files:
            self.put_file(path, *self.model_parts(sha256, name), *rel.split("/"))
        meta = {
            "sha256": sha256,
            "name": name,
            "files": [{"path": rel, "size": path.stat().st_size} for rel, path in files],
        }
        self.write_text(json.dumps(meta, indent=2), *self.model_parts(sha256), "model.json")
        return meta

    def get_model(self, sha256: str, name: str, local: str | os.PathLike) -> Path:
        return self.get_dir(self.model_parts(sha256, name), local)

    def fetch_model(self, ref: Any, cache: Path) -> tuple[Path, bool]:
        """A local copy of an uploaded model folder, ``cache/<sha256>/<name>``, and whether it was
        fetched now (else it was there). The reference comes from a job record, so it is checked
        (hex digest, plain name, a path inside the cache), and the fetched files must hash to it
        before they are used or cached."""
        ref = check_model_ref(ref)
        sha256, name = ref["sha256"], ref["name"]
        cache = cache.resolve()
        local = (cache / sha256 / name).resolve()
        if not local.is_relative_to(cache):
            raise StorageError(f"refusing model {name}: its cache path leaves {cache}")
        if local.is_dir():
            return local, False
        partial = cache / sha256 / f".partial-{uuid.uuid4().hex[:8]}"
        try:
            self.get_model(sha256, name, partial)
            if folder_digest(model_files(partial)) != sha256:
                raise StorageError(
                    f"model {name} in storage does not match its digest {sha256[:12]}: refusing it"
                )
            try:
                os.rename(partial, local)
            except OSError:
                if not local.is_dir():  # else another process on this machine fetched it first
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return local, True

    # -- data sets -----------------------------------------------------------------------------
    def save_dataset_meta(self, meta: dict[str, Any]) -> None:
        self.write_text(
            json.dumps(meta, indent=2), *self.dataset_parts(meta["sha256"], DATASET_META)
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
            return json.loads(self.read_text(*self.dataset_parts(matches[0], DATASET_META)))
        except StorageError as exc:
            raise JobNotFound(f"data set {dataset_id!r} has no metadata in {self.url}") from exc

    def datasets_named(self, name: str) -> list[str]:
        """Ids of the uploaded data sets stored under this file name (one listing)."""
        root = self.path("datasets")
        try:
            found = self.fs.find(root, maxdepth=2) if self.fs.exists(root) else []
        except OSError as exc:
            raise StorageError(f"cannot list {self.fs.unstrip_protocol(root)}: {exc}") from exc
        rel = (f[len(root) + 1 :].split("/") for f in found)
        return sorted(parts[0] for parts in rel if len(parts) == 2 and parts[1] == name)

    # -- job ids reserved at upload --------------------------------------------------------
    def save_reservation(self, meta: dict[str, Any]) -> None:
        self.write_text(json.dumps(meta), "reservations", f"{meta['job_id']}.json")

    def reservation(self, job_id: str) -> dict[str, Any]:
        parts = ("reservations", f"{job_id}.json")
        if not self.exists(*parts):
            raise JobNotFound(f"job id {job_id!r} was not reserved by an upload")
        return json.loads(self.read_text(*parts))


SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_ref(ref: Any) -> dict[str, str]:
    """A job's model reference ({"sha256", "name"}), checked before it names a path anywhere: it
    comes from a record that anyone with the broker URL can write."""
    if not isinstance(ref, dict) or set(ref) != {"sha256", "name"}:
        raise StorageError(
            f"invalid model reference {ref!r}: expected exactly the keys 'sha256' and 'name'"
        )
    sha256, name = ref["sha256"], ref["name"]
    if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
        raise StorageError(f"invalid model reference: sha256 {sha256!r} is not 64 lowercase hex")
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise StorageError(
            f"invalid model reference: name {name!r} is not a plain folder name "
            "(letters, digits, '.', '_', '-'; at most 100; not starting with '.', '_' or '-')"
        )
    return {"sha256": sha256, "name": name}


def safe_model_name(folder: str | os.PathLike) -> str:
    """A folder's name as the plain name a model is stored under (``check_model_ref`` accepts it)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(folder).name).strip("._-")[:100]
    return name or "model"


def model_files(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """The files of a model folder that travel, sorted by relative path: regular files (links
    followed, as in a Hugging Face cache snapshot), none under a hidden name (.git, .cache)."""
    root = Path(folder)
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not any(part.startswith(".") for part in rel.split("/")) and path.is_file():
            files.append((rel, path))
    return sorted(files)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(files: list[tuple[str, Path]]) -> str:
    """A model folder's content address: sha256 over its sorted relative paths and their files'
    sha256. Same files, same digest, wherever the folder lies and whatever it is called."""
    digest = hashlib.sha256()
    for rel, path in files:
        digest.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
