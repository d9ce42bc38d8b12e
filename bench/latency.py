"""Queue latency, one job at a time: the submit call itself, and submit -> `training` status with a
warm worker (a kernel with the training stack imported, waiting) and with a cold one (each job's
kernel started and importing torch after the claim, FTKIT_WARM_KERNEL=0), on Redis and SQLite.
p50, p95 and the range over N jobs each. A backlog drained by two workers is bench/throughput.py.

    python bench/latency.py [--jobs 20] [--cold-jobs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from common import (
    DATA,
    redis_server,
    settings_in,
    tiny_model,
    wait_until,
    wait_warm,
    workdir,
    worker,
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(settings, model, jobs: int, warm: bool) -> tuple[list[float], list[float]]:
    submits, starts = [], []
    os.environ["FTKIT_WARM_KERNEL"] = "1" if warm else "0"  # read by the worker at start
    try:
        with worker(settings, warm=warm) as client:
            ds = client.upload_dataset(DATA)
            ended = 0.0
            for _ in range(jobs):
                if warm:
                    wait_warm(client, since=ended)
                t0 = time.perf_counter()
                job = client.submit(
                    ds, base_model=str(model), max_steps=1, max_seq_length=64, sample_prompts=["hi"]
                )
                submits.append(time.perf_counter() - t0)
                wait_until(
                    lambda j=job: (
                        j.status()["status"] in ("training", "saving", "completed", "failed")
                    ),
                    300,
                    0.005,
                )
                starts.append(time.perf_counter() - t0)
                assert job.wait(progress=False)["status"] == "completed"
                ended = time.time()
    finally:
        os.environ.pop("FTKIT_WARM_KERNEL", None)
    return submits, starts


def summary(values: list[float], unit: str, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    digits = 1 if unit == "ms" else 2
    return (
        f"p50 {percentile(v, 50):.{digits}f} / p95 {percentile(v, 95):.{digits}f} {unit} "
        f"(range {min(v):.{digits}f}-{max(v):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--cold-jobs", type=int, default=5)
    args = parser.parse_args()
    work = workdir()
    results = {}
    try:
        model = tiny_model(work)
        with redis_server() as url:
            for broker, redis_url in (("redis", url), ("sqlite", None)):
                name = "Redis" if broker == "redis" else "SQLite"
                settings = settings_in(work / broker, redis_url)
                submits, starts = measure(settings, model, args.jobs, warm=True)
                print(
                    f"{name}, warm worker, N={args.jobs}: submit {summary(submits, 'ms', 1000)}; "
                    f"submit -> training {summary(starts, 's')}"
                )
                results[f"submit() call ({name}), N={args.jobs}"] = summary(submits, "ms", 1000)
                results[f"submit -> `training`, warm worker ({name}), N={args.jobs}"] = summary(
                    starts, "s"
                )
                if args.cold_jobs:
                    _, cold = measure(settings, model, args.cold_jobs, warm=False)
                    print(
                        f"{name}, cold kernel, N={args.cold_jobs}: submit -> training "
                        f"{summary(cold, 's')}"
                    )
                    results[
                        f"submit -> `training`, cold kernel (FTKIT_WARM_KERNEL=0) ({name}), "
                        f"N={args.cold_jobs}"
                    ] = summary(cold, "s")
        print("RESULT " + json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
