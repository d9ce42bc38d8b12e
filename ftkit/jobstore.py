"""Job records, status transitions, metrics, logs, cancel requests and worker heartbeats.

One interface (``JobStore``) with a Redis and a SQLite implementation; the tests run one suite
against both. Values are stored as JSON, never pickled: a job record is data, not code.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from .errors import BrokerUnavailable, JobNotFound

QUEUED, PREPARING, TRAINING, SAVING = "queued", "preparing", "training", "saving"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
ACTIVE = (PREPARING, TRAINING, SAVING)
FINAL = (COMPLETED, FAILED, CANCELLED)
STATUSES = (QUEUED, *ACTIVE, *FINAL)
LOG_LINES_KEPT = 500
# Why a running job is asked to stop: read by the kernel with one cheap field read per poll.
STOP_CANCEL, STOP_HANDOFF, STOP_TIMEOUT = "cancel", "handoff", "timeout"


class JobStore:
    """The contract both backends keep. Records are plain dicts of JSON values."""

    backend = "base"

    def ping(self) -> bool:
        """True when the backend answers."""
        raise NotImplementedError

    def create(self, record: dict[str, Any]) -> str:
        """Store a new record (status queued) and return its job id. With an ``idempotency_key``
        that an existing job already holds, store nothing and return that job's id."""
        raise NotImplementedError

    def get(self, job_id: str) -> dict[str, Any]:
        """The whole record; JobNotFound when there is none."""
        raise NotImplementedError

    def get_field(self, job_id: str, name: str) -> Any:
        """One field, cheaply (the cancel check reads this at every training step)."""
        raise NotImplementedError

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields (never ``status``: use transition)."""
        raise NotImplementedError

    def transition(
        self, job_id: str, to: str, *, allowed: Iterable[str] = (), **fields: Any
    ) -> bool:
        """Atomically move to status ``to`` (and set fields) if the current status is in
        ``allowed`` (any when empty), and when ``fields`` has ``expect_worker``, only if the record's
        worker is that one. False when the record was not in an allowed state."""
        raise NotImplementedError

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        raise NotImplementedError

    def count(self, status: str | None = None) -> int:
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

    def add_event(self, job_id: str, message: str) -> None:
        """An event is a log line the monitor and report show with a marker."""
        self.add_logs(job_id, [f"[ftkit {time.strftime('%H:%M:%S')}] {message}"])

    def orphans(self) -> list[dict[str, Any]]:
        """Active jobs whose worker no longer heartbeats."""
        live = {w["worker_id"] for w in self.workers()}
        found = []
        for status in ACTIVE:
            found += [
                r
                for r in self.list_jobs(status=status, limit=10_000)
                if r.get("worker") not in live
            ]
        return found


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class RedisJobStore(JobStore):
    """Hashes of JSON values, one per job; a sorted set for order, a set per status."""

    backend = "redis"
    PREFIX = "ftkit:"

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
    if ARGV[3] ~= '' and redis.call('HGET', job, 'worker') ~= ARGV[3] then return 0 end
    for i = 4, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
    redis.call('HSET', job, 'status', ARGV[2])
    local id = cjson.decode(redis.call('HGET', job, 'job_id'))
    redis.call('SREM', KEYS[2] .. cjson.decode(cur), id)
    redis.call('SADD', KEYS[2] .. cjson.decode(ARGV[2]), id)
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

    def create(self, record: dict[str, Any]) -> str:
        job_id = record["job_id"]
        key = record.get("idempotency_key")
        if key:
            won = self._call(self.r.set, self._k("idem", key), job_id, nx=True)
            if not won:
                existing = self._call(self.r.get, self._k("idem", key))
                return existing.decode()
        pipe = self.r.pipeline()
        pipe.hset(self._k("job", job_id), mapping={k: _dumps(v) for k, v in record.items()})
        pipe.zadd(self._k("jobs"), {job_id: record["created_at"]})
        pipe.sadd(self._k("status", record["status"]), job_id)
        self._call(pipe.execute)
        return job_id

    def _decode(self, raw: dict[bytes, bytes]) -> dict[str, Any]:
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self._call(self.r.hgetall, self._k("job", job_id))
        if not raw:
            raise JobNotFound(f"no job with id {job_id!r}")
        return self._decode(raw)

    def get_field(self, job_id: str, name: str) -> Any:
        raw = self._call(self.r.hget, self._k("job", job_id), name)
        return None if raw is None else json.loads(raw)

    def update(self, job_id: str, **fields: Any) -> None:
        if "status" in fields:
            raise ValueError("use transition() to change a job's status")
        self._call(
            self.r.hset, self._k("job", job_id), mapping={k: _dumps(v) for k, v in fields.items()}
        )

    def transition(
        self, job_id: str, to: str, *, allowed: Iterable[str] = (), **fields: Any
    ) -> bool:
        expect = fields.pop("expect_worker", None)
        args: list[str] = [_dumps(list(allowed)), _dumps(to), _dumps(expect) if expect else ""]
        for k, v in fields.items():
            args += [k, _dumps(v)]
        done = self._call(
            self._transition, keys=[self._k("job", job_id), self._k("status", "")], args=args
        )
        if done == -1:
            raise JobNotFound(f"no job with id {job_id!r}")
        return done == 1

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if status is None:
            ids = self._call(self.r.zrevrange, self._k("jobs"), 0, limit - 1)
        else:
            members = self._call(self.r.smembers, self._k("status", status))
            if not members:
                return []
            pipe = self.r.pipeline()
            for m in members:
                pipe.zscore(self._k("jobs"), m)
            scores = self._call(pipe.execute)
            ids = [m for _, m in sorted(zip(scores, members), key=lambda p: -(p[0] or 0))][:limit]
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hgetall(self._k("job", job_id.decode()))
        return [self._decode(raw) for raw in self._call(pipe.execute) if raw]

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._call(self.r.zcard, self._k("jobs"))
        return self._call(self.r.scard, self._k("status", status))

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
            self._call(pipe.execute)

    def logs(self, job_id: str, n: int = 50) -> list[str]:
        return [x.decode() for x in self._call(self.r.lrange, self._k("logs", job_id), -n, -1)]

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
    """The embedded default: one SQLite file (WAL), shared by the client, the worker and its kernel."""

    backend = "sqlite"
    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS ftkit_jobs (
        job_id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,
        idempotency_key TEXT UNIQUE, data TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS ftkit_jobs_status ON ftkit_jobs (status, created_at);
    CREATE INDEX IF NOT EXISTS ftkit_jobs_created ON ftkit_jobs (created_at);
    CREATE TABLE IF NOT EXISTS ftkit_metrics (job_id TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS ftkit_metrics_job ON ftkit_metrics (job_id);
    CREATE TABLE IF NOT EXISTS ftkit_logs (id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, line TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS ftkit_logs_job ON ftkit_logs (job_id, id);
    CREATE TABLE IF NOT EXISTS ftkit_workers (worker_id TEXT PRIMARY KEY, expires REAL NOT NULL, data TEXT NOT NULL);
    """

    def __init__(self, path: str | Path):
        self.path = str(Path(path).expanduser())
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(self._SCHEMA)

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

    def create(self, record: dict[str, Any]) -> str:
        with self._db() as db:
            key = record.get("idempotency_key")
            if key:
                row = db.execute(
                    "SELECT job_id FROM ftkit_jobs WHERE idempotency_key=?", (key,)
                ).fetchone()
                if row:
                    return row[0]
            db.execute(
                "INSERT INTO ftkit_jobs (job_id, status, created_at, idempotency_key, data) VALUES (?,?,?,?,?)",
                (record["job_id"], record["status"], record["created_at"], key, _dumps(record)),
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

    def update(self, job_id: str, **fields: Any) -> None:
        if "status" in fields:
            raise ValueError("use transition() to change a job's status")
        with self._db() as db:
            record = {**self._row(db, job_id), **fields}
            db.execute("UPDATE ftkit_jobs SET data=? WHERE job_id=?", (_dumps(record), job_id))

    def transition(
        self, job_id: str, to: str, *, allowed: Iterable[str] = (), **fields: Any
    ) -> bool:
        expect = fields.pop("expect_worker", None)
        allowed = tuple(allowed)
        with self._db() as db:
            record = self._row(db, job_id)
            if allowed and record["status"] not in allowed:
                return False
            if expect and record.get("worker") != expect:
                return False
            record.update(fields, status=to)
            db.execute(
                "UPDATE ftkit_jobs SET status=?, data=? WHERE job_id=?",
                (to, _dumps(record), job_id),
            )
        return True

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        sql, args = "SELECT data FROM ftkit_jobs", cast(tuple[str, ...], ())
        if status is not None:
            sql, args = sql + " WHERE status=?", (status,)
        rows = (
            self._conn()
            .execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._conn().execute("SELECT COUNT(*) FROM ftkit_jobs").fetchone()[0]
        return (
            self._conn()
            .execute("SELECT COUNT(*) FROM ftkit_jobs WHERE status=?", (status,))
            .fetchone()[0]
        )

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
