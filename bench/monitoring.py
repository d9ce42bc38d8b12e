"""Monitoring at scale on Redis: `ftkit.jobs()` over 10,000 job records and one dashboard refresh
with 100 running jobs; wall time and Redis round trips of each (constant, not one per job).

    python bench/monitoring.py [--jobs 10000] [--running 100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time

from common import redis_server, settings_in, workdir


def count_round_trips():
    """Patch redis-py's connection to count requests sent (a pipeline is one)."""
    from redis.connection import AbstractConnection

    counter = {"n": 0}
    original = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        counter["n"] += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counted
    return counter


def timed(fn, counter, repeat: int = 20) -> tuple[float, int]:
    times, trips = [], []
    for _ in range(repeat):
        before = counter["n"]
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        trips.append(counter["n"] - before)
    return statistics.median(times), max(trips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=100)
    args = parser.parse_args()
    work = workdir()
    try:
        with redis_server() as url:
            from ftkit import jobstore
            from ftkit.client import Client
            from ftkit.widgets import Dashboard

            client = Client(settings_in(work, url))
            now = time.time()
            pipe = client.store.r.pipeline()
            for i in range(args.jobs):
                status = jobstore.TRAINING if i < args.running else jobstore.COMPLETED
                record = {
                    "job_id": f"j{i:06d}",
                    "status": status,
                    "created_at": now - i,
                    "progress": 50.0,
                    "current_step": 30,
                    "total_steps": 60,
                    "loss": 1.5,
                    "config": {"base_model": "m"},
                    "dataset": {"name": "d.jsonl"},
                    "started_at": now - i,
                    "finished_at": None,
                    "worker": "w",
                }
                pipe.hset(
                    f"ftkit:job:{record['job_id']}",
                    mapping={k: json.dumps(v) for k, v in record.items()},
                )
                pipe.zadd("ftkit:jobs", {record["job_id"]: record["created_at"]})
                pipe.sadd(f"ftkit:status:{status}", record["job_id"])
            pipe.execute()
            client.store.heartbeat("w", {"host": "h"}, ttl=600)
            counter = count_round_trips()
            jobs_t, jobs_trips = timed(lambda: client.jobs(), counter)
            filtered_t, filtered_trips = timed(
                lambda: client.jobs(status="training", limit=args.running), counter
            )
            dash = Dashboard(client, autostart=False)
            dash.filter.value = "training"
            dash.limit = args.running
            dash_t, dash_trips = timed(dash.refresh, counter)
        print(
            f"  ftkit.jobs() over {args.jobs:,} records          {jobs_t * 1000:6.1f} ms, {jobs_trips} round trips"
        )
        print(
            f"  ftkit.jobs(status='training') ({args.running} rows)  {filtered_t * 1000:6.1f} ms, {filtered_trips} round trips"
        )
        print(
            f"  dashboard refresh, {args.running} running jobs       {dash_t * 1000:6.1f} ms, {dash_trips} round trips"
        )
        print(
            "RESULT "
            + json.dumps(
                {
                    f"ftkit.jobs() over {args.jobs:,} records": f"{jobs_t * 1000:.1f} ms, {jobs_trips} round trips",
                    f"dashboard refresh, {args.running} running": f"{dash_t * 1000:.1f} ms, {dash_trips} round trips",
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
