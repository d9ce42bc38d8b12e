"""Jobs that resume: a worker SIGKILLed or stopped, a kernel killed, each mid-training or after it,
and the job goes on where it was, training each step once."""

from __future__ import annotations

import signal

import pytest

from conftest import wait_for
from ftkit.storage import Storage
from slow_jobs import (
    FAST,
    assert_history_continues,
    kill_kernel_of,
    redis_only,
    seconds_per_step,
    slow_job,
    sqlite_only,
    step_of,
    steps_past,
)

# Generous deadlines: on a busy machine a step can take ten times as long as on a quiet one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
__all__ = ["seconds_per_step"]  # a fixture the tests here use


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


@sqlite_only
@pytest.mark.parametrize("save_steps", [5, 0])  # 0: the job keeps only its last step's weights
def test_a_worker_killed_after_training_ended_leaves_nothing_to_train_again(
    client, start_worker, tiny_model, save_steps
):
    # Training's end leaves a marker; the report's sample answers (twenty prompts, before and
    # after) keep the job running well after it: the kill lands between the two.
    doomed = start_worker(**FAST)
    prompts = [f"Question {i}: who are you?" for i in range(20)]
    job = slow_job(client, tiny_model, max_steps=12, save_steps=save_steps, sample_prompts=prompts)
    last = Storage.run_parts(job.id, "checkpoints", "checkpoint-12", "complete")
    wait_for(lambda: client.storage.exists(*last), 300, "training's end", interval=0.05)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    assert job.status()["status"] != "completed", "the kill came after the job had ended"
    start_worker(**FAST)
    final = job.wait(timeout=600, progress=False)
    assert final["status"] == "completed" and final["attempt"] == 2, final["error"]
    assert any("resuming from checkpoint-12" in line for line in job.logs(500))
    assert client.storage.trained_markers(job.id) == ["1.trained"]  # trained to its end once
    assert_history_continues(job, 12)


@redis_only
def test_a_run_the_record_no_longer_names_stops_and_the_job_trains_once(
    client, start_worker, tiny_model, seconds_per_step
):
    # What a Redis restored from an older state can leave behind: the record names another worker
    # than the one running the job (here one that never lived, so the reaper re-queues the job).
    total = steps_past(6, seconds_per_step)
    worker = start_worker(**FAST)
    job = slow_job(client, tiny_model, max_steps=total)
    wait_for(lambda: step_of(job) >= 6, 600, "step 6")
    running = next(w for w in client.workers() if w.get("current_job") == job.id)
    client.store.update(job.id, worker="restored-from-an-older-state")
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed" and final["attempt"] == 2, final["error"]
    logs = "\n".join(job.logs(500))
    assert f"worker {running['worker_id']} stopped its run of attempt 1" in logs, logs
    assert "resuming from checkpoint-" in logs
    assert client.storage.trained_markers(job.id) == ["2.trained"]  # the first run saved nothing
    assert_history_continues(job, total)
    assert worker.proc.poll() is None


@redis_only
def test_a_job_whose_end_redis_forgot_is_ended_again_without_training_again(
    client, start_worker, tiny_model
):
    # redis-server killed under appendfsync everysec loses up to a second of writes: the job's
    # end among them, the record is left active, naming a worker that is alive and has moved on.
    worker = start_worker(**FAST)
    job = slow_job(client, tiny_model, max_steps=6, save_steps=0)
    assert job.wait(timeout=600, progress=False)["status"] == "completed"
    assert client.store.transition(job.id, "saving", allowed=("completed",))  # as if restored
    final = wait_for(
        lambda: (r := job.status())["status"] == "completed" and r["attempt"] == 2 and r,
        600,
        "the job's second end",
    )
    logs = "\n".join(job.logs(500))
    assert "is alive but no longer running it" in logs and "resuming from checkpoint-6" in logs
    assert "checkpoint-6 is training's end: no step left" in logs and "step 7" not in logs
    assert client.storage.trained_markers(job.id) == ["1.trained"]  # trained to its end once
    assert final["result"]["global_step"] == 6
    assert worker.proc.poll() is None


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
