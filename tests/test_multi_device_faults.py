"""A two-device job whose worker goes away mid-training: handed back on SIGTERM (its checkpoint
saved), then its next worker SIGKILLed. Each time no training process is left (counted), and
the job resumes from its checkpoint, training each step once, with one exactly-once marker."""

from __future__ import annotations

import signal

import pytest

from conftest import EXAMPLE_DATA, redis_only, wait_for
from slow_jobs import (
    SLOW_ON_TWO,
    TWO_DEVICES,
    assert_history_continues,
    none_left,
    step_of,
    training_processes,
)

pytestmark = pytest.mark.timeout(1800)


@pytest.mark.slow
@redis_only
def test_a_handed_back_then_killed_two_device_job_resumes_with_no_process_left(
    client, start_worker, tiny_model
):
    patient = {"env": {**TWO_DEVICES["env"], "FTKIT_KILL_GRACE_SECONDS": "120"}}
    first = start_worker(**patient)
    job = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), **{**SLOW_ON_TWO, "max_steps": 40}
    )
    wait_for(lambda: step_of(job) >= 3, 600, "step 3")
    assert len(training_processes(job.id)) == 3  # the launcher and two training processes
    first.proc.send_signal(signal.SIGTERM)  # hand back: every rank stops after one step, saved
    assert first.proc.wait(timeout=300) == 0, first.output()
    none_left(job.id)
    assert job.status()["status"] == "queued" and job.status()["attempt"] == 1
    handed_at = step_of(job)
    assert any(f"checkpoint-{handed_at} saved" in line for line in job.logs(200))

    second = start_worker(**TWO_DEVICES)
    wait_for(lambda: step_of(job) >= handed_at + 6, 600, "steps past the resume")
    assert any(f"resuming from checkpoint-{handed_at}" in line for line in job.logs(300))
    second.proc.send_signal(signal.SIGKILL)
    none_left(job.id)
    wait_for(lambda: job.status()["status"] == "queued", 60, "the job to go back to the queue")

    start_worker(**TWO_DEVICES)
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed" and final["attempt"] == 2, final["error"]
    assert_history_continues(job, 40)
    assert client.storage.trained_markers(job.id) == ["2.trained"]
