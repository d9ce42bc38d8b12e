"""Validation speed and memory: ``inspect_dataset`` beside a plain read of the same file (every line
``json.loads``-ed), on a generated chat JSONL, side by side in one run.

    python bench/validate.py [--mb 500]

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
        results = {name: measure(["-c", code, str(path)]) for name, code in READERS.items()}
    plain, ftkit = results.values()
    assert plain["rows"] == ftkit["rows"], results
    print(f"{int(plain['rows']):,} rows; each reader in a fresh process")
    print(f"  {'':26} {'seconds':>8} {'MB/s':>8} {'peak MB':>8}")
    for name, r in results.items():
        print(f"  {name:26} {r['seconds']:8.1f} {size_mb / r['seconds']:8.1f} {r['peak_mb']:8.0f}")
    print(f"  {'(a bare interpreter)':26} {floor['seconds']:8.2f} {'':>8} {floor['peak_mb']:8.0f}")
    print(
        f"  inspect_dataset / plain read: {ftkit['seconds'] / plain['seconds']:.2f}x the time, "
        f"{ftkit['peak_mb'] / plain['peak_mb']:.2f}x the peak memory"
    )
    figure = (
        f"{size_mb / ftkit['seconds']:.0f} vs {size_mb / plain['seconds']:.0f} MB/s "
        f"({ftkit['seconds'] / plain['seconds']:.2f}x the time), "
        f"peak {ftkit['peak_mb']:.0f} / {plain['peak_mb']:.0f} MB"
    )
    print("RESULT " + json.dumps({f"validate {size_mb:.0f} MB JSONL (ftkit / plain read)": figure}))


if __name__ == "__main__":
    main()
