"""Job records, status transitions, metrics, logs, cancel requests, worker heartbeats, and the
records of sweeps (which jobs were queued together, over which values).

One interface (``JobStore``) with a Redis and a SQLite implementation; the tests run one suite
against both. Values are stored as JSON, never pickled: a job record is data, not code.

A job's queue message lives in the same backend as its record, and each store writes the two in
one transaction (a record never exists without its message, nor a message without its record).
So each store knows where Huey keeps its queue in that backend: a sorted set on Redis, the
``task`` table in SQLite. The record keeps a ``queue_ref`` to its message, which lets a reaper
tell a queued job whose message was lost from one that is merely waiting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .core.statuses import (
    ACTIVE,
    CANCELLED,
    FINAL,
    QUEUED,
    STATUSES,
    STOP_CANCEL,
)
from .errors import BrokerUnavailable, JobExists, JobNotFound

log = logging.getLogger("ftkit.jobstore")

LOG_LINES_KEPT = 500


@dataclass(frozen=True)
class QueueMessage:
    """A serialized Huey task for one job, to be written with the record it belongs to."""

    queue: str  # the Huey queue's name
    data: bytes
    priority: int = 0


class JobStore:
    """The contract both backends keep. Records are plain dicts of JSON values."""

    backend = "base"

    def ping(self) -> bool:
        """True when the backend answers."""
        raise NotImplementedError

    def create(self, record: dict[str, Any], message: QueueMessage | None = None) -> str:
        """Store a new record (status queued) and its queue message, all or nothing, and return
        its job id. With an ``idempotency_key`` that an existing job already holds, store nothing
        and return that job's id. JobExists when a job with this id exists (an id chosen by the
        caller is used once, atomically)."""
        raise NotImplementedError

    def get(self, job_id: str) -> dict[str, Any]:
        """The whole record; JobNotFound when there is none."""
        raise NotImplementedError

    def get_field(self, job_id: str, name: str) -> Any:
        """One field, cheaply (the cancel check reads this at every training step)."""
        raise NotImplementedError

    def get_fields(self, job_id: str, *names: str) -> dict[str, Any]:
        """A few fields in one read (a kernel's poll: stop request, worker, attempt); a missing
        field reads None."""
        raise NotImplementedError

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields (never ``status``: use transition)."""
        raise NotImplementedError

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        allowed: Iterable[str] = (),
        expect: dict[str, Any] | None = None,
        message: QueueMessage | None = None,
        **fields: Any,
    ) -> bool:
        """Atomically move to status ``to`` (and set fields) if the current status is in
        ``allowed`` (any when empty) and each field in ``expect`` (``expect_worker=`` is short for
        ``expect={"worker": ...}``) holds that value; with ``message``, queue it in the same
        transaction. False when the record was not in an allowed state."""
        raise NotImplementedError

    def message_pending(self, record: dict[str, Any]) -> bool:
        """Whether the queue message the record refers to (``queue_ref``) is still in the queue."""
        raise NotImplementedError

    def queued_before(self, before: float, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """Queued records created before ``before``, oldest first (the reaper's candidates)."""
        raise NotImplementedError

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 50,
        *,
        tag: str | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Newest first, ``limit`` of them after skipping ``offset``; with ``tag``, only jobs whose
        record's ``tags`` hold it. Read through an index per status, per tag and per tag and
        status, so a page costs what it shows, however many jobs there are."""
        raise NotImplementedError

    def delete(self, job_id: str) -> None:
        """Remove the record, its metrics, logs and every index entry (status, tags, idempotency
        key); JobNotFound when there is none. The caller decides whether the job may go."""
        raise NotImplementedError

    def count(self, status: str | None = None) -> int:
        """How many jobs (in ``status``): kept with the records, never counted one by one."""
        raise NotImplementedError

    def holders(self) -> dict[str, Any]:
        """Each active job's id and the worker recorded as running it, read from an index kept
        with the status (not from the records): the orphan scan runs on every heartbeat."""
        raise NotImplementedError

    def add_metrics(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Metric rows from index ``start`` on (a live view reads only what is new)."""
        raise NotImplementedError

    def trim_metrics(self, job_id: str, after_step: int) -> None:
        """Drop rows logged after ``after_step``: a resumed job continues its history from its checkpoint."""
        raise NotImplementedError

    def add_logs(self, job_id: str, lines: list[str]) -> None:
        """Append log lines; only the last LOG_LINES_KEPT are kept."""
        raise NotImplementedError

    def logs(self, job_id: str, n: int = 50) -> list[str]:
        raise NotImplementedError

    def logs_since(self, job_id: str, cursor: int = 0) -> tuple[list[str], int]:
        """The kept lines appended after ``cursor`` (0: from the first kept line) and the cursor
        to pass next time: a follower reads each line once, however the tail is trimmed."""
        raise NotImplementedError

    def create_sweep(self, record: dict[str, Any]) -> None:
        """Store a sweep's record (``sweep_id``, ``created_at``, its spec, runs and tags);
        JobExists when a sweep holds that id."""
        raise NotImplementedError

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        """A sweep's record; JobNotFound when there is none."""
        raise NotImplementedError

    def list_sweeps(self, limit: int = 20, *, tag: str | None = None) -> list[dict[str, Any]]:
        """Sweep records, newest first; with ``tag``, those whose ``tags`` hold it (sweeps are
        few: a tag is matched by reading them, not through an index)."""
        raise NotImplementedError

    def delete_sweep(self, sweep_id: str) -> None:
        """Remove a sweep's record (not its jobs); JobNotFound when there is none."""
        raise NotImplementedError

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl: float) -> None:
        """Say this worker is alive for the next ``ttl`` seconds."""
        raise NotImplementedError

    def forget_worker(self, worker_id: str) -> None:
        raise NotImplementedError

    def workers(self) -> list[dict[str, Any]]:
        """Live workers (heartbeat not expired), each with ``worker_id`` and ``last_seen``."""
        raise NotImplementedError

    # -- shared behaviour, written once ---------------------------------------------------------
    def request_cancel(self, job_id: str) -> str:
        """Ask a job to stop; a queued job is cancelled at once. Returns the status after."""
        if self.get(job_id)["status"] in FINAL:
            return self.get_field(job_id, "status")
        self.update(job_id, cancel_requested=True, stop=STOP_CANCEL)
        if self.transition(
            job_id,
            CANCELLED,
            allowed=(QUEUED,),
            finished_at=time.time(),
            error="cancelled before it started",
        ):
            self.add_event(job_id, "cancelled while queued")
        return self.get_field(job_id, "status")

    @contextlib.contextmanager
    def end_watch(self, job_id: str) -> Iterator[Callable[[float], None]]:
        """A sleep of up to ``timeout`` seconds that returns as soon as the job has ended: a waiting
        client sees the end at once, not at its next poll. Here, a cheap read of the status every
        50 ms; Redis is told by the status move itself."""

        def sleep(timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if self.get_field(job_id, "status") in FINAL:
                    return
                time.sleep(min(0.05, left))

        yield sleep

    def add_event(self, job_id: str, message: str) -> None:
        """An event is a log line the monitor and report show with a marker."""
        self.add_logs(job_id, [f"[ftkit {time.strftime('%H:%M:%S')}] {message}"])

    def orphans(self) -> list[dict[str, Any]]:
        """Active jobs whose worker no longer heartbeats, or heartbeats without them: a live
        worker's heartbeat noted after the job's claim (``noted_at`` is taken before the worker
        reads its job, which it names from before its claim on) that names no job or another one
        means the worker has moved on, as when a Redis restored from an older state forgot the
        job's end. Only these records are read: a heartbeat costs the same with one running job or
        a thousand."""
        live = {w["worker_id"]: w for w in self.workers()}
        found = []
        for job_id, worker in sorted(self.holders().items()):
            beat = live.get(worker) if isinstance(worker, str) else None
            if beat is not None and (beat.get("current_job") == job_id or "noted_at" not in beat):
                continue
            try:
                record = self.get(job_id)
            except JobNotFound:
                continue  # deleted meanwhile
            if record.get("status") in ACTIVE and not running(record, live):
                found.append(record)
        return found


def running(record: dict[str, Any], live: dict[str, dict[str, Any]]) -> bool:
    """Whether the live worker the record names may be running the job: it says so, or its last
    heartbeat was noted before it claimed the job (a second of slack for clock steps)."""
    held_by = record.get("worker")
    beat = live.get(held_by) if isinstance(held_by, str) else None
    if beat is None:
        return False
    noted_at, claimed_at = beat.get("noted_at"), record.get("started_at")
    if beat.get("current_job") == record["job_id"] or not isinstance(noted_at, (int, float)):
        return True
    return not isinstance(claimed_at, (int, float)) or noted_at <= claimed_at + 1.0


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _sweep(raw: str | bytes | None) -> dict[str, Any] | None:
    """A stored sweep record, or None where what is stored is not one (anyone with the Redis URL
    writes every key: one garbled record must not hide the others)."""
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _expectations(expect: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    merged = dict(expect or {})
    worker = fields.pop("expect_worker", None)
    if worker:
        merged["worker"] = worker
    return merged


class RedisJobStore(JobStore):
    """Hashes of JSON values, one per job; sorted sets by creation time for all jobs, per status,
    per tag and per tag and status, so every listing reads only what it shows, and a hash of the
    active jobs' workers for the orphan scan. The transition script moves a job between indexes
    in the same step as its status."""

    backend = "redis"
    PREFIX = "ftkit:"

    # KEYS: job hash, status-index prefix, Huey queue, tag-and-status-index prefix, holders hash,
    # the job's end channel (told the final status, for end_watch).
    # ARGV: allowed statuses (JSON list), new status (JSON), expected fields (JSON object of
    # JSON-encoded values), queue member ('' for none), its score, then field/value pairs.
    _TRANSITION = """
    local job = KEYS[1]
    local cur = redis.call('HGET', job, 'status')
    if not cur then return -1 end
    local allowed = cjson.decode(ARGV[1])
    if #allowed > 0 then
      local ok = false
      for _, s in ipairs(allowed) do if cjson.encode(s) == cur then ok = true end end
      if not ok then return 0 end
    end
    for field, value in pairs(cjson.decode(ARGV[3])) do
      local held = redis.call('HGET', job, field)
      if value == 'null' then
        if held and held ~= 'null' then return 0 end
      elseif held ~= value then return 0 end
    end
    for i = 6, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
    redis.call('HSET', job, 'status', ARGV[2])
    local id = cjson.decode(redis.call('HGET', job, 'job_id'))
    local created = tonumber(redis.call('HGET', job, 'created_at')) or 0
    local from, to = cjson.decode(cur), cjson.decode(ARGV[2])
    redis.call('ZREM', KEYS[2] .. from, id)
    redis.call('ZADD', KEYS[2] .. to, created, id)
    local ok, tags = pcall(cjson.decode, redis.call('HGET', job, 'tags') or 'null')
    if ok and type(tags) == 'table' then
      for _, tag in ipairs(tags) do
        if type(tag) == 'string' then
          redis.call('ZREM', KEYS[4] .. from .. ':' .. tag, id)
          redis.call('ZADD', KEYS[4] .. to .. ':' .. tag, created, id)
        end
      end
    end
    if ACTIVE[to] then
      redis.call('HSET', KEYS[5], id, redis.call('HGET', job, 'worker') or 'null')
    else
      redis.call('HDEL', KEYS[5], id)
    end
    if FINAL[to] then redis.call('PUBLISH', KEYS[6], to) end
    if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), ARGV[4]) end
    return 1
    """.replace("ACTIVE[to]", " or ".join(f"to == '{s}'" for s in ACTIVE)).replace(
        "FINAL[to]", " or ".join(f"to == '{s}'" for s in FINAL)
    )

    # A page of an index with its records, in one round trip: each record comes back as one JSON
    # object (its fields' JSON values, named), parsed once. KEYS: the index. ARGV: first and last
    # rank, the job hash prefix. Returns the number of ids read and the records found.
    _PAGE = """
    local ids = redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2])
    local out = {}
    for _, id in ipairs(ids) do
      local raw = redis.call('HGETALL', ARGV[3] .. id)
      if #raw > 0 then
        local fields = {}
        for i = 1, #raw, 2 do fields[#fields + 1] = cjson.encode(raw[i]) .. ':' .. raw[i + 1] end
        out[#out + 1] = '{' .. table.concat(fields, ',') .. '}'
      end
    end
    return {#ids, out}
    """
    PAGE_MAX = 500  # records per script call: a long listing never blocks Redis for long

    # Once per database: fill the tag-and-status indexes and the holders hash from the status
    # indexes, for jobs written before they existed. KEYS: the marker. ARGV: its value, the key
    # prefix, then the statuses (active ones first, their count in ARGV[3]).
    INDEX_VERSION = "2"
    _BACKFILL = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
    local prefix, active = ARGV[2], tonumber(ARGV[3])
    for s = 4, #ARGV do
      local status = ARGV[s]
      local found = redis.call('ZRANGE', prefix .. 'status:' .. status, 0, -1, 'WITHSCORES')
      for i = 1, #found, 2 do
        local id, created = found[i], found[i + 1]
        local job = prefix .. 'job:' .. id
        local ok, tags = pcall(cjson.decode, redis.call('HGET', job, 'tags') or 'null')
        if ok and type(tags) == 'table' then
          for _, tag in ipairs(tags) do
            if type(tag) == 'string' then
              redis.call('ZADD', prefix .. 'tagstatus:' .. status .. ':' .. tag, created, id)
            end
          end
        end
        if s - 3 <= active then
          redis.call('HSET', prefix .. 'holders', id, redis.call('HGET', job, 'worker') or 'null')
        end
      end
    end
    redis.call('SET', KEYS[1], ARGV[1])
    return 1
    """

    def __init__(self, url: str):
        import redis

        self.url = url
        self._redis = redis
        self.r = redis.Redis.from_url(
            url,
            socket_connect_timeout=3,
            socket_timeout=10,
            health_check_interval=30,
            retry_on_timeout=True,
        )
        self._transition = self.r.register_script(self._TRANSITION)
        self._page = self.r.register_script(self._PAGE)
        self._backfill = self.r.register_script(self._BACKFILL)
        self._indexed = False

    def _ensure_indexes(self) -> None:
        """The indexes this version reads exist for every job (one GET per process after the
        first fill, which reads each job once)."""
        if not self._indexed:
            others = [s for s in STATUSES if s not in ACTIVE]
            self._call(
                self._backfill,
                keys=[self._k("indexes")],
                args=[self.INDEX_VERSION, self.PREFIX, len(ACTIVE), *ACTIVE, *others],
            )
            self._indexed = True

    def _k(self, *parts: str) -> str:
        return self.PREFIX + ":".join(parts)

    def where(self) -> str:
        kwargs = self.r.connection_pool.connection_kwargs
        if "path" in kwargs:
            return kwargs["path"]
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    def _call(self, fn, *args, **kwargs):
        """Run one Redis call, turning connection failures into a clear BrokerUnavailable."""
        try:
            return fn(*args, **kwargs)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            raise BrokerUnavailable(f"cannot reach Redis at {self.where()}: {exc}") from exc

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except (self._redis.ConnectionError, self._redis.TimeoutError):
            return False

    @staticmethod
    def _member(message: QueueMessage) -> tuple[str, bytes, float]:
        """Where and how Huey's PriorityRedisStorage keeps a message: a sorted set whose members
        are a microsecond time prefix (FIFO within a priority) and the data, scored -priority."""
        prefix = struct.pack(">Q", int(time.time() * 1e6))
        return f"huey.redis.{message.queue}", prefix + message.data, -message.priority

    def create(self, record: dict[str, Any], message: QueueMessage | None = None) -> str:
        job_id = record["job_id"]
        idem = record.get("idempotency_key")
        queued = self._member(message) if message else None
        if message and queued:
            record = {**record, "queue_ref": f"{message.queue}:{queued[1].hex()}"}
        with self.r.pipeline() as pipe:
            while True:  # WATCH the idempotency key: the whole job is written once, or not at all
                try:
                    job = self._k("job", job_id)
                    self._call(pipe.watch, job, *([self._k("idem", idem)] if idem else []))
                    if idem:
                        existing = self._call(pipe.get, self._k("idem", idem))
                        if existing:
                            return existing.decode()
                    if self._call(pipe.exists, job):
                        raise JobExists(f"a job with id {job_id!r} exists already")
                    pipe.multi()
                    if idem:
                        pipe.set(self._k("idem", idem), job_id)
                    pipe.hset(
                        self._k("job", job_id), mapping={k: _dumps(v) for k, v in record.items()}
                    )
                    pipe.zadd(self._k("jobs"), {job_id: record["created_at"]})
                    pipe.zadd(self._k("status", record["status"]), {job_id: record["created_at"]})
                    for tag in record.get("tags") or ():
                        pipe.zadd(self._k("tag", tag), {job_id: record["created_at"]})
                        pipe.zadd(
                            self._tag_status(record["status"], tag), {job_id: record["created_at"]}
                        )
                    if queued:
                        pipe.zadd(queued[0], {queued[1]: queued[2]})
                    self._call(pipe.execute)
                    return job_id
                except self._redis.WatchError:
                    continue

    def _decode(self, raw: dict[bytes, bytes]) -> dict[str, Any]:
        # One parse of the whole record, not one per field: five times faster on a full record.
        fields = (json.dumps(k.decode()).encode() + b":" + v for k, v in raw.items())
        return json.loads(b"{" + b",".join(fields) + b"}")

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self._call(self.r.hgetall, self._k("job", job_id))
        if not raw:
            raise JobNotFound(f"no job with id {job_id!r}")
        return self._decode(raw)

    def get_field(self, job_id: str, name: str) -> Any:
        raw = self._call(self.r.hget, self._k("job", job_id), name)
        return None if raw is None else json.loads(raw)

    def get_fields(self, job_id: str, *names: str) -> dict[str, Any]:
        raws = self._call(self.r.hmget, self._k("job", job_id), list(names))
        return {n: None if raw is None else json.loads(raw) for n, raw in zip(names, raws)}

    def update(self, job_id: str, **fields: Any) -> None:
        if "status" in fields:
            raise ValueError("use transition() to change a job's status")
        self._call(
            self.r.hset, self._k("job", job_id), mapping={k: _dumps(v) for k, v in fields.items()}
        )

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        allowed: Iterable[str] = (),
        expect: dict[str, Any] | None = None,
        message: QueueMessage | None = None,
        **fields: Any,
    ) -> bool:
        expected = {k: _dumps(v) for k, v in _expectations(expect, fields).items()}
        queue_key, member, score = self._member(message) if message else ("", b"", 0.0)
        if message:
            fields["queue_ref"] = f"{message.queue}:{member.hex()}"
        args: list[Any] = [
            _dumps(list(allowed)),
            _dumps(to),
            json.dumps(expected) if expected else "{}",
            member,
            score,
        ]
        for k, v in fields.items():
            args += [k, _dumps(v)]
        done = self._call(
            self._transition,
            keys=[
                self._k("job", job_id),
                self._k("status", ""),
                queue_key or "unused",
                self._k("tagstatus", ""),
                self._k("holders"),
                self._k("ended", job_id),
            ],
            args=args,
        )
        if done == -1:
            raise JobNotFound(f"no job with id {job_id!r}")
        return done == 1

    def _tag_status(self, status: str, tag: str) -> str:
        """The index of one tag's jobs in one status (a status never holds ``:``, a tag may)."""
        return self._k("tagstatus", f"{status}:{tag}")

    def _records(self, ids: list[bytes]) -> list[dict[str, Any]]:
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hgetall(self._k("job", job_id.decode()))
        return [self._decode(raw) for raw in self._call(pipe.execute) if raw]

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 50,
        *,
        tag: str | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        if tag is None:
            index = self._k("jobs") if status is None else self._k("status", status)
        elif status is None:
            index = self._k("tag", tag)
        else:
            self._ensure_indexes()
            index = self._tag_status(status, tag)
        found: list[dict[str, Any]] = []
        while limit > 0:
            n = min(limit, self.PAGE_MAX)
            read, page = self._call(
                self._page, keys=[index], args=[offset, offset + n - 1, self._k("job", "")]
            )
            found += [json.loads(raw) for raw in page]
            if read < n:
                break
            offset, limit = offset + n, limit - n
        return found

    def delete(self, job_id: str) -> None:
        record = self.get(job_id)
        pipe = self.r.pipeline()
        pipe.delete(
            self._k("job", job_id),
            self._k("metrics", job_id),
            self._k("logs", job_id),
            self._k("logn", job_id),
        )
        pipe.zrem(self._k("jobs"), job_id)
        pipe.hdel(self._k("holders"), job_id)
        for status in STATUSES:
            pipe.zrem(self._k("status", status), job_id)
        for tag in record.get("tags") or ():
            pipe.zrem(self._k("tag", tag), job_id)
            for status in STATUSES:
                pipe.zrem(self._tag_status(status, tag), job_id)
        if record.get("idempotency_key"):
            pipe.delete(self._k("idem", record["idempotency_key"]))
        self._call(pipe.execute)

    def count(self, status: str | None = None) -> int:
        index = self._k("jobs") if status is None else self._k("status", status)
        return self._call(self.r.zcard, index)

    @contextlib.contextmanager
    def end_watch(self, job_id: str) -> Iterator[Callable[[float], None]]:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        self._call(pubsub.subscribe, self._k("ended", job_id))

        def sleep(timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:  # the transition script's message, or None (the subscription's own, or time)
                    if pubsub.get_message(timeout=left) is not None:
                        return
                except (self._redis.ConnectionError, self._redis.TimeoutError):
                    time.sleep(left)  # the caller's next read says what is wrong

        try:
            yield sleep
        finally:
            pubsub.close()

    def holders(self) -> dict[str, Any]:
        self._ensure_indexes()
        raw = self._call(self.r.hgetall, self._k("holders"))
        found = {}
        for job_id, worker in raw.items():
            with contextlib.suppress(ValueError):
                found[job_id.decode()] = json.loads(worker)
        return found

    def message_pending(self, record: dict[str, Any]) -> bool:
        queue, _, member = str(record.get("queue_ref") or "").partition(":")
        try:
            data = bytes.fromhex(member)
        except ValueError:
            return False
        return bool(data) and self._call(self.r.zscore, f"huey.redis.{queue}", data) is not None

    def queued_before(self, before: float, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        ids = self._call(
            self.r.zrangebyscore, self._k("status", QUEUED), "-inf", before, offset, limit
        )
        return self._records(ids)

    def add_metrics(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._call(self.r.rpush, self._k("metrics", job_id), *[_dumps(r) for r in rows])

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        return [
            json.loads(r) for r in self._call(self.r.lrange, self._k("metrics", job_id), start, -1)
        ]

    def trim_metrics(self, job_id: str, after_step: int) -> None:
        key = self._k("metrics", job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    keep = [
                        r
                        for r in pipe.lrange(key, 0, -1)
                        if json.loads(r).get("step", 0) <= after_step
                    ]
                    pipe.multi()
                    pipe.delete(key)
                    if keep:
                        pipe.rpush(key, *keep)
                    self._call(pipe.execute)
                    return
                except self._redis.WatchError:
                    continue

    def add_logs(self, job_id: str, lines: list[str]) -> None:
        if lines:
            pipe = self.r.pipeline()
            pipe.rpush(self._k("logs", job_id), *lines)
            pipe.ltrim(self._k("logs", job_id), -LOG_LINES_KEPT, -1)
            pipe.incrby(self._k("logn", job_id), len(lines))  # lines ever written: the cursor
            self._call(pipe.execute)

    def logs(self, job_id: str, n: int = 50) -> list[str]:
        return [x.decode() for x in self._call(self.r.lrange, self._k("logs", job_id), -n, -1)]

    def logs_since(self, job_id: str, cursor: int = 0) -> tuple[list[str], int]:
        pipe = self.r.pipeline()  # MULTI: the count and the list are read at one instant
        pipe.get(self._k("logn", job_id))
        pipe.lrange(self._k("logs", job_id), 0, -1)
        written, kept = self._call(pipe.execute)
        total = max(int(written or 0), len(kept))
        first = total - len(kept)  # the number of the first kept line
        return [x.decode() for x in kept[max(0, cursor - first) :]], total

    def create_sweep(self, record: dict[str, Any]) -> None:
        sweep_id = record["sweep_id"]
        pipe = self.r.pipeline()  # MULTI: the record and its index entry, together
        pipe.set(self._k("sweep", sweep_id), _dumps(record), nx=True)
        pipe.zadd(self._k("sweeps"), {sweep_id: record["created_at"]}, nx=True)
        created, _ = self._call(pipe.execute)
        if not created:
            raise JobExists(f"a sweep with id {sweep_id!r} exists already")

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        record = _sweep(self._call(self.r.get, self._k("sweep", sweep_id)))
        if record is None:
            raise JobNotFound(f"no sweep with id {sweep_id!r}")
        return record

    def list_sweeps(self, limit: int = 20, *, tag: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        start, page = 0, max(limit, 50)
        while len(found) < limit:
            ids = self._call(self.r.zrevrange, self._k("sweeps"), start, start + page - 1)
            if not ids:
                break
            values = self._call(self.r.mget, [self._k("sweep", i.decode()) for i in ids])
            records = [r for r in map(_sweep, values) if r is not None]
            found += [r for r in records if tag is None or tag in _listed(r.get("tags"))]
            start += page
        return found[:limit]

    def delete_sweep(self, sweep_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self._k("sweep", sweep_id))
        pipe.zrem(self._k("sweeps"), sweep_id)
        removed, _ = self._call(pipe.execute)
        if not removed:
            raise JobNotFound(f"no sweep with id {sweep_id!r}")

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl: float) -> None:
        pipe = self.r.pipeline()
        pipe.set(
            self._k("worker", worker_id),
            _dumps({**info, "worker_id": worker_id, "last_seen": time.time()}),
            px=int(ttl * 1000),
        )
        pipe.sadd(self._k("workers"), worker_id)
        self._call(pipe.execute)

    def forget_worker(self, worker_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self._k("worker", worker_id))
        pipe.srem(self._k("workers"), worker_id)
        self._call(pipe.execute)

    def workers(self) -> list[dict[str, Any]]:
        ids = sorted(self._call(self.r.smembers, self._k("workers")))
        if not ids:
            return []
        values = self._call(self.r.mget, [self._k("worker", i.decode()) for i in ids])
        dead = [i for i, v in zip(ids, values) if v is None]
        if dead:
            self._call(self.r.srem, self._k("workers"), *dead)
        return [json.loads(v) for v in values if v is not None]


class SqliteJobStore(JobStore):
    """The embedded default: one SQLite file (WAL), shared by the client, the worker and its kernel.

    Every listing reads an index in its own order (status, tag, tag and status, creation time);
    counts per status are kept by triggers in the transaction that writes the record, and a
    partial index holds the worker of each active job for the orphan scan."""

    backend = "sqlite"
    _TABLES = (
        """CREATE TABLE IF NOT EXISTS ftkit_jobs (
        job_id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,
        idempotency_key TEXT UNIQUE, data TEXT NOT NULL)""",
        "CREATE TABLE IF NOT EXISTS ftkit_metrics (job_id TEXT NOT NULL, data TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS ftkit_logs (id INTEGER PRIMARY KEY, job_id TEXT NOT NULL,
        line TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS ftkit_tags (tag TEXT NOT NULL, job_id TEXT NOT NULL,
        created_at REAL NOT NULL, status TEXT NOT NULL DEFAULT '', PRIMARY KEY (tag, job_id))""",
        """CREATE TABLE IF NOT EXISTS ftkit_workers (worker_id TEXT PRIMARY KEY,
        expires REAL NOT NULL, data TEXT NOT NULL)""",
        "CREATE TABLE IF NOT EXISTS ftkit_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS ftkit_sweeps (sweep_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL, data TEXT NOT NULL)""",
    )
    _ACTIVE_SQL = "status IN (" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"
    _INDEXES = (
        "CREATE INDEX IF NOT EXISTS ftkit_jobs_status ON ftkit_jobs (status, created_at)",
        "CREATE INDEX IF NOT EXISTS ftkit_jobs_created ON ftkit_jobs (created_at)",
        # The orphan scan reads this index, never the records: which worker holds each active job.
        "CREATE INDEX IF NOT EXISTS ftkit_jobs_holder ON ftkit_jobs "
        f"(json_extract(data, '$.worker'), job_id) WHERE {_ACTIVE_SQL}",
        "CREATE INDEX IF NOT EXISTS ftkit_metrics_job ON ftkit_metrics (job_id)",
        "CREATE INDEX IF NOT EXISTS ftkit_logs_job ON ftkit_logs (job_id, id)",
        "CREATE INDEX IF NOT EXISTS ftkit_tags_newest ON ftkit_tags (tag, created_at)",
        "CREATE INDEX IF NOT EXISTS ftkit_tags_status ON ftkit_tags (tag, status, created_at)",
        "CREATE INDEX IF NOT EXISTS ftkit_tags_job ON ftkit_tags (job_id)",
        "CREATE INDEX IF NOT EXISTS ftkit_sweeps_created ON ftkit_sweeps (created_at)",
        """CREATE TRIGGER IF NOT EXISTS ftkit_jobs_added AFTER INSERT ON ftkit_jobs BEGIN
        INSERT INTO ftkit_counts (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER IF NOT EXISTS ftkit_jobs_removed AFTER DELETE ON ftkit_jobs BEGIN
        UPDATE ftkit_counts SET n = n - 1 WHERE status = OLD.status;
        END""",
        """CREATE TRIGGER IF NOT EXISTS ftkit_jobs_moved AFTER UPDATE OF status ON ftkit_jobs
        WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE ftkit_counts SET n = n - 1 WHERE status = OLD.status;
        INSERT INTO ftkit_counts (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
        UPDATE ftkit_tags SET status = NEW.status WHERE job_id = NEW.job_id;
        END""",
    )

    def __init__(self, path: str | Path):
        self.path = str(Path(path).expanduser())
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._setup()

    def _setup(self) -> None:
        """Create the tables, indexes and triggers, once per file; a file written before the
        per-tag status and the counts existed gets them, filled from its records."""
        names = [statement.split()[5] for statement in (*self._TABLES, *self._INDEXES)]
        found = self._conn().execute(
            f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({','.join('?' * len(names))})",
            names,
        )
        if found.fetchone()[0] == len(names):
            return
        with self._db() as db:
            had_counts = db.execute(
                "SELECT 1 FROM sqlite_master WHERE name='ftkit_counts'"
            ).fetchone()
            for statement in self._TABLES:
                db.execute(statement)
            if "status" not in {row[1] for row in db.execute("PRAGMA table_info(ftkit_tags)")}:
                db.execute("ALTER TABLE ftkit_tags ADD COLUMN status TEXT NOT NULL DEFAULT ''")
                db.execute(
                    "UPDATE ftkit_tags SET status = (SELECT j.status FROM ftkit_jobs j "
                    "WHERE j.job_id = ftkit_tags.job_id)"
                )
            if not had_counts:
                db.execute(
                    "INSERT INTO ftkit_counts (status, n) "
                    "SELECT status, COUNT(*) FROM ftkit_jobs GROUP BY status"
                )
            for statement in self._INDEXES:
                db.execute(statement)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise BrokerUnavailable(
                    f"cannot open the SQLite queue at {self.path}: {exc}"
                ) from exc
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _db(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A transaction: BEGIN IMMEDIATE for writes so read-modify-write is atomic across processes."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def where(self) -> str:
        return self.path

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
            return True
        except (sqlite3.Error, BrokerUnavailable):
            return False

    @staticmethod
    def _enqueue(db: sqlite3.Connection, message: QueueMessage) -> str:
        """Write a message where Huey's SqliteStorage keeps its queue (the ``task`` table of this
        same file, which Huey creates when it opens it); the record's ``queue_ref`` to it."""
        cursor = db.execute(
            "INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)",
            (message.queue, message.data, message.priority),
        )
        # Huey may reuse a deleted row's id: a token keeps each reference unique for the reaper's
        # compare-and-set.
        return f"{message.queue}:{cursor.lastrowid}:{uuid.uuid4().hex[:8]}"

    def create(self, record: dict[str, Any], message: QueueMessage | None = None) -> str:
        with self._db() as db:
            key = record.get("idempotency_key")
            if key:
                row = db.execute(
                    "SELECT job_id FROM ftkit_jobs WHERE idempotency_key=?", (key,)
                ).fetchone()
                if row:
                    return row[0]
            if db.execute(
                "SELECT 1 FROM ftkit_jobs WHERE job_id=?", (record["job_id"],)
            ).fetchone():
                raise JobExists(f"a job with id {record['job_id']!r} exists already")
            if message:
                record = {**record, "queue_ref": self._enqueue(db, message)}
            db.execute(
                "INSERT INTO ftkit_jobs (job_id, status, created_at, idempotency_key, data) VALUES (?,?,?,?,?)",
                (record["job_id"], record["status"], record["created_at"], key, _dumps(record)),
            )
            db.executemany(
                "INSERT OR IGNORE INTO ftkit_tags (tag, job_id, created_at, status) VALUES (?,?,?,?)",
                [
                    (t, record["job_id"], record["created_at"], record["status"])
                    for t in record.get("tags") or ()
                ],
            )
        return record["job_id"]

    @staticmethod
    def _row(db: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = db.execute("SELECT data FROM ftkit_jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return json.loads(row[0])

    def get(self, job_id: str) -> dict[str, Any]:
        with self._db(write=False) as db:
            return self._row(db, job_id)

    def get_field(self, job_id: str, name: str) -> Any:
        row = (
            self._conn()
            .execute("SELECT data -> ? FROM ftkit_jobs WHERE job_id=?", (f'$."{name}"', job_id))
            .fetchone()
        )
        return None if row is None or row[0] is None else json.loads(row[0])

    def get_fields(self, job_id: str, *names: str) -> dict[str, Any]:
        picks = ", ".join("data -> ?" for _ in names)
        row = (
            self._conn()
            .execute(
                f"SELECT {picks} FROM ftkit_jobs WHERE job_id=?",  # only placeholders: no names
                (*(f'$."{name}"' for name in names), job_id),
            )
            .fetchone()
        )
        if row is None:
            return dict.fromkeys(names)
        return {n: None if raw is None else json.loads(raw) for n, raw in zip(names, row)}

    def update(self, job_id: str, **fields: Any) -> None:
        if "status" in fields:
            raise ValueError("use transition() to change a job's status")
        with self._db() as db:
            record = {**self._row(db, job_id), **fields}
            db.execute("UPDATE ftkit_jobs SET data=? WHERE job_id=?", (_dumps(record), job_id))

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        allowed: Iterable[str] = (),
        expect: dict[str, Any] | None = None,
        message: QueueMessage | None = None,
        **fields: Any,
    ) -> bool:
        expected = _expectations(expect, fields)
        allowed = tuple(allowed)
        with self._db() as db:
            record = self._row(db, job_id)
            if allowed and record["status"] not in allowed:
                return False
            if any(record.get(k) != v for k, v in expected.items()):
                return False
            if message:
                fields["queue_ref"] = self._enqueue(db, message)
            record.update(fields, status=to)
            db.execute(
                "UPDATE ftkit_jobs SET status=?, data=? WHERE job_id=?",
                (to, _dumps(record), job_id),
            )
        return True

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 50,
        *,
        tag: str | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        # Each filter has an index in its own order: a page reads what it shows, not every match.
        if limit <= 0:
            return []
        if tag is None:
            sql, args = "SELECT data FROM ftkit_jobs", cast(list[Any], [])
            if status is not None:
                sql, args = sql + " WHERE status=?", [status]
            sql += " ORDER BY created_at DESC"
        else:
            sql = "SELECT j.data FROM ftkit_tags t JOIN ftkit_jobs j ON j.job_id = t.job_id WHERE t.tag=?"
            args = [tag]
            if status is not None:
                sql, args = sql + " AND t.status=?", [tag, status]
            sql += " ORDER BY t.created_at DESC"
        rows = self._conn().execute(sql + " LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._db() as db:
            self._row(db, job_id)  # JobNotFound early
            for table in ("ftkit_jobs", "ftkit_metrics", "ftkit_logs", "ftkit_tags"):
                db.execute(f"DELETE FROM {table} WHERE job_id=?", (job_id,))

    def message_pending(self, record: dict[str, Any]) -> bool:
        queue, _, rest = str(record.get("queue_ref") or "").partition(":")
        rowid = rest.partition(":")[0]
        if not rowid.isdigit():
            return False
        # Huey may reuse a deleted row's id: the row must still name this job.
        row = (
            self._conn()
            .execute("SELECT data FROM task WHERE id=? AND queue=?", (int(rowid), queue))
            .fetchone()
        )
        return row is not None and str(record.get("job_id")).encode() in bytes(row[0])

    def queued_before(self, before: float, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT data FROM ftkit_jobs WHERE status=? AND created_at < ? "
                "ORDER BY created_at LIMIT ? OFFSET ?",
                (QUEUED, before, limit, offset),
            )
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]

    def count(self, status: str | None = None) -> int:
        if status is None:
            return (
                self._conn().execute("SELECT COALESCE(SUM(n), 0) FROM ftkit_counts").fetchone()[0]
            )
        row = (
            self._conn().execute("SELECT n FROM ftkit_counts WHERE status=?", (status,)).fetchone()
        )
        return row[0] if row else 0

    def holders(self) -> dict[str, Any]:
        rows = self._conn().execute(
            "SELECT job_id, json_extract(data, '$.worker') FROM ftkit_jobs "
            f"INDEXED BY ftkit_jobs_holder WHERE {self._ACTIVE_SQL}"
        )
        return dict(rows.fetchall())

    def add_metrics(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self._db() as db:
                db.executemany(
                    "INSERT INTO ftkit_metrics (job_id, data) VALUES (?,?)",
                    [(job_id, _dumps(r)) for r in rows],
                )

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT data FROM ftkit_metrics WHERE job_id=? ORDER BY rowid LIMIT -1 OFFSET ?",
            (job_id, start),
        )
        return [json.loads(r[0]) for r in rows.fetchall()]

    def trim_metrics(self, job_id: str, after_step: int) -> None:
        with self._db() as db:
            db.execute(
                "DELETE FROM ftkit_metrics WHERE job_id=? AND json_extract(data, '$.step') > ?",
                (job_id, after_step),
            )

    def add_logs(self, job_id: str, lines: list[str]) -> None:
        if lines:
            with self._db() as db:
                db.executemany(
                    "INSERT INTO ftkit_logs (job_id, line) VALUES (?,?)",
                    [(job_id, s) for s in lines],
                )
                db.execute(
                    "DELETE FROM ftkit_logs WHERE job_id=? AND id <= (SELECT id FROM ftkit_logs WHERE job_id=? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (job_id, job_id, LOG_LINES_KEPT),
                )

    def logs(self, job_id: str, n: int = 50) -> list[str]:
        rows = (
            self._conn()
            .execute(
                "SELECT line FROM ftkit_logs WHERE job_id=? ORDER BY id DESC LIMIT ?", (job_id, n)
            )
            .fetchall()
        )
        return [r[0] for r in reversed(rows)]

    def logs_since(self, job_id: str, cursor: int = 0) -> tuple[list[str], int]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, line FROM ftkit_logs WHERE job_id=? AND id > ? ORDER BY id",
                (job_id, cursor),
            )
            .fetchall()
        )
        return [r[1] for r in rows], (rows[-1][0] if rows else cursor)

    def create_sweep(self, record: dict[str, Any]) -> None:
        try:
            with self._db() as db:
                db.execute(
                    "INSERT INTO ftkit_sweeps (sweep_id, created_at, data) VALUES (?,?,?)",
                    (record["sweep_id"], record["created_at"], _dumps(record)),
                )
        except sqlite3.IntegrityError:
            raise JobExists(f"a sweep with id {record['sweep_id']!r} exists already") from None

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        row = (
            self._conn()
            .execute("SELECT data FROM ftkit_sweeps WHERE sweep_id=?", (sweep_id,))
            .fetchone()
        )
        record = _sweep(row[0] if row else None)
        if record is None:
            raise JobNotFound(f"no sweep with id {sweep_id!r}")
        return record

    def list_sweeps(self, limit: int = 20, *, tag: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT data FROM ftkit_sweeps", cast(list[Any], [])
        if tag is not None:
            sql += " WHERE EXISTS (SELECT 1 FROM json_each(data, '$.tags') WHERE value = ?)"
            args.append(tag)
        rows = self._conn().execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [r for r in (_sweep(row[0]) for row in rows.fetchall()) if r is not None]

    def delete_sweep(self, sweep_id: str) -> None:
        with self._db() as db:
            if not db.execute("DELETE FROM ftkit_sweeps WHERE sweep_id=?", (sweep_id,)).rowcount:
                raise JobNotFound(f"no sweep with id {sweep_id!r}")

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl: float) -> None:
        now = time.time()
        data = _dumps({**info, "worker_id": worker_id, "last_seen": now})
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO ftkit_workers (worker_id, expires, data) VALUES (?,?,?)",
                (worker_id, now + ttl, data),
            )

    def forget_worker(self, worker_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM ftkit_workers WHERE worker_id=?", (worker_id,))

    def workers(self) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT data FROM ftkit_workers WHERE expires > ? ORDER BY worker_id",
                (time.time(),),
            )
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]


def open_store(settings) -> JobStore:
    """The job store that lives beside the queue chosen by ``settings``."""
    if settings.redis_url:
        return RedisJobStore(settings.redis_url)
    return SqliteJobStore(settings.queue_db)


def new_worker_id() -> str:
    import os
    import uuid

    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
