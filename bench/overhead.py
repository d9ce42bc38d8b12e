"""Wall time of one ftkit job (submit -> completed, worker already running) beside a bare script doing
the same training, measured side by side in one run; prints both and their ratio.

    python bench/overhead.py [--steps 60] [--repeat 3] [--redis]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = REPO / "examples" / "example_data.jsonl"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_run(model: Path, out: Path, steps: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bare_train.py"), str(model), str(DATA), str(out),
                           str(steps)], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    print(f"  bare: {elapsed:.2f} s wall; {done.stdout.strip().splitlines()[-1]}", flush=True)
    return elapsed


def ftkit_runs(model: Path, work: Path, steps: int, repeat: int, redis_url: str | None) -> list[float]:
    from ftkit.client import Client
    from ftkit.config import Settings

    settings = Settings.from_env({}, redis_url=redis_url, storage=str(work / "storage"),
                                 queue_db=str(work / "queue.db"), scratch_dir=str(work / "scratch"))
    client = Client(settings)
    env = {**os.environ, **settings.to_env()}
    worker = subprocess.Popen([sys.executable, "-m", "ftkit.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not client.workers():
            time.sleep(0.1)
        ds = client.upload_dataset(DATA)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            job = client.submit(ds, base_model=str(model), max_steps=steps, batch_size=4, learning_rate=1e-3,
                                max_seq_length=256, lora_r=16, lora_alpha=16)
            status = job.wait(progress=False, poll=0.05)
            times.append(time.perf_counter() - started)
            assert status["status"] == "completed", status["error"]
        return times
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", action="store_true", help="use a redis-server started here instead of SQLite")
    args = parser.parse_args()
    from ftkit.tinymodel import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ftkit-bench-"))
    redis_proc, redis_url = None, None
    try:
        model = build_tiny_model(work / "tiny")
        if args.redis:
            port = free_port()
            redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                          stdout=subprocess.DEVNULL)
            redis_url = f"redis://127.0.0.1:{port}/0"
            time.sleep(0.3)
        bare, job = [], []
        for i in range(args.repeat):  # interleaved, so drift on the machine hits both alike
            bare.append(bare_run(model, work / f"bare{i}", args.steps))
            job += ftkit_runs(model, work / f"ftkit{i}", args.steps, 1, redis_url)
        b, j = statistics.median(bare), statistics.median(job)
        print(f"{args.steps}-step tiny-model job on {'redis' if args.redis else 'sqlite'}, median of {args.repeat}:")
        print(f"  bare script        {b:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in bare)})")
        print(f"  ftkit job          {j:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in job)})")
        print(f"  ratio ftkit/bare   {j / b:7.2f}    extra {j - b:+.2f} s")
    finally:
        if redis_proc:
            redis_proc.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
