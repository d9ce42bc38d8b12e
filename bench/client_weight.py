"""Client weight: what a notebook pays, in a fresh interpreter, for `import ftkit` and the first
`ftkit.submit(...)` (data set validated and stored, job queued on the embedded SQLite queue in a new
folder) or `ftkit.panel()` -- beside importing alone the very third-party modules that call loaded
(huey, redis, fsspec, ipywidgets ...: the light libraries it needs, found by running it). Median
and range of N fresh interpreters each; wall time includes the interpreter's own start.

    python bench/client_weight.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO

PROBE = """
import json, resource, sys, time
started = time.perf_counter()
{code}
seconds = time.perf_counter() - started
modules = sorted(
    m for m in sys.modules
    if m.split(".")[0] not in sys.stdlib_module_names
    and not m.startswith(("ftkit", "__", "_distutils_hack"))
)
print(json.dumps({{
    "seconds": seconds,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "torch": "torch" in sys.modules,
    "modules": modules,
}}))
"""

CALLS = {
    "import ftkit": "import ftkit",
    "import ftkit; ftkit.submit(...)": (
        "import ftkit\n"
        "job = ftkit.submit(ftkit.example_data(), base_model='HuggingFaceTB/SmolLM2-135M', "
        "max_steps=1)\n"
        "assert job.status()['status'] == 'queued'"
    ),
    "import ftkit; ftkit.panel()": "import ftkit\nftkit.panel()",
}


def run(code: str, repeat: int) -> dict:
    walls, seconds, peaks, found = [], [], [], {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as home:  # a first use: no queue file yet
            env = {**os.environ, "FTKIT_HOME": home, "PYTHONPATH": str(REPO)}
            env = {k: v for k, v in env.items() if not k.startswith(("FTKIT_REDIS", "REDIS_URL"))}
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", PROBE.format(code=code)],
                capture_output=True,
                text=True,
                check=True,
                cwd=home,
                env=env,
            )
            walls.append(time.perf_counter() - t)
        found = json.loads(out.stdout.strip().splitlines()[-1])
        seconds.append(found["seconds"])
        peaks.append(found["peak_mb"])
    return {
        "torch": found["torch"],
        "modules": found["modules"],
        "wall": walls,
        "seconds": seconds,
        "peak": peaks,
    }


def spread(values: list[float], scale: float = 1000) -> str:
    return f"{statistics.median(values) * scale:.0f} ({min(values) * scale:.0f}-{max(values) * scale:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    rows = {}
    print(f"median (min-max) of {args.repeat} fresh interpreters each; wall ms includes start-up")
    empty = run("pass", args.repeat)
    print(
        f"  {'python -c pass':44} wall {spread(empty['wall'])} ms, peak {statistics.median(empty['peak']):.0f} MB"
    )
    for name, code in CALLS.items():
        ft = run(code, args.repeat)
        third = ft["modules"]
        # the same third-party modules, imported alone (parents first, as import order has them)
        base = run("\n".join(f"import {m}" for m in third) or "pass", args.repeat)
        tops = sorted({m.split(".")[0] for m in third})
        wall = statistics.median(ft["wall"]) / statistics.median(base["wall"])
        memory = statistics.median(ft["peak"]) / statistics.median(base["peak"])
        print(
            f"  {name:44} wall {spread(ft['wall'])} ms, in-process {spread(ft['seconds'])} ms, peak {statistics.median(ft['peak']):.0f} MB, torch: {ft['torch']}"
        )
        print(
            f"  {'  its third-party modules alone':44} wall {spread(base['wall'])} ms, in-process {spread(base['seconds'])} ms, peak {statistics.median(base['peak']):.0f} MB ({', '.join(tops) or 'none'})"
        )
        print(f"  {'  ratio':44} wall {wall:.2f}, memory {memory:.2f}")
        rows[
            f"client weight: `{name}` / the third-party modules it loads imported alone "
            f"({', '.join(tops) or 'none'}), fresh interpreters, N={args.repeat}"
        ] = (
            f"wall {wall:.2f} ({spread(ft['wall'])} vs {spread(base['wall'])} ms), memory "
            f"{memory:.2f} ({statistics.median(ft['peak']):.0f} vs "
            f"{statistics.median(base['peak']):.0f} MB); torch loaded: {ft['torch']}"
        )
    print("RESULT " + json.dumps(rows))


if __name__ == "__main__":
    main()
