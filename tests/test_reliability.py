"""Jobs that survive: each promise is tested by really killing, stopping or breaking something
(jobs that resume after a kill are in test_resume.py)."""

from __future__ import annotations

import math
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import EXAMPLE_DATA, RedisServer, free_port, redis_only, sqlite_only, wait_for
from ftkit.errors import BrokerUnavailable
from slow_jobs import FAST, cancel_mid_training, kernel_of, slow_job

# Generous deadlines: on a busy machine a step can take ten times as long as on a quiet one.
pytestmark = pytest.mark.timeout(1800)


def tokenizing_seconds_per_copy(tiny_model) -> float:
    """How long the kernel's tokenizing (render.build_dataset) takes per copy of the example data
    on this machine, measured on 20 copies with the tiny model's tokenizer."""
    from transformers import AutoTokenizer

    from ftkit.data.render import build_dataset

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    with tempfile.TemporaryDirectory() as folder:
        sample = Path(folder) / "sample.jsonl"
        sample.write_text(EXAMPLE_DATA.read_text() * 20)
        started = time.perf_counter()
        build_dataset(sample, format="chat", tokenizer=tokenizer, max_seq_length=256)
        return (time.perf_counter() - started) / 20


@pytest.mark.slow
@redis_only
def test_a_queued_job_that_is_cancelled_never_starts(client, start_worker, tiny_model):
    job = slow_job(client, tiny_model, max_steps=2)
    assert job.cancel() == "cancelled"
    start_worker()
    follow = slow_job(client, tiny_model, max_steps=2)
    assert follow.wait(timeout=120, progress=False)["status"] == "completed"
    assert job.status()["status"] == "cancelled"
    assert not any("picked up" in line for line in job.logs(100))


@pytest.mark.slow
@sqlite_only
def test_a_running_job_stops_within_seconds_when_cancelled_and_keeps_its_report(
    client, start_worker, tiny_model
):
    start_worker()
    job = slow_job(client, tiny_model, max_steps=100_000, save_steps=0)
    cancel_mid_training(job)
    after = slow_job(client, tiny_model, max_steps=2)
    assert after.wait(timeout=120, progress=False)["status"] == "completed", (
        "the worker takes the next job"
    )


@pytest.mark.slow
@redis_only
def test_a_kernel_that_does_not_answer_a_cancel_is_killed_after_the_grace(
    client, start_worker, tiny_model, tmp_path
):
    # Tokenizing a large data set gives the kernel a long stretch with no step boundary to check for
    # a cancel: the watchdog must kill it. The file is sized from the tokenizing speed measured here,
    # to take the kernel about 40 s; the cancel comes once the kernel is reading it.
    seconds_per_copy = tokenizing_seconds_per_copy(tiny_model)
    copies = max(20, math.ceil(40 / seconds_per_copy))
    big = tmp_path / "big.jsonl"
    big.write_text(EXAMPLE_DATA.read_text() * copies)
    worker = start_worker(**FAST)
    job = client.submit(big, base_model=str(tiny_model), max_steps=2, max_seq_length=256)
    kernel = kernel_of(client, worker, job, timeout=300)  # after staging the big file
    wait_for(lambda: reading_big(kernel), 300, "the kernel to be tokenizing big.jsonl")
    assert job.status()["status"] == "preparing"
    job.cancel()

    def after_reading() -> str | None:
        state = reading_big(kernel)
        return None if state else "still tokenizing when killed" if state is None else "finished"

    # killed after the grace, long before the tokenizing it was stuck in would have ended
    assert wait_for(after_reading, 60, "the watchdog to kill the kernel") == (
        "still tokenizing when killed"
    )
    final = job.wait(timeout=60, progress=False, poll=0.1)
    assert final["status"] == "cancelled"
    assert any("did not stop within 3 s: killed it" in line for line in job.logs(100))


