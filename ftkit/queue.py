"""The Huey instance chosen from Settings, the one task (``run_job``), and re-queueing jobs whose
worker died.

A task carries a job id and nothing executable. Payloads are JSON (never pickle), optionally
signed with ``FTKIT_QUEUE_SECRET``: whoever can write to Redis cannot make a GPU worker run code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any

from huey import PriorityRedisHuey, SqliteHuey
from huey.registry import Message
from huey.serializer import Serializer

from . import jobstore as jobs
from .config import Settings
from .errors import BrokerUnavailable

QUEUE_NAME = "training"
TASK_NAME = "ftkit.run_job"
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
        if self.secret:
            signature, _, data = data.partition(b":")
            expected = hmac.new(self.secret, data, hashlib.sha256).hexdigest().encode()
            if not hmac.compare_digest(signature, expected):
                raise ValueError(
                    "refusing a queue message with a bad signature (FTKIT_QUEUE_SECRET differs?)"
                )
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


def make_huey(settings: Settings):
    """PriorityRedisHuey on Redis (many machines, one queue), SqliteHuey embedded."""
    common: dict[str, Any] = dict(
        name=QUEUE_NAME,
        results=False,
        utc=True,
        serializer=JsonSerializer(os.environ.get("FTKIT_QUEUE_SECRET")),
    )
    if settings.redis_url:
        huey = PriorityRedisHuey(url=settings.redis_url, read_timeout=1, **common)
    else:
        huey = SqliteHuey(filename=settings.queue_db, **common)
    huey.task(name=TASK_NAME)(_run_job)
    return huey


def _run_job(job_id: str) -> None:
    from .worker import execute_job  # the worker side only: papermill loads there, not in clients

    execute_job(job_id)


def enqueue(huey, job_id: str, priority: int = 0) -> None:
    """Put one job on the queue (higher priority runs first on Redis)."""
    import redis

    task_class = huey._registry.string_to_task(f"{__name__}.{TASK_NAME}")
    try:
        huey.enqueue(task_class((job_id,), {}, priority=priority))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"cannot reach Redis to queue job {job_id}: {exc}") from exc


def requeue_orphans(
    store: jobs.JobStore, huey, *, max_attempts: int | None = None, only: str | None = None
) -> list[str]:
    """Send active jobs whose worker stopped heart-beating back to the queue (or fail them after
    ``max_attempts``); the ids moved or failed. Safe to run from every worker and client at once:
    each move is a compare-and-set."""
    if max_attempts is None:
        max_attempts = int(os.environ.get("FTKIT_MAX_ATTEMPTS", "3"))
    moved = []
    orphans = (
        store.orphans()
        if only is None
        else [r for r in [store.get(only)] if r["status"] in jobs.ACTIVE]
    )
    for record in orphans:
        job_id, worker, attempt = (
            record["job_id"],
            record.get("worker"),
            int(record.get("attempt", 1)),
        )
        why = f"worker {worker} stopped heart-beating during {record['status']}"
        if attempt >= max_attempts:
            if store.transition(
                job_id,
                jobs.FAILED,
                allowed=jobs.ACTIVE,
                expect_worker=worker,
                finished_at=time.time(),
                error=f"{why}; gave up after {attempt} attempts",
            ):
                store.add_event(job_id, f"{why}; failed after {attempt} attempts")
                moved.append(job_id)
            continue
        if store.transition(
            job_id,
            jobs.QUEUED,
            allowed=jobs.ACTIVE,
            expect_worker=worker,
            attempt=attempt + 1,
            worker=None,
            stop=None,
        ):
            store.add_event(job_id, f"{why}; re-queued as attempt {attempt + 1}")
            enqueue(huey, job_id)
            moved.append(job_id)
            log.warning("re-queued job %s: %s", job_id, why)
    return moved
