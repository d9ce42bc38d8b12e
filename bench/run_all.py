"""Every benchmark, one after another, and one table of their figures from this one run (`make
bench`). Each row says what it compares, over how many samples (N), and the spread; the header
says the machine, and how busy it was (load average at the start and the end).

python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOAK_FAULTS = ("worker-kills", "kernel-kills", "redis-kills", "outages")
# (script, full-run arguments, --quick arguments)
BENCHES = [
    ("monitoring.py", [], ["--sizes", "1000,5000", "--repeat", "5"]),
    ("overhead.py", ["--repeat", "5"], ["--repeat", "1"]),
    ("overhead.py", ["--repeat", "5", "--redis"], ["--repeat", "1", "--redis"]),
    ("overhead.py", ["--repeat", "3", "--spare"], ["--repeat", "1", "--spare"]),
    ("latency.py", ["--jobs", "20", "--cold-jobs", "5"], ["--jobs", "3", "--cold-jobs", "1"]),
    ("throughput.py", ["--jobs", "202"], ["--jobs", "6"]),
    ("training_loop.py", ["--steps", "200", "--repeat", "5"], ["--steps", "60", "--repeat", "1"]),
    ("client_weight.py", ["--repeat", "10"], ["--repeat", "3"]),
    ("packing.py", ["--steps", "30", "--repeat", "3"], ["--steps", "10", "--repeat", "1"]),
    ("validate.py", ["--mb", "500", "--repeat", "3"], ["--mb", "50", "--repeat", "1"]),
    ("storage.py", ["--mb", "512", "--repeat", "3"], ["--mb", "40", "--repeat", "1"]),
    (
        "soak.py",
        [
            "--jobs",
            "6",
            "--steps",
            "300",
            "--worker-kills",
            "3",
            "--fault-gap",
            "4",
            "--submit-gap",
            "3",
        ]
        + ["--worker-kill-during", "job,training,end"],
        ["--jobs", "4"] + [f"--{k}=1" for k in SOAK_FAULTS],
    ),
]


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = next(
            int(line.split()[1]) / 2**20
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        memory = 0
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}"
    )


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    rows: dict[str, str] = {}
    # torch on one CPU thread in every process (benches, workers, their kernels): on a machine
    # whose few cores are shared, threads that wait on each other make the figures swing
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started, load_before = time.perf_counter(), load()
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    for script, full, quick in BENCHES:
        chosen = quick if args.quick else full
        print(f"== {script} {' '.join(chosen)}", flush=True)
        out = subprocess.run(
            [sys.executable, str(HERE / script), *chosen],
            cwd=HERE,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines = out.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
        if out.returncode != 0:
            print(out.stderr[-2000:])
            rows[f"{script} {' '.join(chosen)}"] = f"FAILED (exit {out.returncode})"
        for line in lines:
            if line.startswith("RESULT "):
                rows.update(json.loads(line[7:]))
    print(
        f"\nftkit benchmarks{' (--quick)' if args.quick else ''}, {dt.date.today()}, git {commit}: "
        f"one run of bench/run_all.py, {time.perf_counter() - started:.0f} s. Machine: {machine()}; "
        f"Python {platform.python_version()}; torch on {os.environ['OMP_NUM_THREADS']} CPU "
        f"thread(s) (OMP_NUM_THREADS); load average (1, 5, 15 min) {load_before} at the start, "
        f"{load()} at the end."
    )
    print("\n| measure: what is compared, over N samples | figure (spread) |")
    print("| --- | --- |")
    for key, value in rows.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
