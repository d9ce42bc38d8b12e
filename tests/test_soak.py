"""The soak, short: jobs through two workers while a worker, a kernel and redis-server are
SIGKILLed and storage goes away during an upload. Executions are counted by the per-attempt
markers in storage: every job ends completed, with its training run to its end exactly once.

One worker is killed mid-training, the other from a job's last step on: while the last
checkpoint, the marker, the sample answers and the upload are written, where a kernel left to
finish on its own, or a next attempt that found nothing to resume from, would train twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 7 minutes on 2 busy cores: every job trains for real
def test_no_job_is_lost_stuck_or_trained_twice_through_every_kind_of_fault():
    faults = ["--worker-kills=2", "--worker-kill-during=training,end", "--kernel-kills=1"]
    faults += ["--redis-kills=1", "--outages=1"]
    soak = subprocess.Popen(
        # 60 steps: each fault needs a job mid-training to strike, and a job's kernel now starts
        # warm in half a second, so training is most of a job
        [sys.executable, str(REPO / "bench" / "soak.py"), "--jobs=4", "--steps=60", *faults]
        + ["--fault-gap=2", "--submit-gap=3", "--outage-seconds=6", "--deadline=900"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,  # its workers, kernels and servers go with it, whatever happens
    )
    try:
        stdout, stderr = soak.communicate(timeout=1700)
    finally:
        try:
            os.killpg(soak.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert soak.returncode == 0, stdout[-3000:] + stderr[-3000:]
    line = next(line for line in stdout.splitlines() if line.startswith("COUNTS "))
    counts = json.loads(line[len("COUNTS ") :])
    report = stdout[-3000:]
    # each fault really happened (a skipped one says so in the output)
    assert counts["worker kills"] == 2, report
    assert "(training)" in stdout and "(end)" in stdout, report
    for kind in ("kernel kills", "Redis kills", "storage outages"):
        assert counts[kind] == 1, report
    assert counts["storage retries waited out"] >= 1, report
    assert (counts["lost"], counts["stuck"], counts["duplicated"]) == (0, 0, 0), report
    assert counts["completed"] == 4, report
