"""Where Huey keeps its queue, in each backend: the one module that knows Huey's private layout.

A job's record and its queue message are written in one transaction (see ``contract``), so the
job store writes the message itself, where Huey's consumer will look for it, rather than through
``huey.enqueue``. That ties ftkit to a layout Huey does not publish; this module holds all of it,
as read from ``huey/storage.py`` (Huey 3.5):

``PriorityRedisStorage`` (``PriorityRedisHuey``)
    One sorted set per queue, keyed ``huey.redis.<name>`` (``name`` with every character outside
    ``[A-Za-z0-9_]`` removed). A member is an 8-byte big-endian count of microseconds since the
    epoch followed by the serialized task; its score is ``-priority``. The consumer pops with
    ``BZPOPMIN``/``ZPOPMIN`` and drops the first 8 bytes: the highest priority first and, within
    one priority, the members' byte order, which the time prefix makes first in, first out (and
    two identical tasks distinct members).

``SqliteStorage`` (``SqliteHuey``)
    A ``task`` table in the queue's file: ``id INTEGER PRIMARY KEY, queue TEXT, data BLOB,
    priority REAL DEFAULT 0.0``, indexed on ``(queue, priority DESC, id)``. The consumer reads
    ``WHERE queue = ? ORDER BY priority DESC, id LIMIT 1`` and deletes that row. Huey creates the
    table when it opens the file; without ``strict_fifo`` SQLite may reuse a deleted row's id.

Each written message gets a reference (the record's ``queue_ref``) that says whether it is still
waiting: a reaper tells a queued job whose message was lost from one that is merely waiting.
"""

from __future__ import annotations

import re
import sqlite3
import struct
import time
import uuid
from dataclasses import dataclass

REDIS_KEY_PREFIX = "huey.redis."  # RedisStorage.queue_key
SQLITE_TABLE = "task"  # SqliteStorage.table_task
TIME_PREFIX = struct.Struct(">Q")  # RedisPriorityQueue.enqueue: microseconds, big-endian


@dataclass(frozen=True)
class QueueMessage:
    """A serialized Huey task for one job, to be written with the record it belongs to."""

    queue: str  # the Huey queue's name (``huey.storage.name``)
    data: bytes
    priority: int = 0


# -- Redis: a sorted set per queue ---------------------------------------------------------------
def redis_queue_key(queue: str) -> str:
    """The sorted set Huey's consumer pops a queue's messages from."""
    return REDIS_KEY_PREFIX + re.sub(r"[^A-Za-z0-9_]", "", queue)


def redis_member(message: QueueMessage) -> tuple[str, bytes, float]:
    """Where and how Huey's PriorityRedisStorage would keep this message: the sorted set's key, the
    member (a microsecond time prefix, then the data) and its score (``-priority``)."""
    member = TIME_PREFIX.pack(int(time.time() * 1e6)) + message.data
    return redis_queue_key(message.queue), member, -message.priority


def redis_ref(message: QueueMessage, member: bytes) -> str:
    """The record's ``queue_ref`` to a message written by ``redis_member``: unique, since its
    member is."""
    return f"{message.queue}:{member.hex()}"


def redis_location(ref: object) -> tuple[str, bytes] | None:
    """The key and member a ``queue_ref`` names, or None where it names none (a record is data
    that anyone with the queue's URL may have written)."""
    queue, _, member = str(ref or "").partition(":")
    try:
        data = bytes.fromhex(member)
    except ValueError:
        return None
    return (redis_queue_key(queue), data) if data else None


# -- SQLite: the task table ----------------------------------------------------------------------
def sqlite_enqueue(db: sqlite3.Connection, message: QueueMessage) -> str:
    """Write a message into Huey's ``task`` table inside the caller's transaction; the record's
    ``queue_ref`` to it. Huey may reuse a deleted row's id: a random token keeps each reference
    unique for a reaper's compare-and-set."""
    cursor = db.execute(
        f"INSERT INTO {SQLITE_TABLE} (queue, data, priority) VALUES (?, ?, ?)",
        (message.queue, message.data, message.priority),
    )
    return f"{message.queue}:{cursor.lastrowid}:{uuid.uuid4().hex[:8]}"


def sqlite_pending(db: sqlite3.Connection, ref: object, job_id: object) -> bool:
    """Whether the message ``ref`` names still waits in the ``task`` table. A reused row id may
    hold another job's message, so the row must also name ``job_id``."""
    queue, _, rest = str(ref or "").partition(":")
    rowid = rest.partition(":")[0]
    if not rowid.isdigit():
        return False
    row = db.execute(
        f"SELECT data FROM {SQLITE_TABLE} WHERE id=? AND queue=?", (int(rowid), queue)
    ).fetchone()
    return row is not None and str(job_id).encode() in bytes(row[0])
