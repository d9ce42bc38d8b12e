"""Every benchmark, one after another, and one table of their figures and ratios (`make bench`).

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
BENCHES = [
    ("overhead.py", ["--repeat", "3"], ["--repeat", "1"]),
    ("latency.py", ["--jobs", "10"], ["--jobs", "3"]),
    ("training_loop.py", ["--steps", "200", "--repeat", "5"], ["--steps", "60", "--repeat", "1"]),
    ("client_weight.py", ["--repeat", "10"], ["--repeat", "3"]),
    ("monitoring.py", [], ["--jobs", "2000"]),
    ("packing.py", ["--steps", "30", "--repeat", "2"], ["--steps", "10", "--repeat", "1"]),
    ("validate.py", ["--mb", "500"], ["--mb", "50"]),
    ("storage.py", ["--mb", "1024"], ["--mb", "100"]),
    ("soak.py", ["--jobs", "8"], ["--jobs", "4", "--kills", "1", "--restarts", "1"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    rows: dict[str, str] = {}
    started = time.perf_counter()
    for script, full, quick in BENCHES:
        print(f"== {script}", flush=True)
        out = subprocess.run(
            [sys.executable, str(HERE / script), *(quick if args.quick else full)],
            cwd=HERE,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines = out.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
        if out.returncode != 0:
            print(out.stderr[-2000:])
            rows[script] = f"FAILED (exit {out.returncode})"
        for line in lines:
            if line.startswith("RESULT "):
                rows.update(json.loads(line[7:]))
    width = max(len(k) for k in rows)
    print(
        f"\nftkit benchmarks, {dt.date.today()}, {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()} ({time.perf_counter() - started:.0f} s)"
    )
    print(f"| {'measure':{width}} | figure |")
    print(f"| {'-' * width} | --- |")
    for key, value in rows.items():
        print(f"| {key:{width}} | {value} |")


if __name__ == "__main__":
    main()
