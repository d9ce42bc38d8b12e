"""Client weight: `python -c "import ftkit"` wall time and peak memory beside
`import huey, redis, fsspec, ipywidgets`, median of N fresh interpreters each.

    python bench/client_weight.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import REPO

PROBE = (
    "import resource, sys, time; t = time.perf_counter(); {imports}; "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'torch' in sys.modules)"
)


def run(imports: str, repeat: int) -> tuple[float, float, float, bool]:
    walls, imports_s, peaks, torch = [], [], [], False
    for _ in range(repeat):
        import time

        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(imports=imports)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.split()
        walls.append(time.perf_counter() - t)
        imports_s.append(float(out[0]))
        peaks.append(float(out[1]))
        torch = torch or out[2] == "True"
    return statistics.median(walls), statistics.median(imports_s), statistics.median(peaks), torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    ft = run("import ftkit", args.repeat)
    base = run("import huey, redis, fsspec, ipywidgets", args.repeat)
    for name, r in (("import ftkit", ft), ("import huey, redis, fsspec, ipywidgets", base)):
        print(
            f"  {name:40} wall {r[0] * 1000:6.0f} ms (imports {r[1] * 1000:5.0f} ms), peak {r[2]:5.1f} MB, torch: {r[3]}"
        )
    print(f"  ratio: wall {ft[0] / base[0]:.2f}, memory {ft[2] / base[2]:.2f}")
    print(
        "RESULT "
        + json.dumps(
            {
                "client import (ftkit / huey+redis+fsspec+ipywidgets)": f"wall {ft[0] / base[0]:.2f}, memory {ft[2] / base[2]:.2f}, torch loaded: {ft[3]}"
            }
        )
    )


if __name__ == "__main__":
    main()
