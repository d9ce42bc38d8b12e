"""One suite for the JobStore contract, run against SQLite and a real redis-server."""

from __future__ import annotations

import threading
import time

import pytest

from ftkit import jobstore as jobs
from ftkit.errors import JobNotFound


@pytest.fixture
def store(settings):
    return jobs.open_store(settings)


def record(job_id: str, **extra):
    return {
        "job_id": job_id,
        "status": jobs.QUEUED,
        "created_at": time.time(),
        "worker": None,
        "attempt": 1,
        "config": {"lora_r": 8},
        **extra,
    }


def test_create_and_get_round_trip_json_values(store):
    store.create(record("a1", dataset={"name": "x.jsonl", "rows": 3}, loss=None))
    got = store.get("a1")
    assert got["dataset"] == {"name": "x.jsonl", "rows": 3}
    assert got["config"] == {"lora_r": 8} and got["loss"] is None and got["status"] == "queued"


def test_unknown_job_raises_job_not_found(store):
    with pytest.raises(JobNotFound, match="nope"):
        store.get("nope")


def test_get_field_reads_one_value(store):
    store.create(record("a1"))
    store.update("a1", cancel_requested=True, progress=12.5)
    assert store.get_field("a1", "cancel_requested") is True
    assert store.get_field("a1", "progress") == 12.5
    assert store.get_field("a1", "config") == {"lora_r": 8}
    assert store.get_field("a1", "missing") is None


def test_update_refuses_status(store):
    store.create(record("a1"))
    with pytest.raises(ValueError, match="transition"):
        store.update("a1", status="completed")


def test_transition_is_compare_and_set(store):
    store.create(record("a1"))
    assert store.transition("a1", jobs.PREPARING, allowed=[jobs.QUEUED], worker="w1")
    assert not store.transition("a1", jobs.PREPARING, allowed=[jobs.QUEUED], worker="w2")
    assert store.get("a1")["worker"] == "w1"
    assert not store.transition("a1", jobs.COMPLETED, allowed=jobs.ACTIVE, expect_worker="w2")
    assert store.transition("a1", jobs.COMPLETED, allowed=jobs.ACTIVE, expect_worker="w1", loss=0.5)
    assert store.get("a1")["status"] == "completed" and store.get("a1")["loss"] == 0.5


def test_only_one_of_many_concurrent_claims_wins(store, settings):
    store.create(record("a1"))
    wins = []

    def claim(name):
        if jobs.open_store(settings).transition(
            "a1", jobs.PREPARING, allowed=[jobs.QUEUED], worker=name
        ):
            wins.append(name)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.get("a1")["worker"] == wins[0]


def test_list_is_newest_first_and_filters_by_status(store):
    for i in range(5):
        store.create(record(f"j{i}", created_at=1000.0 + i))
    store.transition("j1", jobs.PREPARING)
    assert [r["job_id"] for r in store.list_jobs()] == ["j4", "j3", "j2", "j1", "j0"]
    assert [r["job_id"] for r in store.list_jobs(limit=2)] == ["j4", "j3"]
    assert [r["job_id"] for r in store.list_jobs(status=jobs.QUEUED)] == ["j4", "j3", "j2", "j0"]
    assert [r["job_id"] for r in store.list_jobs(status=jobs.PREPARING)] == ["j1"]
    assert store.count() == 5 and store.count(jobs.QUEUED) == 4


def test_idempotency_key_returns_the_existing_job(store):
    assert store.create(record("a1", idempotency_key="k")) == "a1"
    assert store.create(record("a2", idempotency_key="k")) == "a1"
    assert store.count() == 1


def test_metrics_keep_order(store):
    store.create(record("a1"))
    store.add_metrics("a1", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    store.add_metrics("a1", [{"step": 3, "loss": 1.0}])
    assert [m["step"] for m in store.metrics("a1")] == [1, 2, 3]
    assert [m["step"] for m in store.metrics("a1", start=2)] == [3]


def test_logs_keep_only_the_tail(store):
    store.create(record("a1"))
    store.add_logs("a1", [f"line {i}" for i in range(jobs.LOG_LINES_KEPT + 20)])
    assert store.logs("a1", 3) == [f"line {jobs.LOG_LINES_KEPT + i}" for i in (17, 18, 19)]
    assert len(store.logs("a1", 10_000)) == jobs.LOG_LINES_KEPT


def test_cancel_of_a_queued_job_is_immediate(store):
    store.create(record("a1"))
    assert store.request_cancel("a1") == jobs.CANCELLED
    assert store.get("a1")["cancel_requested"] is True


def test_cancel_of_a_running_job_is_a_request(store):
    store.create(record("a1"))
    store.transition("a1", jobs.TRAINING)
    assert store.request_cancel("a1") == jobs.TRAINING
    assert store.get_field("a1", "cancel_requested") is True


def test_heartbeats_expire(store):
    store.heartbeat("w1", {"host": "h"}, ttl=0.3)
    store.heartbeat("w2", {"host": "h"}, ttl=30)
    assert {w["worker_id"] for w in store.workers()} == {"w1", "w2"}
    time.sleep(0.5)
    assert [w["worker_id"] for w in store.workers()] == ["w2"]
    store.forget_worker("w2")
    assert store.workers() == []


def test_orphans_are_active_jobs_without_a_live_worker(store):
    store.heartbeat("alive", {}, ttl=30)
    for job_id, worker in (("a", "alive"), ("b", "dead")):
        store.create(record(job_id))
        store.transition(job_id, jobs.TRAINING, worker=worker)
    store.create(record("c"))
    assert [r["job_id"] for r in store.orphans()] == ["b"]


def test_trim_metrics_keeps_the_history_up_to_a_checkpoint(store):
    store.create(record("a1"))
    store.add_metrics("a1", [{"step": s, "loss": 1.0} for s in range(1, 8)])
    store.trim_metrics("a1", after_step=4)
    assert [m["step"] for m in store.metrics("a1")] == [1, 2, 3, 4]


def test_cancel_records_the_stop_reason_and_is_a_no_op_on_ended_jobs(store):
    store.create(record("a1"))
    store.transition("a1", jobs.TRAINING)
    store.request_cancel("a1")
    assert store.get_field("a1", "stop") == jobs.STOP_CANCEL
    store.transition("a1", jobs.COMPLETED)
    assert store.request_cancel("a1") == jobs.COMPLETED
