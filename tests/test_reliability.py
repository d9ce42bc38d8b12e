"""Jobs that survive: each promise is tested by really killing, stopping or breaking something."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from conftest import EXAMPLE_DATA, RedisServer, free_port, wait_for
from ftkit.errors import BrokerUnavailable

pytestmark = pytest.mark.slow
redis_only = pytest.mark.parametrize("settings", ["redis"], indirect=True)
sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
# The job store's contract runs on both backends in test_jobs.py; each slow fault test here runs
# on one of them, alternating, to keep the suite short.
FAST = {"env": {"FTKIT_KILL_GRACE_SECONDS": "3"}}


def slow_job(client, tiny_model, **overrides):
    """About half a second per step on this machine: slow enough to interrupt mid-training."""
    config = dict(
        base_model=str(tiny_model),
        max_steps=30,
        batch_size=8,
        gradient_accumulation_steps=4,
        max_seq_length=256,
        learning_rate=3e-3,
        save_steps=5,
    )
    return client.submit(EXAMPLE_DATA, **{**config, **overrides})


def step_of(job) -> int:
    return job.status()["current_step"] or 0


def assert_history_continues(job, total: int) -> None:
    steps = [m["step"] for m in job.metrics()]
    assert steps == list(range(1, total + 1)), steps


@redis_only
def test_a_worker_killed_mid_training_loses_nothing(client, start_worker, tiny_model):
    doomed = start_worker(**FAST)
    job = slow_job(client, tiny_model)
    wait_for(
        lambda: any("checkpoint-10 saved" in line for line in job.logs(100)),
        120,
        "the step-10 checkpoint",
    )
    doomed.proc.send_signal(signal.SIGKILL)
    wait_for(lambda: job.status()["status"] == "queued", 30, "the job to go back to the queue")
    assert job.status()["attempt"] == 2
    start_worker(**FAST)
    final = job.wait(timeout=240, progress=False)
    assert final["status"] == "completed", final["error"]
    logs = "\n".join(job.logs(300))
    assert "re-queued as attempt 2" in logs and "resuming from checkpoint-" in logs
    resumed_at = int(logs.split("resuming from checkpoint-")[1].split()[0])
    assert resumed_at >= 10
    assert_history_continues(job, 30)


@redis_only
def test_sigterm_hands_the_running_job_back_and_another_worker_resumes_it(
    client, start_worker, tiny_model
):
    first = start_worker(**FAST)
    job = slow_job(client, tiny_model, save_steps=0)
    wait_for(lambda: step_of(job) >= 6, 120, "step 6")
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=60) == 0, first.output()
    status = job.status()
    assert status["status"] == "queued" and status["attempt"] == 1
    assert any("handed back to the queue" in line for line in job.logs(100))
    start_worker(**FAST)
    final = job.wait(timeout=240, progress=False)
    assert final["status"] == "completed", final["error"]
    assert any("resuming from checkpoint-" in line for line in job.logs(300))
    assert_history_continues(job, 30)


@sqlite_only
def test_drain_finishes_the_running_job_before_exiting(client, start_worker, tiny_model):
    worker = start_worker(args=("--drain",))
    job = slow_job(client, tiny_model, max_steps=12, save_steps=0)
    wait_for(lambda: step_of(job) >= 2, 120, "step 2")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=120) == 0
    assert job.status()["status"] == "completed"


@redis_only
def test_a_queued_job_that_is_cancelled_never_starts(client, start_worker, tiny_model):
    job = slow_job(client, tiny_model, max_steps=2)
    assert job.cancel() == "cancelled"
    start_worker()
    follow = slow_job(client, tiny_model, max_steps=2)
    assert follow.wait(timeout=120, progress=False)["status"] == "completed"
    assert job.status()["status"] == "cancelled"
    assert not any("picked up" in line for line in job.logs(100))


@sqlite_only
def test_a_running_job_stops_within_seconds_when_cancelled_and_keeps_its_report(
    client, start_worker, tiny_model
):
    start_worker()
    job = slow_job(client, tiny_model, max_steps=200, save_steps=0)
    wait_for(lambda: step_of(job) >= 3, 120, "step 3")
    asked = time.monotonic()
    job.cancel()
    final = job.wait(timeout=60, progress=False, poll=0.1)
    assert time.monotonic() - asked < 10
    assert final["status"] == "cancelled" and final["current_step"] < 200
    assert final["report"] and open(final["report"]).read()
    after = slow_job(client, tiny_model, max_steps=2)
    assert after.wait(timeout=120, progress=False)["status"] == "completed", (
        "the worker takes the next job"
    )


@redis_only
def test_a_kernel_that_does_not_answer_a_cancel_is_killed_after_the_grace(
    client, start_worker, tiny_model, tmp_path
):
    # Tokenizing 72,000 conversations takes the kernel half a minute with no step boundary to check
    # for a cancel: the watchdog must kill it.
    big = tmp_path / "big.jsonl"
    big.write_text(EXAMPLE_DATA.read_text() * 600)
    start_worker(**FAST)
    job = client.submit(big, base_model=str(tiny_model), max_steps=2, max_seq_length=256)
    wait_for(
        lambda: any("Data set" in line or "picked up" in line for line in job.logs(20)),
        60,
        "the job to start",
    )
    time.sleep(4)  # the kernel is now busy preparing the data
    assert job.status()["status"] == "preparing"
    asked = time.monotonic()
    job.cancel()
    final = job.wait(timeout=60, progress=False, poll=0.1)
    assert final["status"] == "cancelled" and time.monotonic() - asked < 15
    assert any("did not stop within 3 s: killed it" in line for line in job.logs(100))


@sqlite_only
def test_a_job_past_its_timeout_fails_as_timed_out(client, start_worker, tiny_model):
    start_worker(**FAST)
    job = slow_job(client, tiny_model, max_steps=500, save_steps=0, timeout_minutes=0.25)
    final = job.wait(timeout=120, progress=False)
    assert final["status"] == "failed" and final["error"] == "timed out after 0.25 minutes"


@redis_only
def test_an_active_job_without_a_live_worker_is_never_stuck(client, start_worker, tiny_model):
    doomed = start_worker(env={"FTKIT_MAX_ATTEMPTS": "1"})
    job = slow_job(client, tiny_model, max_steps=200)
    wait_for(lambda: job.status()["status"] == "training", 120, "training")
    doomed.proc.send_signal(signal.SIGKILL)
    # no worker is left: reading the status is enough to settle it once the grace has passed
    final = wait_for(
        lambda: (s := job.status())["status"] in ("queued", "failed") and s,
        30,
        "the job to be settled",
    )
    assert final["status"] == "queued" and final["attempt"] == 2


def test_duplicate_submit_with_an_idempotency_key_returns_the_same_job(client, tiny_model):
    first = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), idempotency_key="nightly-2026-11-29"
    )
    again = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), idempotency_key="nightly-2026-11-29"
    )
    assert first.id == again.id and client.store.count() == 1 and client.huey.pending_count() == 1


def test_queued_jobs_and_records_survive_a_redis_restart_with_aof(
    tmp_path, tiny_model, start_worker_for
):
    server = RedisServer(port=free_port(), dir=tmp_path, appendonly=True)
    server.start()
    try:
        client = start_worker_for.client(server.url)
        job = client.submit(
            EXAMPLE_DATA, base_model=str(tiny_model), max_steps=3, max_seq_length=128
        )
        server.stop()
        with pytest.raises(
            BrokerUnavailable, match=f"cannot reach Redis at 127.0.0.1:{server.port}"
        ):
            job.status()
        server.start()
        assert job.status()["status"] == "queued" and client.huey.pending_count() == 1
        start_worker_for.worker()
        assert job.wait(timeout=120, progress=False)["status"] == "completed"
        # a running worker rides out a restart and takes the next job
        server.stop()
        time.sleep(2)
        server.start()
        after = client.submit(
            EXAMPLE_DATA, base_model=str(tiny_model), max_steps=2, max_seq_length=128
        )
        assert after.wait(timeout=120, progress=False)["status"] == "completed"
    finally:
        server.stop()


@pytest.fixture
def start_worker_for(tmp_path):
    """Workers and a client on a redis-server the test owns (so it can restart it)."""
    from conftest import WorkerProcess
    from ftkit.client import Client
    from ftkit.config import Settings

    state: dict = {}
    workers: list[WorkerProcess] = []

    class Helper:
        def client(self, url: str) -> Client:
            state["settings"] = Settings.from_env(
                {},
                redis_url=url,
                storage=str(tmp_path / "storage"),
                heartbeat_seconds=0.5,
                worker_grace_seconds=3.0,
            )
            return Client(state["settings"])

        def worker(self) -> WorkerProcess:
            scratch = tmp_path / f"w{len(workers)}"
            scratch.mkdir()
            workers.append(
                WorkerProcess(state["settings"], scratch, tmp_path / f"w{len(workers)}.log")
            )
            return workers[-1]

    yield Helper()
    for w in workers:
        w.stop(timeout=30)


def test_a_tls_redis_url_with_a_password_works_and_the_password_never_leaks(
    tmp_path, tiny_model, start_worker_for
):
    password = "s3cret-Redis-pw"
    server = RedisServer(port=free_port(), dir=tmp_path, password=password, tls=True)
    server.start()
    try:
        assert server.url.startswith("rediss://")
        client = start_worker_for.client(server.url)
        start_worker_for.worker()
        job = client.submit(
            EXAMPLE_DATA, base_model=str(tiny_model), max_steps=2, max_seq_length=128
        )
        final = job.wait(timeout=120, progress=False)
        assert final["status"] == "completed", final["error"]
        report = open(final["report"]).read()
        assert password not in report and password not in str(client.store.get(job.id))
        assert password not in "\n".join(job.logs(500))
        log = subprocess.run(
            ["cat", str(tmp_path / "w0.log")], capture_output=True, text=True
        ).stdout
        assert password not in log
    finally:
        server.stop()
