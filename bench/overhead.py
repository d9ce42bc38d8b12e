"""Job overhead: one ftkit job (submit -> completed, worker already running and warm) beside a bare
script doing identical training, interleaved in one run; prints both, the ratio and the extra seconds.

    python bench/overhead.py [--steps 60] [--repeat 3] [--redis]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

from common import DATA, REPO, redis_server, settings_in, tiny_model, workdir, worker


def bare_run(model, out, steps: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bare_train.py"),
            str(model),
            str(DATA),
            str(out),
            str(steps),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", action="store_true")
    args = parser.parse_args()
    work = workdir()
    try:
        model = tiny_model(work)
        with redis_server() as url:
            settings = settings_in(work, url if args.redis else None)
            bare, jobs = [], []
            with worker(settings) as client:
                ds = client.upload_dataset(DATA)
                for i in range(args.repeat):  # interleaved, so drift on the machine hits both alike
                    bare.append(bare_run(model, work / f"bare{i}", args.steps))
                    from common import wait_until

                    wait_until(lambda: client.workers()[0].get("warm_kernel"), 180)
                    started = time.perf_counter()
                    job = client.submit(
                        ds,
                        base_model=str(model),
                        max_steps=args.steps,
                        batch_size=4,
                        learning_rate=1e-3,
                        max_seq_length=256,
                    )
                    status = job.wait(progress=False, poll=0.02)
                    jobs.append(time.perf_counter() - started)
                    assert status["status"] == "completed", status["error"]
        b, j = statistics.median(bare), statistics.median(jobs)
        print(
            f"{args.steps}-step tiny-model job on {'redis' if args.redis else 'sqlite'}, median of {args.repeat}:"
        )
        print(f"  bare script        {b:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in bare)})")
        print(f"  ftkit job          {j:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in jobs)})")
        print(f"  ratio ftkit/bare   {j / b:7.2f}    extra {j - b:+.2f} s")
        print(
            "RESULT "
            + json.dumps(
                {"job overhead (ftkit/bare, 60-step job)": f"{j / b:.2f} ({j - b:+.2f} s)"}
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
