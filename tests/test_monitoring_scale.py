"""Monitoring costs what it shows, not what the store holds: every listing, count, health check,
dashboard refresh and orphan scan does the same work with ten times the jobs.

The work is counted, never timed: on Redis the round trips the client sends and the commands the
server runs (its own ``INFO commandstats``, scripts' inner calls included); on SQLite the virtual
machine instructions the connection executes, and every statement's query plan uses an index in
its own order (no scan of a table, no sort of the matches).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from ftkit import jobstore as jobs
from ftkit.core import statuses
from ftkit.panels.monitor import Dashboard

LIMIT = 5
# Scans that read only what is shown or only what is small: the creation-time index newest first
# (stopped at the page's end), the active jobs' holder index, the live workers and the counts
# (one row per status).
SCANS_ALLOWED = (
    "ftkit_jobs_created",
    "ftkit_jobs_holder",
    "ftkit_workers ",
    "ftkit_counts",
    "CONSTANT ROW",
)


def add_jobs(store: jobs.JobStore, n: int, first: int, newest: float) -> None:
    """``n`` jobs older than every job before them, as submit leaves them: queued, and tagged
    'sweep' one in two; then three in four of them end (completed or failed)."""
    for i in range(first, first + n):
        job_id = f"s{i:05d}"
        store.create(
            {
                "job_id": job_id,
                "status": statuses.QUEUED,
                "created_at": newest - i,
                "worker": None,
                "attempt": 1,
                "tags": ["sweep"] if i % 2 else [],
                "config": {"base_model": "m"},
                "dataset": {"name": "d.jsonl"},
            }
        )
        if i % 4:
            store.transition(job_id, statuses.COMPLETED if i % 4 != 3 else statuses.FAILED)


def monitoring_calls(client, dash: Dashboard) -> dict[str, Callable[[], Any]]:
    return {
        "jobs()": lambda: client.jobs(limit=LIMIT),
        "jobs(status)": lambda: client.jobs(status=statuses.COMPLETED, limit=LIMIT),
        "jobs(status, offset)": lambda: client.jobs(
            status=statuses.COMPLETED, limit=LIMIT, offset=7
        ),
        "jobs(tag)": lambda: client.jobs(tag="sweep", limit=LIMIT),
        "jobs(tag, status)": lambda: client.jobs(tag="sweep", status=statuses.FAILED, limit=LIMIT),
        "count()": lambda: client.count_jobs(),
        "count(status)": lambda: client.count_jobs(statuses.QUEUED),
        "health()": client.health,
        "dashboard refresh": dash.refresh,
        "orphan scan": client.store.orphans,
    }


def with_running_jobs(store: jobs.JobStore) -> None:
    """Two running jobs, one whose worker heartbeats and one whose worker is gone."""
    store.heartbeat("alive", {"host": "h"}, ttl=600)
    for job_id, worker in (("run-alive", "alive"), ("run-dead", "dead")):
        store.create({"job_id": job_id, "status": statuses.QUEUED, "created_at": 1.0, "tags": []})
        store.transition(job_id, statuses.TRAINING, worker=worker)


def work_done(client, measure: Callable[[Callable[[], Any]], Any]) -> dict[str, Any]:
    dash = Dashboard(client, autostart=False, limit=LIMIT)
    dash.filter.value = statuses.COMPLETED
    dash.tag.value = "sweep"
    return {name: measure(call) for name, call in monitoring_calls(client, dash).items()}


@pytest.mark.parametrize("settings", ["redis"], indirect=True)  # SQLite's half is below
def test_redis_monitoring_sends_the_same_round_trips_and_commands_at_ten_times_the_jobs(
    settings, monkeypatch
):
    import redis
    from redis.connection import AbstractConnection

    from ftkit.client import Client

    client = Client(settings)
    with_running_jobs(client.store)
    server = redis.Redis.from_url(settings.redis_url)
    sent = {"n": 0}
    send = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        sent["n"] += 1  # one request on the wire: a command, or a whole pipeline
        return send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)

    def server_commands() -> int:
        stats = server.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    def measure(call: Callable[[], Any]) -> tuple[int, int]:
        call()  # warm: scripts loaded, connections open
        commands = server_commands()
        trips = sent["n"]  # read after our own INFO, and below before it
        call()
        trips = sent["n"] - trips
        return trips, server_commands() - commands

    add_jobs(client.store, 40, first=0, newest=time.time())
    small = work_done(client, measure)
    add_jobs(client.store, 360, first=40, newest=time.time())
    large = work_done(client, measure)
    assert client.count_jobs() == 402 and len(client.store.orphans()) == 1
    assert large == small, {k: (small[k], large[k]) for k in small if small[k] != large[k]}
    trips = {k: v[0] for k, v in large.items()}
    assert max(trips.values()) <= 10, trips


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # Redis's half is above
def test_sqlite_monitoring_runs_the_same_instructions_at_ten_times_the_jobs_through_indexes(
    settings,
):
    from ftkit.client import Client

    client = Client(settings)
    with_running_jobs(client.store)
    conn = client.store.connection()  # this thread's connection: the one every call below uses
    steps = {"n": 0}
    statements: set[str] = set()

    def step() -> int:
        steps["n"] += 1
        return 0

    conn.set_progress_handler(step, 1)  # called at every virtual machine instruction
    conn.set_trace_callback(statements.add)

    def measure(call: Callable[[], Any]) -> int:
        call()
        before = steps["n"]
        call()
        return steps["n"] - before

    add_jobs(client.store, 40, first=0, newest=time.time())
    small = work_done(client, measure)
    add_jobs(client.store, 360, first=40, newest=time.time())
    statements.clear()
    large = work_done(client, measure)
    conn.set_progress_handler(None, 1)
    conn.set_trace_callback(None)
    assert client.count_jobs() == 402 and len(client.store.orphans()) == 1
    assert large == small, {k: (small[k], large[k]) for k in small if small[k] != large[k]}

    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert any("ftkit_tags" in s for s in reads) and any("ftkit_counts" in s for s in reads)
    for sql in reads:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        for line in plan:
            assert "TEMP B-TREE" not in line, (sql, plan)  # no sort of every match
            if line.startswith("SCAN "):  # a scan only of an index made for it
                assert any(ok in line for ok in SCANS_ALLOWED), (sql, plan)


def test_a_queue_file_from_before_the_counts_and_tag_status_index_gets_them(tmp_path):
    """A file written by an earlier ftkit: opening it adds the per-tag status and the counts,
    filled from the records it holds, and they follow every move from then on."""
    path = tmp_path / "queue.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE ftkit_jobs (job_id TEXT PRIMARY KEY, status TEXT NOT NULL,
            created_at REAL NOT NULL, idempotency_key TEXT UNIQUE, data TEXT NOT NULL);
        CREATE TABLE ftkit_tags (tag TEXT NOT NULL, job_id TEXT NOT NULL,
            created_at REAL NOT NULL, PRIMARY KEY (tag, job_id));
        """
    )
    for i, status in enumerate((statuses.QUEUED, statuses.COMPLETED, statuses.COMPLETED)):
        old.execute(
            "INSERT INTO ftkit_jobs VALUES (?, ?, ?, NULL, ?)",
            (f"o{i}", status, float(i), f'{{"job_id": "o{i}", "status": "{status}"}}'),
        )
        old.execute("INSERT INTO ftkit_tags VALUES ('t', ?, ?)", (f"o{i}", float(i)))
    old.commit()
    old.close()

    store = jobs.SqliteJobStore(path)
    assert (store.count(), store.count(statuses.COMPLETED), store.count(statuses.QUEUED)) == (
        3,
        2,
        1,
    )
    assert [r["job_id"] for r in store.list_jobs(tag="t", status=statuses.COMPLETED)] == [
        "o2",
        "o1",
    ]
    store.transition("o0", statuses.FAILED)
    store.delete("o1")
    assert (store.count(), store.count(statuses.COMPLETED), store.count(statuses.FAILED)) == (
        2,
        1,
        1,
    )
    assert [r["job_id"] for r in store.list_jobs(tag="t", status=statuses.FAILED)] == ["o0"]
    assert jobs.SqliteJobStore(path).count() == 2  # opened again: nothing counted twice


