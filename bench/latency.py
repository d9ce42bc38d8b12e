"""Queue latency: submit -> `training` status, p50 and p95 over N jobs with a warm worker, and the
submit call itself, on Redis (and SQLite).

    python bench/latency.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time

from common import DATA, redis_server, settings_in, tiny_model, wait_until, workdir, worker


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(settings, model, jobs: int) -> tuple[list[float], list[float]]:
    submits, starts = [], []
    with worker(settings) as client:
        ds = client.upload_dataset(DATA)
        for _ in range(jobs):
            wait_until(lambda: client.workers()[0].get("warm_kernel"), 180)
            t0 = time.perf_counter()
            job = client.submit(
                ds, base_model=str(model), max_steps=1, max_seq_length=64, sample_prompts=["hi"]
            )
            submits.append(time.perf_counter() - t0)
            wait_until(
                lambda j=job: j.status()["status"] in ("training", "saving", "completed", "failed"),
                120,
                0.005,
            )
            starts.append(time.perf_counter() - t0)
            assert job.wait(progress=False, poll=0.05)["status"] == "completed"
    return submits, starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    work = workdir()
    results = {}
    try:
        model = tiny_model(work)
        with redis_server() as url:
            for broker, redis_url in (("redis", url), ("sqlite", None)):
                submits, starts = measure(settings_in(work / broker, redis_url), model, args.jobs)
                ms = [1000 * s for s in submits]
                print(
                    f"{broker}: submit p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms; "
                    f"submit -> training p50 {percentile(starts, 50):.2f} s, p95 {percentile(starts, 95):.2f} s "
                    f"({args.jobs} jobs, warm worker)"
                )
                results[f"submit p50 ({broker})"] = f"{statistics.median(ms):.1f} ms"
                results[f"submit -> training p50 / p95 ({broker})"] = (
                    f"{percentile(starts, 50):.2f} s / {percentile(starts, 95):.2f} s"
                )
        print("RESULT " + json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
