"""Throughput: N of the cheapest real jobs (one training step, 64-token sequences, one sample
prompt: each still claims, stages, runs the whole template in a kernel of its own, renders and
uploads its report) submitted at once and drained by 2 workers, on Redis and on SQLite. Prints
jobs per minute while draining, the hand-off gap (a worker's job recorded ended -> its next job
claimed), and submit -> claimed (the wait in the backlog), p50 and p95 over every job.

    python bench/throughput.py [--jobs 1000] [--workers 2] [--backends redis,sqlite]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from common import DATA, redis_server, settings_in, tiny_model, wait_until, workdir, worker


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def drain(settings, model, jobs: int, workers: int, log) -> dict[str, float]:
    with worker(settings, log=log, count=workers) as client:
        ds = client.upload_dataset(DATA)
        submitted = time.time()
        ids = [
            client.submit(
                ds,
                base_model=str(model),
                max_steps=1,
                batch_size=2,
                max_seq_length=64,
                sample_prompts=["hi"],
            ).id
            for _ in range(jobs)
        ]
        submit_s = time.time() - submitted
        wait_until(
            lambda: client.count_jobs("completed") + client.count_jobs("failed") >= jobs,
            48 * 3600,
            1.0,
        )
        records = [client.store.get(i) for i in ids]
    failed = [r for r in records if r["status"] != "completed"]
    assert not failed, f"{len(failed)} jobs did not complete: {failed[0].get('error')}"
    first = min(r["started_at"] for r in records)
    last = max(r["finished_at"] for r in records)
    by_worker: dict[str, list[dict]] = {}
    for r in records:
        by_worker.setdefault(r["worker"], []).append(r)
    gaps = []
    for done in by_worker.values():
        done.sort(key=lambda r: r["started_at"])
        gaps += [b["started_at"] - a["finished_at"] for a, b in zip(done, done[1:])]
    waits = [r["started_at"] - r["created_at"] for r in records]
    return {
        "jobs": jobs,
        "per_minute": jobs / (last - first) * 60,
        "submit_s": submit_s,
        "gap_p50": percentile(gaps, 50),
        "gap_p95": percentile(gaps, 95),
        "gaps": len(gaps),
        "wait_p50": percentile(waits, 50),
        "wait_p95": percentile(waits, 95),
        "workers_used": len(by_worker),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="redis,sqlite")
    args = parser.parse_args()
    work = workdir()
    rows = {}
    try:
        model = tiny_model(work)
        with redis_server() as url:
            for broker in args.backends.split(","):
                found = drain(
                    settings_in(work / broker, url if broker == "redis" else None),
                    model,
                    args.jobs,
                    args.workers,
                    work / f"{broker}-worker",
                )
                name = "Redis" if broker == "redis" else "SQLite"
                print(
                    f"{name}: N={found['jobs']} jobs (1 step each), {args.workers} workers "
                    f"({found['workers_used']} took jobs): {found['per_minute']:.1f} jobs/min "
                    f"while draining; submitting all took {found['submit_s']:.1f} s; hand-off gap "
                    f"p50 {found['gap_p50']:.2f} s, p95 {found['gap_p95']:.2f} s "
                    f"({found['gaps']} gaps); submit -> claimed p50 {found['wait_p50']:.1f} s, "
                    f"p95 {found['wait_p95']:.1f} s (the backlog)"
                )
                rows[
                    f"throughput: N={found['jobs']} one-step jobs drained by {args.workers} "
                    f"workers ({name})"
                ] = (
                    f"{found['per_minute']:.1f} jobs/min; hand-off gap (job ended -> next "
                    f"claimed, same worker) p50 {found['gap_p50']:.2f} s / p95 "
                    f"{found['gap_p95']:.2f} s over {found['gaps']} gaps"
                )
        print("RESULT " + json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
