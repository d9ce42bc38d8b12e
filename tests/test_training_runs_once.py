"""A job's training runs to its end once: a worker killed after training, a job whose end a
restarted Redis forgot, and a run the record no longer names each leave one training marker, and
a run resumed at training's end takes no step. (Split from test_resume.py so that the two test
processes share the slow fault tests evenly.)"""

from __future__ import annotations

import signal

import pytest

from conftest import redis_only, sqlite_only, wait_for
from ftkit.storage import Storage
from slow_jobs import (
    FAST,
    assert_history_continues,
    seconds_per_step,
    slow_job,
    step_of,
    steps_past,
)

# Generous deadlines: on a busy machine a step can take ten times as long as on a quiet one.
pytestmark = pytest.mark.timeout(1800)
__all__ = ["seconds_per_step"]  # a fixture the tests here use


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
