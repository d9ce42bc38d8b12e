"""The Huey instance chosen from Settings, the one task (``run_job``), and re-queueing jobs whose
worker died.

A task carries a job id and nothing executable. Payloads are JSON (never pickle), signed with
``FTKIT_QUEUE_SECRET`` when it is set. A message that cannot be read or verified is never dropped
in silence: it becomes a ``refused`` task, and the worker decides, from the job's own signed spec,
whether the job is legitimate (the message is ignored) or not (the job fails, visibly).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huey import PriorityRedisHuey, SqliteHuey
from huey.registry import Message
from huey.serializer import Serializer

from . import jobstore as jobs
from .config import Settings
from .core import statuses
from .core.records import JobRecord
from .core.rules import MAX_PRIORITY, is_job_id
from .errors import BrokerUnavailable

QUEUE_NAME = "training"
DEFAULT_MAX_ATTEMPTS = 3
TASK_NAME = "ftkit.run_job"
REFUSED_TASK_NAME = "ftkit.refused_message"
log = logging.getLogger("ftkit.queue")


class JsonSerializer(Serializer):
    """Huey messages as JSON, with an HMAC signature when a secret is configured."""

    def __init__(self, secret: str | None = None):
        super().__init__()
        self.secret = secret.encode() if secret else None

    def _serialize(self, data: Any) -> bytes:
        body = json.dumps(_encode(data), separators=(",", ":")).encode()
        if self.secret:
            return hmac.new(self.secret, body, hashlib.sha256).hexdigest().encode() + b":" + body
        return body

    def _deserialize(self, data: bytes) -> Any:
        signed = data[:1] != b"{"
        if self.secret:
            signature, _, data = data.partition(b":")
            expected = hmac.new(self.secret, data, hashlib.sha256).hexdigest().encode()
            if not signed or not hmac.compare_digest(signature, expected):
                raise ValueError(
                    "bad signature: the queue message is not signed with this worker's FTKIT_QUEUE_SECRET"
                )
        elif signed:  # signed by a client with a secret; this worker requires none
            data = data.partition(b":")[2]
        return _decode(json.loads(data))


def _encode(value: Any) -> Any:
    if isinstance(value, Message):
        return {"__message__": {k: _encode(v) for k, v in value._asdict().items()}}
    if isinstance(value, dt.datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"ftkit queue payloads are plain JSON values, not {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__message__" in value:
            return Message(
                **{k: _decode(v) for k, v in value["__message__"].items() if k in Message._fields}
            )
        if "__datetime__" in value:
            return dt.datetime.fromisoformat(value["__datetime__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def job_id_in(data: bytes) -> str | None:
    """The job id a raw (unverified) message names, when it names a well-formed one."""
    try:
        body = data.partition(b":")[2] if data[:1] != b"{" else data
        args = json.loads(body)["__message__"]["args"]
    except (ValueError, KeyError, TypeError):
        return None
    job_id = args[0] if isinstance(args, list) and args else None
    return job_id if is_job_id(job_id) else None


class _Refusing:
    """Turns a message that cannot be read, verified or matched to a task into a ``refused`` task."""

    def deserialize_task(self, data: bytes):
        try:
            task = super().deserialize_task(data)  # type: ignore[misc]
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:300]
            task_class = self._registry.string_to_task(f"{__name__}.{REFUSED_TASK_NAME}")  # type: ignore[attr-defined]
            return task_class((job_id_in(data), reason), {})
        if type(task).__name__ == TASK_NAME and not is_job_id(task.args[0] if task.args else None):
            task_class = self._registry.string_to_task(f"{__name__}.{REFUSED_TASK_NAME}")  # type: ignore[attr-defined]
            return task_class((None, f"job id {str(task.args)[:80]} is malformed"), {})
        return task


class RedisQueue(_Refusing, PriorityRedisHuey):
    pass


class SqliteQueue(_Refusing, SqliteHuey):
    pass


def make_huey(
    settings: Settings,
    run_job: Callable[[str], None] | None = None,
    refuse: Callable[[str | None, str], None] | None = None,
):
    """A priority queue on Redis (many machines, one queue), SQLite embedded.

    The tasks are registered here, by name, so a client enqueues without importing the worker; the
    worker hands in their bodies (``run_job``, ``refuse``). Without them this Huey only enqueues."""
    common: dict[str, Any] = dict(
        name=QUEUE_NAME,
        results=False,
        utc=True,
        serializer=JsonSerializer(settings.queue_secret),
    )
    huey: Any
    if settings.redis_url:
        huey = RedisQueue(url=settings.redis_url, read_timeout=1, **common)
    else:
        # the first command on a fresh machine (any of them) creates the folder the queue lives in
        Path(settings.queue_db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteQueue(filename=settings.queue_db, **common)
    huey.task(name=TASK_NAME)(_task(TASK_NAME, run_job))
    huey.task(name=REFUSED_TASK_NAME)(_task(REFUSED_TASK_NAME, refuse))
    return huey


def _task(name: str, body: Callable[..., None] | None) -> Callable[..., None]:
    """The function Huey registers under ``ftkit.queue.<name>``: it runs the worker's body."""

    def task(*args: Any) -> None:
        if body is None:
            raise RuntimeError(
                f"task {name} reached a process that only enqueues: a worker runs it "
                "(make_huey(settings, run_job=..., refuse=...))"
            )
        body(*args)

    return task


