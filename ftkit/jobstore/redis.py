"""The Redis job store: for a queue shared by many machines.

Each job is a hash of JSON values; sorted sets by creation time index all jobs, each status, each
tag and each tag and status, and a hash holds the worker of every active job. Lua scripts move a
job between indexes in the same step as its status, and read a page of records in one round trip.
Huey's queue lives in the same Redis, where ``huey_layout`` says, so a record and its message are
written in one MULTI.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core.records import JobRecord, WorkerInfo
from ..core.statuses import ACTIVE, FINAL, QUEUED, STATUSES
from ..errors import BrokerUnavailable, JobExists, JobNotFound
from . import huey_layout
from .contract import LOG_LINES_KEPT, JobStore, as_list, as_sweep, dumps, expectations
from .huey_layout import QueueMessage


class RedisJobStore(JobStore):
    """The job store on a Redis server (``redis://`` or ``unix://`` URL); see the module."""

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

    def create(self, record: JobRecord, message: QueueMessage | None = None) -> str:
        job_id = record["job_id"]
        idem = record.get("idempotency_key")
        queued = huey_layout.redis_member(message) if message else None
        if message and queued:
            record = {**record, "queue_ref": huey_layout.redis_ref(message, queued[1])}
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
                        self._k("job", job_id), mapping={k: dumps(v) for k, v in record.items()}
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

    def _decode(self, raw: dict[bytes, bytes]) -> JobRecord:
        # One parse of the whole record, not one per field: five times faster on a full record.
        fields = (json.dumps(k.decode()).encode() + b":" + v for k, v in raw.items())
        return json.loads(b"{" + b",".join(fields) + b"}")

    def get(self, job_id: str) -> JobRecord:
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
            self.r.hset, self._k("job", job_id), mapping={k: dumps(v) for k, v in fields.items()}
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
        expected = {k: dumps(v) for k, v in expectations(expect, fields).items()}
        queue_key, member, score = huey_layout.redis_member(message) if message else ("", b"", 0)
        if message:
            fields["queue_ref"] = huey_layout.redis_ref(message, member)
        args: list[Any] = [
            dumps(list(allowed)),
            dumps(to),
            json.dumps(expected) if expected else "{}",
            member,
            score,
        ]
        for k, v in fields.items():
            args += [k, dumps(v)]
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

    def _records(self, ids: list[bytes]) -> list[JobRecord]:
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
    ) -> list[JobRecord]:
        if tag is None:
            index = self._k("jobs") if status is None else self._k("status", status)
        elif status is None:
            index = self._k("tag", tag)
        else:
            self._ensure_indexes()
            index = self._tag_status(status, tag)
        found: list[JobRecord] = []
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
        if idem := record.get("idempotency_key"):
            pipe.delete(self._k("idem", idem))
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

    def message_pending(self, record: JobRecord) -> bool:
        found = huey_layout.redis_location(record.get("queue_ref"))
        return found is not None and self._call(self.r.zscore, *found) is not None

    def queued_before(self, before: float, limit: int, offset: int = 0) -> list[JobRecord]:
        ids = self._call(
            self.r.zrangebyscore, self._k("status", QUEUED), "-inf", before, offset, limit
        )
        return self._records(ids)

    def add_metrics(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._call(self.r.rpush, self._k("metrics", job_id), *[dumps(r) for r in rows])

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
        pipe.set(self._k("sweep", sweep_id), dumps(record), nx=True)
        pipe.zadd(self._k("sweeps"), {sweep_id: record["created_at"]}, nx=True)
        created, _ = self._call(pipe.execute)
        if not created:
            raise JobExists(f"a sweep with id {sweep_id!r} exists already")

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        record = as_sweep(self._call(self.r.get, self._k("sweep", sweep_id)))
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
            records = [r for r in map(as_sweep, values) if r is not None]
            found += [r for r in records if tag is None or tag in as_list(r.get("tags"))]
            start += page
        return found[:limit]

    def delete_sweep(self, sweep_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self._k("sweep", sweep_id))
        pipe.zrem(self._k("sweeps"), sweep_id)
        removed, _ = self._call(pipe.execute)
        if not removed:
            raise JobNotFound(f"no sweep with id {sweep_id!r}")

    def heartbeat(self, worker_id: str, info: WorkerInfo, ttl: float) -> None:
        pipe = self.r.pipeline()
        pipe.set(
            self._k("worker", worker_id),
            dumps({**info, "worker_id": worker_id, "last_seen": time.time()}),
            px=int(ttl * 1000),
        )
        pipe.sadd(self._k("workers"), worker_id)
        self._call(pipe.execute)

    def forget_worker(self, worker_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self._k("worker", worker_id))
        pipe.srem(self._k("workers"), worker_id)
        self._call(pipe.execute)

    def workers(self) -> list[WorkerInfo]:
        ids = sorted(self._call(self.r.smembers, self._k("workers")))
        if not ids:
            return []
        values = self._call(self.r.mget, [self._k("worker", i.decode()) for i in ids])
        dead = [i for i, v in zip(ids, values) if v is None]
        if dead:
            self._call(self.r.srem, self._k("workers"), *dead)
        return [json.loads(v) for v in values if v is not None]
