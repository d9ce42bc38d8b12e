"""`ftkit demo` (what `make demo` runs) shows learning: the loss at least halves and the fine-tuned
model answers with what the demo data taught, where the base model did not."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftkit.cli.demo import DEMO_DATA, DEMO_PROMPTS


def taught_answers() -> dict[str, str]:
    """prompt -> the answer the demo data gives it."""
    answers = {}
    for line in DEMO_DATA.read_text(encoding="utf-8").splitlines():
        user, assistant = json.loads(line)["messages"]
        answers[user["content"]] = assistant["content"]
    return answers


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_the_demo_halves_the_loss_and_answers_what_it_was_taught(settings, tmp_path):
    env = {**os.environ, **settings.to_env(), "FTKIT_SCRATCH_DIR": str(tmp_path / "scratch")}
    out = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "demo", "--model-dir", str(tmp_path / "model")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", out.stdout).groups())
    assert last <= first / 2, out.stdout

    answers = re.findall(r"prompt: (.*)\n  before: (.*)\n  after:  (.*)\n", out.stdout)
    assert [prompt for prompt, _, _ in answers] == DEMO_PROMPTS, out.stdout
    taught = taught_answers()
    for prompt, before, after in answers:
        assert taught[prompt] in ast.literal_eval(after), out.stdout
        assert taught[prompt] not in ast.literal_eval(before)

    report = Path(re.search(r"report: +(\S+)", out.stdout).group(1))
    warnings = [
        line
        for cell in json.loads(report.read_text())["cells"]
        for output in cell.get("outputs", [])
        for line in "".join(output.get("text", "")).splitlines()
        if "Warning" in line
    ]
    assert not warnings, "the report shows no library warnings"
