"""The GPU check's own scripts, run on this CPU in their ``--smoke`` modes, so that CI and a
reviewer without a GPU see them work end to end: ``scripts/gpu-check.sh --smoke`` (bench/gpu.py's
four variants with the tiny model, and two real jobs through ``ftkit worker``) and
``scripts/gather-gpu-wheels.sh --smoke`` (its requirement walk, offline, over wheels it makes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_smoke_prints_both_tables_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--smoke"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "FTKIT_GPU_JSON": str(out)},
        timeout=900,  # a guard against a hang, not a speed test: it takes about 90 s alone
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "gradient checkpointing: on in every variant" in proc.stdout
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
    assert table.count("skipped: ") == 3
    # the two real jobs: each completed, with its phases, its report (both forms) and adapter
    jobs = {j["backend_asked"]: j for j in result["jobs"]}
    assert list(jobs) == ["auto", "hf"]
    for job in jobs.values():
        assert job["status"] == "completed", job
        assert job["backend_used"] == "hf"  # no CUDA here: auto picks transformers + peft
        assert job["landed"] == {"report.ipynb": True, "report.html": True, "adapter": True}
        assert job["warnings"] == []
        phases = job["phases"]
        assert phases["trainer set-up and first step"] > 0 and phases["other steps"] > 0
        assert sum(phases.values()) <= job["total_seconds"] + 0.5  # parts of the whole
    assert (
        "| **submit -> seen ended** |" in proc.stdout
        and "| report.html | landed | landed |" in proc.stdout
    )


def test_gather_smoke_follows_extras_and_lists_what_it_could_not_satisfy():
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gather-gpu-wheels.sh"), "--smoke"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gather smoke: ok" in proc.stdout and "FAIL" not in proc.stdout