def test_pages_follow_offset_and_limit_on_every_index(store_with_tags):
    store = store_with_tags
    store.PAGE_MAX = 3  # Redis reads a long listing in several script calls: pages join up
    everything = [r["job_id"] for r in store.list_jobs(limit=1000)]
    assert [r["job_id"] for r in store.list_jobs(limit=3, offset=2)] == everything[2:5]
    tagged = [r["job_id"] for r in store.list_jobs(tag="sweep", limit=1000)]
    assert [r["job_id"] for r in store.list_jobs(tag="sweep", limit=2, offset=1)] == tagged[1:3]
    done = [
        r["job_id"] for r in store.list_jobs(status=statuses.COMPLETED, tag="sweep", limit=1000)
    ]
    assert done and all(store.get(j)["status"] == statuses.COMPLETED for j in done)
    assert [
        r["job_id"] for r in store.list_jobs(status=statuses.COMPLETED, tag="sweep", offset=1)
    ] == done[1:]
    assert len(everything) == 20 and len(tagged) == 10
    assert store.list_jobs(limit=0) == [] and store.list_jobs(offset=10_000) == []


@pytest.fixture
def store_with_tags(settings):
    store = jobs.open_store(settings)
    add_jobs(store, 20, first=0, newest=time.time())
    return store