def message_for(huey, job_id: str, priority: int = 0) -> jobs.QueueMessage:
    """The serialized (and, with a secret, signed) task that runs one job, for the job store to
    write in the same transaction as the record it belongs to."""
    task_class = huey._registry.string_to_task(f"{__name__}.{TASK_NAME}")
    data = huey.serialize_task(task_class((job_id,), {}, priority=priority))
    return jobs.QueueMessage(queue=huey.storage.name, data=data, priority=priority)


def enqueue(huey, job_id: str, priority: int = 0) -> None:
    """Put one job on the queue on its own (tests and tools; ftkit writes messages with records)."""
    import redis

    task_class = huey._registry.string_to_task(f"{__name__}.{TASK_NAME}")
    try:
        huey.enqueue(task_class((job_id,), {}, priority=priority))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"cannot reach Redis to queue job {job_id}: {exc}") from exc


def requeue_lost(
    store: jobs.JobStore,
    huey,
    *,
    grace: float,
    offset: int = 0,
    batch: int = 200,
    missing: dict[str, tuple[Any, float]] | None = None,
) -> list[str]:
    """Queue again the jobs that have waited ``grace`` seconds as ``queued`` while their message is
    gone (a Redis failover or an old snapshot, a key cleared by hand, a worker killed between taking
    a message and claiming its job). Exactly once: the move is a compare-and-set on the record's
    ``queue_ref``. Looks at ``batch`` records from ``offset``; the ids queued again.

    With ``missing`` (kept by the caller from scan to scan), a message must also have been missing
    for ``grace`` seconds: a worker that has just taken a message and not yet claimed its job is
    not taken for a loss, and no second message is made for a job that is about to run."""
    now, moved = time.time(), []
    if missing is not None:  # forget what was claimed or re-queued long ago
        for job_id in [j for j, (_, seen) in missing.items() if now - seen > 10 * grace + 60]:
            del missing[job_id]
    for record in store.queued_before(now - grace, batch, offset):
        job_id, ref = record["job_id"], record.get("queue_ref")
        if now - float(record.get("queued_at") or record.get("created_at") or now) < grace:
            continue
        if store.message_pending(record):
            if missing is not None:
                missing.pop(job_id, None)
            continue
        if missing is not None:
            seen_ref, since = missing.setdefault(job_id, (ref, now))
            if seen_ref != ref:
                missing[job_id] = (ref, now)
                continue
            if now - since < grace:
                continue
            del missing[job_id]
        if store.transition(
            job_id,
            statuses.QUEUED,
            allowed=(statuses.QUEUED,),
            expect={"queue_ref": ref},
            message=message_for(huey, job_id, priority_of(record)),
            queued_at=now,
        ):
            store.add_event(
                job_id,
                f"its queue message was lost: queued again after {now - float(record.get('queued_at') or record['created_at']):.0f} s",
            )
            log.warning("re-queued job %s: its queue message was lost", job_id)
            moved.append(job_id)
    return moved


def _bounded_int(value: Any, low: int, high: int, fallback: int) -> int:
    """A number read from a record, which anyone with Redis access can edit, or the fallback."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return fallback


def max_attempts_of(record: JobRecord) -> int:
    """How often a job may be tried: the value recorded at submit, the same for every reaper."""
    return _bounded_int(record.get("max_attempts"), 1, 100, DEFAULT_MAX_ATTEMPTS)


def priority_of(record: JobRecord) -> int:
    return _bounded_int(record.get("priority"), -MAX_PRIORITY, MAX_PRIORITY, 0)


def requeue_orphans(store: jobs.JobStore, huey, *, only: str | None = None) -> list[str]:
    """Send active jobs whose worker stopped heart-beating back to the queue (or fail them after
    the job's own ``max_attempts``); the ids moved or failed. Safe to run from every worker and
    client at once: each move is a compare-and-set, and writes the record and its message together."""
    moved = []
    orphans = (
        store.orphans()
        if only is None
        else [r for r in [store.get(only)] if r["status"] in statuses.ACTIVE]
    )
    live = {w["worker_id"] for w in store.workers()} if orphans else set()
    for record in orphans:
        job_id, worker, attempt = record["job_id"], record.get("worker"), record.get("attempt", 1)
        max_attempts = max_attempts_of(record)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            attempt = max_attempts  # a record edited by hand: no number to count on, so no retry
        why = (
            f"worker {worker} is alive but no longer running it (its end was lost, as when "
            f"Redis restarts from an older state) during {record['status']}"
            if worker in live
            else f"worker {worker} stopped heart-beating during {record['status']}"
        )
        if attempt >= max_attempts:
            if store.transition(
                job_id,
                statuses.FAILED,
                allowed=statuses.ACTIVE,
                expect_worker=worker,
                finished_at=time.time(),
                error=f"{why}; gave up after {attempt} attempts (max_attempts={max_attempts})",
            ):
                store.add_event(job_id, f"{why}; failed after {attempt} of {max_attempts} attempts")
                moved.append(job_id)
            continue
        if store.transition(
            job_id,
            statuses.QUEUED,
            allowed=statuses.ACTIVE,
            expect_worker=worker,
            message=message_for(huey, job_id, priority_of(record)),
            attempt=attempt + 1,
            worker=None,
            stop=None,
            queued_at=time.time(),
        ):
            store.add_event(job_id, f"{why}; re-queued as attempt {attempt + 1} of {max_attempts}")
            moved.append(job_id)
            log.warning("re-queued job %s: %s", job_id, why)
    return moved
