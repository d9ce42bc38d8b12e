"""Jobs that resume: a worker SIGKILLed or stopped, a kernel killed, each mid-training, and the
job goes on where it was, training each step once."""

from __future__ import annotations

import signal

import pytest

from conftest import redis_only, sqlite_only, wait_for
from slow_jobs import (
    FAST,
    assert_history_continues,
    kill_kernel_of,
    seconds_per_step,
    slow_job,
    step_of,
    steps_past,
)

# Generous deadlines: on a busy machine a step can take ten times as long as on a quiet one.
pytestmark = pytest.mark.timeout(1800)
__all__ = ["seconds_per_step"]  # a fixture the tests here use


@pytest.mark.slow
@redis_only
def test_a_worker_killed_mid_training_loses_nothing(
    client, start_worker, tiny_model, seconds_per_step
):
    total = steps_past(10, seconds_per_step)
    doomed = start_worker(**FAST)
    job = slow_job(client, tiny_model, max_steps=total)
    wait_for(
        lambda: any("checkpoint-10 saved" in line for line in job.logs(100)),
        600,
        "the step-10 checkpoint",
    )
    doomed.proc.send_signal(signal.SIGKILL)
    wait_for(lambda: job.status()["status"] == "queued", 30, "the job to go back to the queue")
    assert job.status()["attempt"] == 2
    start_worker(**FAST)
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed", final["error"]
    logs = "\n".join(job.logs(500))
    assert "re-queued as attempt 2" in logs and "resuming from checkpoint-" in logs
    resumed_at = int(logs.split("resuming from checkpoint-")[1].split()[0])
    assert resumed_at >= 10
    assert_history_continues(job, total)


@pytest.mark.slow
@redis_only
def test_sigterm_hands_the_running_job_back_and_another_worker_resumes_it(
    client, start_worker, tiny_model, seconds_per_step
):
    total = steps_past(6, seconds_per_step)
    # The kernel stops after the step it is in and saves a checkpoint: allow it plenty of steps.
    patient = {"env": {"FTKIT_KILL_GRACE_SECONDS": str(max(60, 20 * seconds_per_step))}}
    first = start_worker(**patient)
    job = slow_job(client, tiny_model, max_steps=total, save_steps=0)
    wait_for(lambda: step_of(job) >= 6, 600, "step 6")
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=300) == 0, first.output()
    status = job.status()
    assert status["status"] == "queued" and status["attempt"] == 1
    assert any("handed back to the queue" in line for line in job.logs(100))
    start_worker(**patient)
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed", final["error"]
    logs = job.logs(500)
    assert any("resuming from checkpoint-" in line for line in logs)
    assert not any("queue message was lost" in line for line in logs), logs
    assert_history_continues(job, total)


@pytest.mark.slow
@sqlite_only
def test_drain_finishes_the_running_job_before_exiting(client, start_worker, tiny_model):
    worker = start_worker(args=("--drain",))
    job = slow_job(client, tiny_model, max_steps=8, save_steps=0)
    wait_for(lambda: step_of(job) >= 2, 600, "step 2")
    worker.proc.send_signal(signal.SIGTERM)
    # The rest of the job's steps on a busy machine can take minutes: wait on the job, not a clock.
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed" and final["attempt"] == 1, final["error"]
    assert final["current_step"] == 8
    assert worker.proc.wait(timeout=300) == 0
    assert not any("handed back" in line for line in job.logs(200))


@pytest.mark.slow
@redis_only
def test_a_kernel_killed_mid_training_is_retried_from_its_checkpoint(
    client, start_worker, tiny_model, seconds_per_step
):
    total = steps_past(10, seconds_per_step)
    worker = start_worker(**FAST)
    job = slow_job(client, tiny_model, max_steps=total, max_attempts=2)
    wait_for(
        lambda: any("checkpoint-10 saved" in line for line in job.logs(100)),
        600,
        "the step-10 checkpoint",
    )
    kill_kernel_of(client, worker, job)
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed" and final["attempt"] == 2, final["error"]
    logs = "\n".join(job.logs(500))
    assert "the notebook kernel died" in logs and "re-queued as attempt 2 of 2" in logs
    assert "resuming from checkpoint-" in logs
    assert_history_continues(job, total)
    # training ran to its end once: only the second attempt left a marker
    assert client.storage.trained_markers(job.id) == ["2.trained"]
    assert worker.proc.poll() is None  # the worker lives on


@pytest.mark.slow
@sqlite_only
def test_a_job_whose_kernel_dies_on_its_last_attempt_fails_naming_the_attempts(
    client, start_worker, tiny_model
):
    worker = start_worker(**FAST)
    job = slow_job(client, tiny_model, max_steps=200, max_attempts=1)
    wait_for(lambda: step_of(job) >= 2, 600, "step 2")
    kill_kernel_of(client, worker, job)
    final = wait_for(lambda: (s := job.status())["status"] == "failed" and s, 60, "the failure")
    assert final["error"].startswith("the notebook kernel died (killed, or out of memory)")
    assert final["error"].endswith("gave up after 1 attempts (max_attempts=1)")
    assert client.storage.trained_markers(job.id) == []
    follow = slow_job(client, tiny_model, max_steps=2)
    assert follow.wait(timeout=120, progress=False)["status"] == "completed"