def test_the_orphan_scan_reads_the_records_of_orphans_only(settings, monkeypatch):
    """Run on every heartbeat: twenty running jobs of a live worker cost no record read."""
    store = jobs.open_store(settings)
    with_running_jobs(store)
    for i in range(20):
        store.create(
            {"job_id": f"live{i}", "status": statuses.QUEUED, "created_at": 2.0, "tags": []}
        )
        store.transition(
            f"live{i}",
            (statuses.PREPARING, statuses.TRAINING, statuses.SAVING)[i % 3],
            worker="alive",
        )
    read: list[str] = []
    get = store.get
    monkeypatch.setattr(store, "get", lambda job_id: read.append(job_id) or get(job_id))
    assert [r["job_id"] for r in store.orphans()] == ["run-dead"]
    assert read == ["run-dead"]
    store.transition("run-dead", statuses.QUEUED, worker=None)  # re-queued: no longer held
    store.transition("live0", statuses.COMPLETED)
    assert store.orphans() == [] and "live0" not in store.holders()
    assert len(store.holders()) == 20  # nineteen live jobs and run-alive


@pytest.mark.parametrize("settings", ["redis"], indirect=True)  # SQLite's: the queue-file test
def test_redis_jobs_from_before_the_tag_status_and_holder_indexes_get_them(settings):
    """Records an earlier ftkit wrote (status and tag indexes only): the first listing by tag and
    status, or orphan scan, fills the new indexes once, and from then on they follow every move."""
    import json

    import redis

    raw = redis.Redis.from_url(settings.redis_url)
    for i, (status, worker) in enumerate(
        ((statuses.QUEUED, None), (statuses.COMPLETED, None), (statuses.TRAINING, "gone"))
    ):
        job_id = f"old{i}"
        record = {"job_id": job_id, "status": status, "created_at": float(i), "tags": ["t"]}
        record["worker"] = worker
        raw.hset(f"ftkit:job:{job_id}", mapping={k: json.dumps(v) for k, v in record.items()})
        for index in ("ftkit:jobs", f"ftkit:status:{status}", "ftkit:tag:t"):
            raw.zadd(index, {job_id: float(i)})

    store = jobs.open_store(settings)
    assert [r["job_id"] for r in store.list_jobs(tag="t", status=statuses.COMPLETED)] == ["old1"]
    assert [r["job_id"] for r in store.orphans()] == ["old2"]
    store.transition("old2", statuses.QUEUED, worker=None)
    assert store.orphans() == [] and [
        r["job_id"] for r in store.list_jobs(tag="t", status=statuses.QUEUED)
    ] == ["old2", "old0"]
