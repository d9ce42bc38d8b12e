"""Soak: N jobs through 2 workers on a Redis with AOF, while a worker is killed (SIGKILL) and Redis
is restarted at random moments. Prints jobs submitted / completed / lost / duplicated; lost and
duplicated must be 0.

    python bench/soak.py [--jobs 12] [--kills 2] [--restarts 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from common import DATA, free_port, settings_in, tiny_model, wait_until, workdir


class Redis:
    def __init__(self, work):
        self.port, self.dir, self.proc = free_port(), work, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        wait_until(lambda: _ping(redis, self.url), 10)

    def restart(self):
        self.proc.terminate()
        self.proc.wait()
        time.sleep(1)
        self.start()


def _ping(redis, url) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


def start_worker(settings, work, n):
    scratch = work / f"worker{n}"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, **settings.to_env(), "FTKIT_SCRATCH_DIR": str(scratch)}
    return subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = workdir()
    redis = Redis(work)
    redis.start()
    workers = []
    try:
        model = tiny_model(work)
        settings = settings_in(work, redis.url)
        settings = type(settings)(
            **{**settings.__dict__, "heartbeat_seconds": 0.5, "worker_grace_seconds": 4.0}
        )
        from ftkit.client import Client

        client = Client(settings)
        workers = [start_worker(settings, work, 0), start_worker(settings, work, 1)]
        ds = client.upload_dataset(DATA)
        jobs = [
            client.submit(
                ds,
                base_model=str(model),
                max_steps=30,
                batch_size=4,
                gradient_accumulation_steps=2,
                max_seq_length=256,
                save_steps=10,
            )
            for _ in range(args.jobs)
        ]
        faults = ["kill"] * args.kills + ["restart"] * args.restarts
        rng.shuffle(faults)
        started = time.monotonic()
        for fault in faults:
            time.sleep(rng.uniform(5, 20))
            if fault == "kill":
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = start_worker(settings, work, len(workers) + rng.randrange(10**6))
                print(
                    f"  {time.monotonic() - started:6.1f} s  killed worker {victim} (SIGKILL), started a new one",
                    flush=True,
                )
            else:
                redis.restart()
                print(
                    f"  {time.monotonic() - started:6.1f} s  restarted redis-server (AOF)",
                    flush=True,
                )
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if all(j.status()["status"] in ("completed", "failed", "cancelled") for j in jobs):
                    break
            except Exception:
                pass
            time.sleep(1)
        statuses = [j.status() for j in jobs]
        for s in statuses:
            print(
                f"  job {s['job_id']}: {s['status']}, attempt {s['attempt']}, queued {s['created_at'][11:]}, "
                f"started {(s['started_at'] or '')[11:]}, finished {(s['finished_at'] or '')[11:]}"
            )
        completed = [s for s in statuses if s["status"] == "completed"]
        ends = {j.id: sum(1 for line in j.logs(500) if "] completed" in line) for j in jobs}
        resumed = sum(any("resuming from" in line for line in j.logs(500)) for j in jobs)
        duplicated = sum(1 for n in ends.values() if n > 1)
        lost = len(jobs) - len(completed)
        print(
            f"jobs submitted {len(jobs)}, completed {len(completed)}, lost {lost}, duplicated {duplicated} "
            f"({resumed} resumed from a checkpoint, attempts {sorted(s['attempt'] for s in statuses)}, "
            f"{time.monotonic() - started:.0f} s)"
        )
        print(
            "RESULT "
            + json.dumps(
                {
                    f"soak: {len(jobs)} jobs, {args.kills} worker kills, {args.restarts} Redis restarts": f"completed {len(completed)}, lost {lost}, duplicated {duplicated}"
                }
            )
        )
    finally:
        for w in workers:
            w.send_signal(signal.SIGKILL)
        redis.proc.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
