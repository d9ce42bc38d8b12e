"""Job records, status transitions, metrics, logs, cancel requests, worker heartbeats, and the
records of sweeps (which jobs were queued together, over which values).

One contract (``contract.JobStore``) and one module per backend, as Huey keeps its storage:
``redis`` for a queue shared by many machines, ``sqlite`` for the embedded default. The tests run
one suite against both. Values are stored as JSON, never pickled: a job record is data, not code.

A job's queue message lives in the same backend as its record, and each store writes the two in
one transaction (a record never exists without its message, nor a message without its record).
So the stores write where Huey keeps its queue; ``huey_layout`` is the one module that knows
where that is. The record keeps a ``queue_ref`` to its message, which lets a reaper tell a queued
job whose message was lost from one that is merely waiting.

Importing the package connects to nothing and imports no client library: ``redis`` is imported
when a Redis store is opened.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

from ..errors import JobExists, JobNotFound  # what the contract raises, for its callers
from .contract import LOG_LINES_KEPT, JobStore, running
from .huey_layout import QueueMessage
from .redis import RedisJobStore
from .sqlite import SqliteJobStore

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "LOG_LINES_KEPT",
    "JobExists",
    "JobNotFound",
    "JobStore",
    "QueueMessage",
    "RedisJobStore",
    "SqliteJobStore",
    "new_worker_id",
    "open_store",
    "running",
]


def open_store(settings: Settings) -> JobStore:
    """The job store that lives beside the queue chosen by ``settings``."""
    if settings.redis_url:
        return RedisJobStore(settings.redis_url)
    return SqliteJobStore(settings.queue_db)


def new_worker_id() -> str:
    """A worker's name in heartbeats and records: its host, its process and a few random digits
    (a pid is reused after a restart)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
