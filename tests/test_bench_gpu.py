"""``bench/gpu.py --smoke``: the GPU benchmark's own code, run on this CPU with the tiny model, so
CI and a reviewer without a GPU see it work end to end and print its table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_smoke_prints_the_table_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,  # a guard against a hang, not a speed test: it takes well under 2 min alone
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["hf-lora", "hf-qlora", "unsloth-lora", "unsloth-qlora"]
    lora = rows["hf-lora"]
    assert lora["tokens_per_s"] > 0 and lora["timed_steps"] == result["steps"] - result["warmup"]
    assert lora["mean_tokens"] == result["seq_len"]  # every sequence is full length
    assert lora["memory"] == "process RSS" and lora["memory_mib"] > 0 and "mfu" not in lora
    # on a CPU the other paths are refused with the worker's own words, not faked or dropped
    assert "needs a CUDA GPU" in rows["hf-qlora"]["skipped"]
    assert "needs a CUDA GPU" in rows["unsloth-lora"]["skipped"]
    table = proc.stdout[proc.stdout.index("| path |") :]
    assert "| transformers + peft | LoRA | float32 | " in table
    assert f"{lora['tokens_per_s']:,.0f}" in table and "MiB (process RSS)" in table
    assert table.count("skipped: ") == 3