def reading_big(kernel) -> bool | None:
    """Whether the kernel is part way through big.jsonl (tokenizing streams it, past the first
    bytes a format check reads); None once the kernel is gone."""
    import psutil

    try:
        if kernel.status() == psutil.STATUS_ZOMBIE:
            return None
        files = kernel.open_files()
    except psutil.NoSuchProcess:
        return None
    return any(Path(f.path).name == "big.jsonl" and f.position > 64 << 10 for f in files)


@pytest.mark.slow
@sqlite_only
def test_a_job_past_its_timeout_fails_as_timed_out(client, start_worker, tiny_model):
    # More steps than a machine runs in the 15 s allowed (that would take 6,700 steps a second);
    # the steps it did run show the timeout stopped it, not the end of training.
    start_worker(**FAST)
    max_steps = 100_000
    job = slow_job(client, tiny_model, max_steps=max_steps, save_steps=0, timeout_minutes=0.25)
    final = job.wait(timeout=120, progress=False)
    assert final["status"] == "failed" and final["error"] == "timed out after 0.25 minutes"
    assert max((m["step"] for m in job.metrics() if m.get("step")), default=0) < max_steps


@pytest.mark.slow
@redis_only
def test_an_active_job_without_a_live_worker_is_never_stuck(client, start_worker, tiny_model):
    doomed = start_worker()
    job = slow_job(client, tiny_model, max_steps=100_000)  # still training when its worker dies
    wait_for(lambda: job.status()["status"] == "training", 600, "training")
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


@pytest.mark.slow
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


def test_a_kernel_that_starts_while_redis_restarts_waits_for_it(tmp_path, monkeypatch):
    # Seen in the soak: a job's first cell read its record during a Redis restart and failed.
    import threading

    from ftkit.config import Settings
    from ftkit.jobstore import open_store
    from ftkit.training import Reporter

    server = RedisServer(port=free_port(), dir=tmp_path, appendonly=True)
    server.start()
    try:
        settings = Settings.from_env({}, redis_url=server.url, storage=str(tmp_path / "storage"))
        store = open_store(settings)
        store.create({"job_id": "0123456789ab", "status": "queued", "created_at": time.time()})
        store.update("0123456789ab", worker="w1", attempt=2)
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        server.stop()
        # started while Redis is down, back once the kernel has met the outage at least once
        restart = threading.Timer(1.5, server.start)
        restart.start()
        reporter = Reporter.for_job("0123456789ab")
        restart.join()
        assert (reporter.worker, reporter.attempt) == ("w1", 2)
    finally:
        server.stop()


def test_output_lines_written_during_a_redis_restart_reach_the_log_after_it(tmp_path):
    from ftkit.jobstore import RedisJobStore
    from ftkit.worker.output_log import OutputLog

    server = RedisServer(port=free_port(), dir=tmp_path, appendonly=True)
    server.start()
    try:
        store = RedisJobStore(server.url)
        store.create({"job_id": "0123456789ab", "status": "queued", "created_at": time.time()})
        out = OutputLog(store, "0123456789ab", every=0)
        out.write("before\n")
        server.stop()
        out.write("during\n")  # refused: kept for the next send
        server.start()
        out.write("after\n")
        out.close()
        assert store.logs("0123456789ab", 10) == ["before", "during", "after"]
    finally:
        server.stop()


def test_a_job_step_waits_out_a_broker_outage_and_a_storage_outage_in_turn():
    from ftkit.errors import StorageUnavailable
    from ftkit.worker.runtime import patiently

    faults = [BrokerUnavailable("Redis restarting"), StorageUnavailable("S3 away")]
    calls = []

    def stage(name):
        calls.append(name)
        if faults:
            raise faults.pop(0)
        return f"{name} staged"

    assert patiently(stage, "data.jsonl") == "data.jsonl staged" and len(calls) == 3


@pytest.fixture
def start_worker_for(tmp_path, tiny_model):
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
                allowed_model_dirs=(str(tiny_model.parent),),
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


@pytest.mark.slow
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
