"""Validation speed and memory: ``inspect_dataset`` beside a plain read of the same file (every line
``json.loads``-ed), on a generated chat JSONL, side by side in one run.

    python bench/validate.py [--mb 500] [--repeat 3]

Each measurement runs in a fresh process; the wall time is the child's whole life (interpreter
start included) and the peak memory is the child's ru_maxrss, read with os.wait4. A forked child's
ru_maxrss starts at its parent's RSS, so the file is written by a child too and this process stays
at a bare interpreter's size (printed as the floor). The lines are all distinct (a few thousand
templates, each line numbered), so duplicate detection pays its full cost. The file lives in a
temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READERS = {
    "plain read + json.loads": (
        "import json, sys\n"
        "rows = 0\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    for line in f:\n"
        "        json.loads(line)\n"
        "        rows += 1\n"
        "print(rows)\n"
    ),
    "ftkit inspect_dataset": (
        "import sys\n"
        "from ftkit.data import inspect_dataset\n"
        "profile = inspect_dataset(sys.argv[1])\n"
        "assert profile.ok, profile.summary()\n"
        "print(profile.rows)\n"
    ),
}
WORDS = (
    "the a model data train loss token step learn answer question user assistant why how "
    "because gradient adapter rank café naïve über résumé 東京 数据 ✓"
).split()


def line_templates(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """JSONL lines split where a line number goes, so every generated line is distinct."""
    templates = []
    for _ in range(count):
        question = " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(10, 120)))
        record = {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"@@ {question}"},
                {"role": "assistant", "content": answer},
            ]
        }
        head, tail = json.dumps(record, ensure_ascii=False).split("@@")
        templates.append((head, tail + "\n"))
    return templates


def generate(path: Path, mb: int) -> None:
    templates = line_templates(4000, random.Random(0))
    target, written, number = mb << 20, 0, 0
    with open(path, "wb") as f:
        while written < target:
            block = []
            for head, tail in templates:
                number += 1
                block.append(f"{head}{number}{tail}")
            data = "".join(block).encode()
            f.write(data)
            written += len(data)


def measure(args: list[str]) -> dict[str, float]:
    """Run a fresh Python process: its wall time, its peak RSS, and the number it prints."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{args[:2]} failed with exit code {child.returncode}")
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "rows": int(out or 0)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mb", type=int, default=500, help="size of the generated file in MB (default 500)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each reader, interleaved")
    parser.add_argument("--write-to", type=Path, help=argparse.SUPPRESS)  # the generating child
    args = parser.parse_args()
    if args.write_to:
        generate(args.write_to, args.mb)
        return
    with tempfile.TemporaryDirectory(prefix="ftkit-bench-validate-") as tmp:
        path = Path(tmp) / "chat.jsonl"
        made = measure([__file__, "--write-to", str(path), "--mb", str(args.mb)])
        size_mb = path.stat().st_size / (1 << 20)
        print(f"generated {size_mb:.0f} MB of chat JSONL in {made['seconds']:.1f} s")
        floor = measure(["-c", "pass"])
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in READERS}
        for _ in range(args.repeat):  # interleaved: drift on the machine hits both alike
            for name, code in READERS.items():
                runs[name].append(measure(["-c", code, str(path)]))
    plain, ftkit = runs.values()
    assert plain[0]["rows"] == ftkit[0]["rows"], runs
    print(
        f"{int(plain[0]['rows']):,} rows; each reader in a fresh process, median of {args.repeat}"
    )
    print(f"  {'':26} {'seconds':>8} {'MB/s':>8} {'peak MB':>8}")
    for name, found in runs.items():
        seconds = statistics.median(r["seconds"] for r in found)
        peak = statistics.median(r["peak_mb"] for r in found)
        print(f"  {name:26} {seconds:8.1f} {size_mb / seconds:8.1f} {peak:8.0f}")
    print(f"  {'(a bare interpreter)':26} {floor['seconds']:8.2f} {'':>8} {floor['peak_mb']:8.0f}")
    ratios = [f["seconds"] / p["seconds"] for f, p in zip(ftkit, plain)]
    mine = statistics.median(r["peak_mb"] for r in ftkit)
    theirs = statistics.median(r["peak_mb"] for r in plain)
    print(
        f"  inspect_dataset / plain read: {statistics.median(ratios):.2f}x the time "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}), {mine / theirs:.2f}x the peak memory"
    )
    figure = (
        f"{statistics.median(ratios):.2f}x the time (range {min(ratios):.2f}-{max(ratios):.2f}; "
        f"{size_mb / statistics.median(r['seconds'] for r in ftkit):.0f} vs "
        f"{size_mb / statistics.median(r['seconds'] for r in plain):.0f} MB/s), "
        f"peak {mine:.0f} / {theirs:.0f} MB"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                f"validate {size_mb:.0f} MB JSONL, ftkit inspect_dataset / plain read + json.loads, "
                f"N={args.repeat}": figure
            }
        )
    )


if __name__ == "__main__":
    main()
