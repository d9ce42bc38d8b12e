"""Monitoring at scale, on Redis and SQLite: each call a notebook or the dashboard makes (listings by
status and tag, counts, health, a dashboard refresh, the heartbeat's orphan scan) over 1,000,
10,000 and 100,000 job records; the median and range of its wall time and, on Redis, its round
trips (constant: a page costs what it shows, not what the store holds).

Records are written straight into each backend's tables and indexes (a pipeline, executemany), as
submit and the status moves leave them, and the store's own counts and listings are checked
against what was written before anything is timed.

    python bench/monitoring.py [--sizes 1000,10000,100000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from common import redis_server, settings_in, workdir

RUNNING, PAGE = 100, 50


def count_round_trips() -> dict[str, int]:
    """Count requests redis-py sends (a pipeline is one)."""
    from redis.connection import AbstractConnection

    counter = {"n": 0}
    original = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        counter["n"] += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    return counter


def make_record(i: int, now: float, config: dict[str, Any]) -> dict[str, Any]:
    """Job ``i`` (0 the newest): the first RUNNING are training on worker w, then one in five is
    queued, the rest ended; one in ten is tagged 'sweep'. Fields and sizes as submit writes them."""
    if i < RUNNING:
        status = "training"
    elif i % 5 == 0:
        status = "queued"
    else:
        status = "failed" if i % 7 == 0 else "completed"
    return {
        "job_id": f"{i:012x}",
        "status": status,
        "created_at": now - i,
        "queued_at": now - i,
        "max_attempts": 3,
        "started_at": None if status == "queued" else now - i + 1,
        "finished_at": now - i + 60 if status in ("completed", "failed") else None,
        "progress": 100.0 if status == "completed" else 0.0,
        "current_step": 60,
        "total_steps": 60,
        "loss": 1.5,
        "error": "boom" if status == "failed" else None,
        "attempt": 1,
        "worker": "w" if status != "queued" else None,
        "result": None,
        "cancel_requested": False,
        "priority": 0,
        "idempotency_key": None,
        "submitted_by": "bench",
        "tags": ["sweep"] if i % 10 == 3 else [],
        "note": None,
        "config": config,
        "model": None,
        "dataset": {"name": "d.jsonl", "sha256": "0" * 64, "rows": 120, "format": "chat"},
        "dataset_profile": {"rows": 120, "format": "chat", "tokens": 12000, "warnings": []},
        "warnings": [],
    }


def populate(store, records: list[dict[str, Any]]) -> None:
    """Write records as create() and transition() leave them, without one round trip each."""
    if store.backend == "redis":
        pipe = store.r.pipeline(transaction=False)
        for n, r in enumerate(records, 1):
            job_id, created, status = r["job_id"], r["created_at"], r["status"]
            pipe.hset(store._k("job", job_id), mapping={k: json.dumps(v) for k, v in r.items()})
            pipe.zadd(store._k("jobs"), {job_id: created})
            pipe.zadd(store._k("status", status), {job_id: created})
            for tag in r["tags"]:
                pipe.zadd(store._k("tag", tag), {job_id: created})
                pipe.zadd(store._tag_status(status, tag), {job_id: created})
            if status in ("preparing", "training", "saving"):
                pipe.hset(store._k("holders"), job_id, json.dumps(r["worker"]))
            if n % 2000 == 0:
                pipe.execute()
        pipe.execute()
        return
    with store._db() as db:  # the triggers keep the counts and the tags' status, as for create
        db.executemany(
            "INSERT INTO ftkit_jobs (job_id, status, created_at, idempotency_key, data) "
            "VALUES (?,?,?,NULL,?)",
            [(r["job_id"], r["status"], r["created_at"], json.dumps(r)) for r in records],
        )
        db.executemany(
            "INSERT INTO ftkit_tags (tag, job_id, created_at, status) VALUES (?,?,?,?)",
            [(t, r["job_id"], r["created_at"], r["status"]) for r in records for t in r["tags"]],
        )


def check(store, records: list[dict[str, Any]]) -> None:
    """The store sees what was written: counts, the newest page of each index, the holders."""
    by_status: dict[str, list[str]] = {}
    for r in records:  # newest first
        by_status.setdefault(r["status"], []).append(r["job_id"])
    assert store.count() == len(records), (store.count(), len(records))
    for status, ids in by_status.items():
        assert store.count(status) == len(ids), status
        assert [r["job_id"] for r in store.list_jobs(status=status, limit=5)] == ids[:5], status
    tagged = [r["job_id"] for r in records if "sweep" in r["tags"] and r["status"] == "completed"]
    got = store.list_jobs(tag="sweep", status="completed", limit=5)
    assert [r["job_id"] for r in got] == tagged[:5]
    assert len(store.holders()) == RUNNING and store.orphans() == []


def timed(fn, counter: dict[str, int], repeat: int) -> dict[str, float]:
    fn()  # warm
    times, trips = [], []
    for _ in range(repeat):
        before = counter["n"]
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        trips.append(counter["n"] - before)
    return {
        "median": statistics.median(times) * 1000,
        "min": min(times) * 1000,
        "max": max(times) * 1000,
        "trips": max(trips),
    }


def calls(client, dash) -> dict[str, Any]:
    return {
        "jobs()": lambda: client.jobs(limit=PAGE),
        "jobs(status='queued')": lambda: client.jobs(status="queued", limit=PAGE),
        "jobs(status='training', limit=100)": lambda: client.jobs(status="training", limit=100),
        "jobs(tag, status)": lambda: client.jobs(tag="sweep", status="completed", limit=PAGE),
        "jobs(offset=1000)": lambda: client.jobs(limit=PAGE, offset=1000),
        "count()": lambda: client.count_jobs(),
        "count('queued')": lambda: client.count_jobs("queued"),
        "health()": client.health,
        "dashboard refresh": dash.refresh,
        "orphan scan (each heartbeat)": client.store.orphans,
    }


def run_backend(
    work: Path, url: str | None, sizes: list[int], repeat: int, counter
) -> dict[int, dict[str, dict[str, float]]]:
    from ftkit.client import Client
    from ftkit.config import TrainConfig
    from ftkit.panels.monitor import Dashboard

    client = Client(settings_in(work, url))
    store = client.store
    store.heartbeat("w", {"host": "h"}, ttl=3600)
    now, config = time.time(), TrainConfig().to_dict()
    records: list[dict[str, Any]] = []
    results = {}
    for size in sizes:
        started = time.perf_counter()
        more = [make_record(i, now, config) for i in range(len(records), size)]
        populate(store, more)
        records += more
        check(store, records)
        print(
            f"  {store.backend}: {size:,} records written in {time.perf_counter() - started:.1f} s"
        )
        dash = Dashboard(client, autostart=False, limit=PAGE)
        results[size] = {
            name: timed(fn, counter, repeat) for name, fn in calls(client, dash).items()
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = workdir()
    counter = count_round_trips()
    rows: dict[str, str] = {}
    try:
        with redis_server() as url:
            found = {
                "redis": run_backend(work / "redis", url, sizes, args.repeat, counter),
                "sqlite": run_backend(work / "sqlite", None, sizes, args.repeat, counter),
            }
        for backend, by_size in found.items():
            names = list(next(iter(by_size.values())))
            print(f"\n{backend}: median ms (min-max) over {args.repeat} calls; round trips")
            print(f"  {'call':36}" + "".join(f"{f'{s:,} records':>26}" for s in sizes))
            for name in names:
                cells = []
                for s in sizes:
                    r = by_size[s][name]
                    trips = f", {r['trips']:.0f} rt" if backend == "redis" else ""
                    cells.append(f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f}){trips}")
                print(f"  {name:36}" + "".join(f"{c:>26}" for c in cells))
            for s in sizes:
                slowest = max(by_size[s], key=lambda n: by_size[s][n]["median"])
                worst = by_size[s][slowest]
                trips = sorted({int(r["trips"]) for r in by_size[s].values()})
                name = "Redis" if backend == "redis" else "SQLite"
                key = f"monitoring: {len(by_size[s])} calls over {s:,} records ({name})"
                rows[key] = (
                    f"slowest median {worst['median']:.1f} ms ({slowest}; range "
                    f"{worst['min']:.1f}-{worst['max']:.1f} ms, {args.repeat} calls each)"
                    + (
                        f"; {trips[0]}-{trips[-1]} round trips per call at every size"
                        if backend == "redis"
                        else ""
                    )
                )
        if "redis" in found:  # constant round trips: the same at every size, call by call
            per_call = {
                n: {found["redis"][s][n]["trips"] for s in sizes} for n in found["redis"][sizes[0]]
            }
            grew = {n: t for n, t in per_call.items() if len(t) > 1}
            print(f"\nRedis round trips the same at every size: {not grew} {grew or ''}")
        print("RESULT " + json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
