"""The SQLite job store: the embedded default, one file shared by the client, the worker and its
kernel.

One table of records (JSON text, with the status, creation time and idempotency key as columns
for the indexes), and tables for metrics, logs, tags, heartbeats, sweeps and counts per status.
Writes take ``BEGIN IMMEDIATE``, so a read-modify-write is atomic across processes. Huey's queue
lives in the same file (``huey_layout``), so a record and its message share one transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from ..core.records import JobRecord, WorkerInfo
from ..core.statuses import ACTIVE, QUEUED
from ..errors import BrokerUnavailable, JobExists, JobNotFound
from . import huey_layout
from .contract import LOG_LINES_KEPT, JobStore, as_sweep, dumps, expectations
from .huey_layout import QueueMessage


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
        found = self.connection().execute(
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

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are per thread): every call of this store
        on this thread goes through it, so tracing it shows what the store asks of SQLite."""
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
        conn = self.connection()
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
            self.connection().execute("SELECT 1").fetchone()
            return True
        except (sqlite3.Error, BrokerUnavailable):
            return False

    def create(self, record: JobRecord, message: QueueMessage | None = None) -> str:
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
                record = {**record, "queue_ref": huey_layout.sqlite_enqueue(db, message)}
            db.execute(
                "INSERT INTO ftkit_jobs (job_id, status, created_at, idempotency_key, data) VALUES (?,?,?,?,?)",
                (record["job_id"], record["status"], record["created_at"], key, dumps(record)),
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
    def _row(db: sqlite3.Connection, job_id: str) -> JobRecord:
        row = db.execute("SELECT data FROM ftkit_jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return json.loads(row[0])

    def get(self, job_id: str) -> JobRecord:
        with self._db(write=False) as db:
            return self._row(db, job_id)

    def get_field(self, job_id: str, name: str) -> Any:
        row = (
            self.connection()
            .execute("SELECT data -> ? FROM ftkit_jobs WHERE job_id=?", (f'$."{name}"', job_id))
            .fetchone()
        )
        return None if row is None or row[0] is None else json.loads(row[0])

    def get_fields(self, job_id: str, *names: str) -> dict[str, Any]:
        picks = ", ".join("data -> ?" for _ in names)
        row = (
            self.connection()
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
            db.execute("UPDATE ftkit_jobs SET data=? WHERE job_id=?", (dumps(record), job_id))

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
        expected = expectations(expect, fields)
        allowed = tuple(allowed)
        with self._db() as db:
            record = self._row(db, job_id)
            if allowed and record["status"] not in allowed:
                return False
            if any(record.get(k) != v for k, v in expected.items()):
                return False
            if message:
                fields["queue_ref"] = huey_layout.sqlite_enqueue(db, message)
            moved = {**record, **fields, "status": to}
            db.execute(
                "UPDATE ftkit_jobs SET status=?, data=? WHERE job_id=?",
                (to, dumps(moved), job_id),
            )
        return True

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 50,
        *,
        tag: str | None = None,
        offset: int = 0,
    ) -> list[JobRecord]:
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
        rows = (
            self.connection().execute(sql + " LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        )
        return [json.loads(r[0]) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._db() as db:
            self._row(db, job_id)  # JobNotFound early
            for table in ("ftkit_jobs", "ftkit_metrics", "ftkit_logs", "ftkit_tags"):
                db.execute(f"DELETE FROM {table} WHERE job_id=?", (job_id,))

    def message_pending(self, record: JobRecord) -> bool:
        return huey_layout.sqlite_pending(
            self.connection(), record.get("queue_ref"), record.get("job_id")
        )

    def queued_before(self, before: float, limit: int, offset: int = 0) -> list[JobRecord]:
        rows = (
            self.connection()
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
                self.connection()
                .execute("SELECT COALESCE(SUM(n), 0) FROM ftkit_counts")
                .fetchone()[0]
            )
        row = (
            self.connection()
            .execute("SELECT n FROM ftkit_counts WHERE status=?", (status,))
            .fetchone()
        )
        return row[0] if row else 0

    def holders(self) -> dict[str, Any]:
        rows = self.connection().execute(
            "SELECT job_id, json_extract(data, '$.worker') FROM ftkit_jobs "
            f"INDEXED BY ftkit_jobs_holder WHERE {self._ACTIVE_SQL}"
        )
        return dict(rows.fetchall())

    def add_metrics(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self._db() as db:
                db.executemany(
                    "INSERT INTO ftkit_metrics (job_id, data) VALUES (?,?)",
                    [(job_id, dumps(r)) for r in rows],
                )

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        rows = self.connection().execute(
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
            self.connection()
            .execute(
                "SELECT line FROM ftkit_logs WHERE job_id=? ORDER BY id DESC LIMIT ?", (job_id, n)
            )
            .fetchall()
        )
        return [r[0] for r in reversed(rows)]

    def logs_since(self, job_id: str, cursor: int = 0) -> tuple[list[str], int]:
        rows = (
            self.connection()
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
                    (record["sweep_id"], record["created_at"], dumps(record)),
                )
        except sqlite3.IntegrityError:
            raise JobExists(f"a sweep with id {record['sweep_id']!r} exists already") from None

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        row = (
            self.connection()
            .execute("SELECT data FROM ftkit_sweeps WHERE sweep_id=?", (sweep_id,))
            .fetchone()
        )
        record = as_sweep(row[0] if row else None)
        if record is None:
            raise JobNotFound(f"no sweep with id {sweep_id!r}")
        return record

    def list_sweeps(self, limit: int = 20, *, tag: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT data FROM ftkit_sweeps", cast(list[Any], [])
        if tag is not None:
            sql += " WHERE EXISTS (SELECT 1 FROM json_each(data, '$.tags') WHERE value = ?)"
            args.append(tag)
        rows = self.connection().execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [r for r in (as_sweep(row[0]) for row in rows.fetchall()) if r is not None]

    def delete_sweep(self, sweep_id: str) -> None:
        with self._db() as db:
            if not db.execute("DELETE FROM ftkit_sweeps WHERE sweep_id=?", (sweep_id,)).rowcount:
                raise JobNotFound(f"no sweep with id {sweep_id!r}")

    def heartbeat(self, worker_id: str, info: WorkerInfo, ttl: float) -> None:
        now = time.time()
        data = dumps({**info, "worker_id": worker_id, "last_seen": now})
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO ftkit_workers (worker_id, expires, data) VALUES (?,?,?)",
                (worker_id, now + ttl, data),
            )

    def forget_worker(self, worker_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM ftkit_workers WHERE worker_id=?", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        rows = (
            self.connection()
            .execute(
                "SELECT data FROM ftkit_workers WHERE expires > ? ORDER BY worker_id",
                (time.time(),),
            )
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]
