"""Every job that submit() accepted runs to an end or fails visibly: submit is all or nothing, a
queued job whose message was lost is queued again, a secret mismatch is loud, and attempts are a
property of the job. Faults are real: messages deleted from the real queue, workers SIGKILLed."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from conftest import EXAMPLE_DATA, redis_only, wait_for
from ftkit import queue
from ftkit.errors import ConfigError


def job_config(tiny_model, **overrides):
    return {"base_model": str(tiny_model), "max_steps": 2, "max_seq_length": 128, **overrides}


def nothing_written(client) -> bool:
    return client.store.count() == 0 and client.huey.pending_count() == 0


@pytest.mark.parametrize("priority", ["high", 10**30, 1.5, True, -(10**6)])
def test_a_bad_priority_is_refused_before_anything_is_written(client, tiny_model, priority):
    with pytest.raises(ConfigError, match="priority"):
        client.submit(EXAMPLE_DATA, priority=priority, **job_config(tiny_model))
    assert nothing_written(client)


@pytest.mark.parametrize("attempts", [0, "3", 10**9])
def test_a_bad_max_attempts_is_refused_before_anything_is_written(client, tiny_model, attempts):
    with pytest.raises(ConfigError, match="max_attempts"):
        client.submit(EXAMPLE_DATA, max_attempts=attempts, **job_config(tiny_model))
    assert nothing_written(client)


def test_a_submitted_job_has_its_record_and_exactly_one_message(client, tiny_model):
    job = client.submit(EXAMPLE_DATA, priority=5, **job_config(tiny_model))
    record = client.store.get(job.id)
    assert record["max_attempts"] == 3 and record["priority"] == 5
    assert client.store.message_pending(record) and client.huey.pending_count() == 1


def test_a_retry_with_the_same_idempotency_key_returns_a_job_that_will_run(client, tiny_model):
    ids = set()

    def submit():
        ids.add(client.submit(EXAMPLE_DATA, idempotency_key="k1", **job_config(tiny_model)).id)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 1 and client.store.count() == 1 and client.huey.pending_count() == 1
    assert client.store.message_pending(client.store.get(ids.pop()))


def test_a_lost_message_is_queued_again_exactly_once(client, tiny_model):
    job = client.submit(EXAMPLE_DATA, **job_config(tiny_model))
    client.huey.flush()  # the message is lost; the record survives
    assert client.huey.pending_count() == 0
    assert not client.store.message_pending(client.store.get(job.id))
    assert queue.requeue_lost(client.store, client.huey, grace=60) == []  # still within grace
    moved: list[list[str]] = []
    reapers = [
        threading.Thread(
            target=lambda: moved.append(queue.requeue_lost(client.store, client.huey, grace=0))
        )
        for _ in range(3)
    ]
    for t in reapers:
        t.start()
    for t in reapers:
        t.join()
    assert sorted(map(len, moved)) == [0, 0, 1], moved
    assert client.huey.pending_count() == 1
    assert client.store.message_pending(client.store.get(job.id))
    assert any("queue message was lost" in line for line in job.logs())


def test_a_message_a_worker_has_just_taken_is_not_mistaken_for_a_lost_one(client, tiny_model):
    """Between taking a message and claiming its job, a worker holds the only trace of it: a
    reaper scanning then must wait for the message to stay missing, or it queues a second one."""
    grace = 0.2
    job = client.submit(EXAMPLE_DATA, **job_config(tiny_model))
    assert client.huey.dequeue() is not None  # a worker took the message, and has not claimed yet
    time.sleep(grace)  # the job has waited its grace: a reaper without memory would move it now
    missing: dict = {}
    assert queue.requeue_lost(client.store, client.huey, grace=grace, missing=missing) == []
    assert client.store.transition(job.id, "preparing", allowed=("queued",), worker="w1")
    time.sleep(grace)
    assert queue.requeue_lost(client.store, client.huey, grace=grace, missing=missing) == []
    assert client.huey.pending_count() == 0
    assert not any("queue message was lost" in line for line in job.logs())


def test_a_message_still_missing_on_a_later_scan_is_queued_again(client, tiny_model):
    grace = 0.2
    job = client.submit(EXAMPLE_DATA, **job_config(tiny_model))
    client.huey.flush()
    time.sleep(grace)
    missing: dict = {}
    assert queue.requeue_lost(client.store, client.huey, grace=grace, missing=missing) == []
    time.sleep(grace)
    assert queue.requeue_lost(client.store, client.huey, grace=grace, missing=missing) == [job.id]
    assert client.store.message_pending(client.store.get(job.id)) and missing == {}


@pytest.mark.slow
def test_a_worker_reaps_a_lost_message_and_the_job_completes(client, start_worker, tiny_model):
    job = client.submit(EXAMPLE_DATA, **job_config(tiny_model))
    client.huey.flush()
    start_worker()  # its heartbeat notices, once the grace has passed
    final = job.wait(timeout=300, progress=False)
    assert final["status"] == "completed", final["error"]
    assert any("queue message was lost" in line for line in job.logs(100))


@redis_only
def test_a_worker_that_requires_signatures_fails_an_unsigned_job_visibly(
    client, start_worker, tiny_model
):
    job = client.submit(EXAMPLE_DATA, **job_config(tiny_model))  # no secret, no worker yet
    start_worker(env={"FTKIT_QUEUE_SECRET": "the-workers-secret"})
    final = job.wait(timeout=120, progress=False)
    assert final["status"] == "failed"
    assert "FTKIT_QUEUE_SECRET" in final["error"] and "not signed" in final["error"]
    # and now that a worker publishes its fingerprint, the client refuses at submit
    with pytest.raises(ConfigError, match="FTKIT_QUEUE_SECRET"):
        client.submit(EXAMPLE_DATA, **job_config(tiny_model))


@pytest.mark.slow
@redis_only
def test_a_job_whose_workers_keep_dying_fails_after_its_own_max_attempts(
    client, start_worker, tiny_model
):
    job = client.submit(
        EXAMPLE_DATA,
        max_attempts=2,
        **job_config(
            tiny_model,
            max_steps=400,
            batch_size=8,
            gradient_accumulation_steps=4,
            max_seq_length=256,
        ),
    )
    for attempt in (1, 2):
        worker = start_worker()
        wait_for(
            lambda attempt=attempt: (
                (s := job.status())["status"] == "training" and s["attempt"] == attempt
            ),
            180,
            f"attempt {attempt} training",
        )
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
    # no worker is left: reading the status settles the job once the grace has passed
    final = wait_for(lambda: (s := job.status())["status"] == "failed" and s, 60, "the job to fail")
    assert "gave up after 2 attempts (max_attempts=2)" in final["error"]
    logs = "\n".join(job.logs(200))
    assert "re-queued as attempt 2 of 2" in logs and "failed after 2 of 2 attempts" in logs
