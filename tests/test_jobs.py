"""One suite for the JobStore contract, run against SQLite and a real redis-server."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import EXAMPLE_DATA, wait_for
from ftkit import jobstore as jobs
from ftkit.core import statuses
from ftkit.errors import JobExists, JobNotFound


@pytest.fixture
def store(settings):
    return jobs.open_store(settings)


def record(job_id: str, **extra):
    return {
        "job_id": job_id,
        "status": statuses.QUEUED,
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
    assert store.transition("a1", statuses.PREPARING, allowed=[statuses.QUEUED], worker="w1")
    assert not store.transition("a1", statuses.PREPARING, allowed=[statuses.QUEUED], worker="w2")
    assert store.get("a1")["worker"] == "w1"
    assert not store.transition(
        "a1", statuses.COMPLETED, allowed=statuses.ACTIVE, expect_worker="w2"
    )
    assert store.transition(
        "a1", statuses.COMPLETED, allowed=statuses.ACTIVE, expect_worker="w1", loss=0.5
    )
    assert store.get("a1")["status"] == "completed" and store.get("a1")["loss"] == 0.5


def test_only_one_of_many_concurrent_claims_wins(store, settings):
    store.create(record("a1"))
    wins = []
    start = threading.Barrier(8)  # every claimant connected and waiting: the claims race

    def claim(name):
        own = jobs.open_store(settings)
        own.get("a1")  # connect before the barrier, so the claims leave together
        start.wait(timeout=60)
        if own.transition("a1", statuses.PREPARING, allowed=[statuses.QUEUED], worker=name):
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
    store.transition("j1", statuses.PREPARING)
    assert [r["job_id"] for r in store.list_jobs()] == ["j4", "j3", "j2", "j1", "j0"]
    assert [r["job_id"] for r in store.list_jobs(limit=2)] == ["j4", "j3"]
    assert [r["job_id"] for r in store.list_jobs(status=statuses.QUEUED)] == [
        "j4",
        "j3",
        "j2",
        "j0",
    ]
    assert [r["job_id"] for r in store.list_jobs(status=statuses.PREPARING)] == ["j1"]
    assert store.count() == 5 and store.count(statuses.QUEUED) == 4


def test_idempotency_key_returns_the_existing_job(store):
    assert store.create(record("a1", idempotency_key="k")) == "a1"
    assert store.create(record("a2", idempotency_key="k")) == "a1"
    assert store.count() == 1


def test_a_taken_job_id_is_refused_and_the_first_record_kept(store, settings):
    store.create(record("a1", config={"lora_r": 8}))
    with pytest.raises(JobExists, match="a1"):
        store.create(record("a1", config={"lora_r": 99}, idempotency_key="k2"))
    assert store.get("a1")["config"] == {"lora_r": 8} and store.count() == 1
    assert store.create(record("a2", idempotency_key="k2")) == "a2"  # the key was not kept

    results: list[object] = []

    def create():
        try:
            results.append(jobs.open_store(settings).create(record("b1")))
        except JobExists as exc:
            results.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("b1") == 1 and sum(isinstance(r, JobExists) for r in results) == 5


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
    assert store.request_cancel("a1") == statuses.CANCELLED
    assert store.get("a1")["cancel_requested"] is True


def test_cancel_of_a_running_job_is_a_request(store):
    store.create(record("a1"))
    store.transition("a1", statuses.TRAINING)
    assert store.request_cancel("a1") == statuses.TRAINING
    assert store.get_field("a1", "cancel_requested") is True


def test_heartbeats_expire(store):
    # A ttl no stall of the machine outlasts between two calls; then wait for it to run out.
    beat = time.monotonic()
    store.heartbeat("w1", {"host": "h"}, ttl=3)
    store.heartbeat("w2", {"host": "h"}, ttl=300)
    assert {w["worker_id"] for w in store.workers()} == {"w1", "w2"}
    wait_for(lambda: [w["worker_id"] for w in store.workers()] == ["w2"], 60, "w1 to expire")
    assert time.monotonic() - beat >= 3 * 0.9, "a heartbeat expired before its ttl"
    store.forget_worker("w2")
    assert store.workers() == []


def test_orphans_are_active_jobs_without_a_live_worker(store):
    store.heartbeat("alive", {}, ttl=30)
    for job_id, worker in (("a", "alive"), ("b", "dead")):
        store.create(record(job_id))
        store.transition(job_id, statuses.TRAINING, worker=worker)
    store.create(record("c"))
    assert [r["job_id"] for r in store.orphans()] == ["b"]


def test_a_live_worker_that_moved_on_no_longer_holds_its_job(store):
    # What a Redis restored from an older state leaves: a job's end forgotten, the record active
    # and naming a worker that is alive and busy with something else (or nothing). A heartbeat
    # noted before the claim says nothing yet: the worker may not have read its new job.
    claimed_at = 1000.0
    for job_id in ("named", "other", "idle", "early", "old-worker"):
        store.create(record(job_id))
        store.transition(job_id, statuses.TRAINING, worker=f"w-{job_id}", started_at=claimed_at)
    beats = {
        "named": {"current_job": "named", "noted_at": claimed_at + 60},
        "other": {"current_job": "c", "noted_at": claimed_at + 60},
        "idle": {"current_job": None, "noted_at": claimed_at + 60},
        "early": {"current_job": None, "noted_at": claimed_at - 0.1},
        "old-worker": {"current_job": None},  # a worker from before noted_at: taken at its word
    }
    for job_id, beat in beats.items():
        store.heartbeat(f"w-{job_id}", beat, ttl=60)
    assert [r["job_id"] for r in store.orphans()] == ["idle", "other"]


def test_trim_metrics_keeps_the_history_up_to_a_checkpoint(store):
    store.create(record("a1"))
    store.add_metrics("a1", [{"step": s, "loss": 1.0} for s in range(1, 8)])
    store.trim_metrics("a1", after_step=4)
    assert [m["step"] for m in store.metrics("a1")] == [1, 2, 3, 4]


def test_cancel_records_the_stop_reason_and_is_a_no_op_on_ended_jobs(store):
    store.create(record("a1"))
    store.transition("a1", statuses.TRAINING)
    store.request_cancel("a1")
    assert store.get_field("a1", "stop") == statuses.STOP_CANCEL
    store.transition("a1", statuses.COMPLETED)
    assert store.request_cancel("a1") == statuses.COMPLETED


def test_an_expected_none_matches_a_missing_field_on_both_backends(store):
    store.create(record("a1"))
    assert store.transition("a1", statuses.QUEUED, expect={"queue_ref": None}, queue_ref="q:1")
    assert not store.transition("a1", statuses.QUEUED, expect={"queue_ref": None}, queue_ref="q:2")
    assert store.transition("a1", statuses.QUEUED, expect={"queue_ref": "q:1"}, queue_ref="q:2")
    assert store.get("a1")["queue_ref"] == "q:2"


def test_list_filters_by_tag_newest_first_and_with_a_status(store):
    for i, tags in enumerate((["a"], ["a", "b"], [], ["b"], ["a"])):
        store.create(record(f"t{i}", created_at=2000.0 + i, tags=tags))
    store.transition("t1", statuses.TRAINING)
    assert [r["job_id"] for r in store.list_jobs(tag="a")] == ["t4", "t1", "t0"]
    assert [r["job_id"] for r in store.list_jobs(tag="a", limit=2)] == ["t4", "t1"]
    assert [r["job_id"] for r in store.list_jobs(tag="b")] == ["t3", "t1"]
    assert [r["job_id"] for r in store.list_jobs(tag="a", status=statuses.QUEUED)] == ["t4", "t0"]
    assert [r["job_id"] for r in store.list_jobs(tag="b", status=statuses.TRAINING)] == ["t1"]
    assert store.list_jobs(tag="none") == []


def test_delete_removes_the_record_its_rows_and_every_index_entry(store):
    store.create(record("d1", tags=["x"], idempotency_key="k"))
    store.create(record("d2", tags=["x"]))
    store.add_metrics("d1", [{"step": 1, "loss": 1.0}])
    store.add_logs("d1", ["hello"])
    store.transition("d1", statuses.FAILED)
    store.delete("d1")
    with pytest.raises(JobNotFound):
        store.get("d1")
    assert store.metrics("d1") == [] and store.logs("d1") == []
    assert [r["job_id"] for r in store.list_jobs()] == ["d2"]
    assert store.list_jobs(status=statuses.FAILED) == [] and store.count(statuses.FAILED) == 0
    assert [r["job_id"] for r in store.list_jobs(tag="x")] == ["d2"]
    assert store.create(record("d3", idempotency_key="k")) == "d3"  # the key went with it
    with pytest.raises(JobNotFound):
        store.delete("d1")


def test_logs_since_reads_each_line_once_across_trimming(store):
    store.create(record("a1"))
    store.add_logs("a1", ["one", "two"])
    lines, cursor = store.logs_since("a1")
    assert lines == ["one", "two"]
    assert store.logs_since("a1", cursor) == ([], cursor)
    store.add_logs("a1", ["three"])
    lines, cursor = store.logs_since("a1", cursor)
    assert lines == ["three"]
    store.add_logs("a1", [f"n{i}" for i in range(jobs.LOG_LINES_KEPT + 5)])
    lines, cursor = store.logs_since("a1", cursor)
    assert lines == [f"n{i}" for i in range(5, jobs.LOG_LINES_KEPT + 5)]  # what was kept
    store.add_logs("a1", ["last"])
    assert store.logs_since("a1", cursor)[0] == ["last"]
    assert store.logs_since("nobody") == ([], 0)


def test_end_watch_wakes_at_the_end_not_at_the_timeout(store):
    store.create(record("a1"))
    store.transition("a1", statuses.TRAINING)
    with store.end_watch("a1") as sleep:
        started = time.monotonic()
        sleep(0.3)  # nothing ends: the whole timeout
        assert (
            time.monotonic() - started >= 0.3
            and store.get_field("a1", "status") == statuses.TRAINING
        )
        ender = threading.Timer(0.3, store.transition, ("a1", statuses.COMPLETED))
        ender.start()
        started = time.monotonic()
        sleep(120)
        waited = time.monotonic() - started
        ender.join()
    assert store.get_field("a1", "status") == statuses.COMPLETED
    assert waited < 120, "woke at the timeout, not at the end"


def test_sweep_records_are_kept_listed_newest_first_by_tag_and_deleted(store):
    now = time.time()
    for i, tags in enumerate([["a"], ["a", "b"], []]):
        store.create_sweep(
            {"sweep_id": f"s{i}", "created_at": now + i, "tags": tags, "runs": [{"job_id": "j"}]}
        )
    assert store.get_sweep("s1") == {
        "sweep_id": "s1",
        "created_at": now + 1,
        "tags": ["a", "b"],
        "runs": [{"job_id": "j"}],
    }
    with pytest.raises(JobExists, match="s1"):
        store.create_sweep({"sweep_id": "s1", "created_at": now, "tags": []})
    assert store.get_sweep("s1")["created_at"] == now + 1  # the first one is kept
    assert [s["sweep_id"] for s in store.list_sweeps()] == ["s2", "s1", "s0"]
    assert [s["sweep_id"] for s in store.list_sweeps(limit=2)] == ["s2", "s1"]
    assert [s["sweep_id"] for s in store.list_sweeps(tag="a")] == ["s1", "s0"]
    assert [s["sweep_id"] for s in store.list_sweeps(tag="a", limit=1)] == ["s1"]
    assert store.list_sweeps(tag="c") == []
    store.delete_sweep("s1")
    with pytest.raises(JobNotFound, match="no sweep"):
        store.get_sweep("s1")
    with pytest.raises(JobNotFound):
        store.delete_sweep("s1")
    assert [s["sweep_id"] for s in store.list_sweeps()] == ["s2", "s0"]


@pytest.mark.parametrize("settings", ["redis"], indirect=True)  # a raw write to a key
def test_a_garbled_sweep_record_on_redis_hides_no_other(settings):
    store = jobs.open_store(settings)
    store.create_sweep({"sweep_id": "good", "created_at": 2.0, "tags": ["t"]})
    store.create_sweep({"sweep_id": "bad", "created_at": 1.0, "tags": ["t"]})
    store.r.set("ftkit:sweep:bad", b"\xff not json")
    store.create_sweep({"sweep_id": "odd", "created_at": 3.0, "tags": "t"})
    assert [s["sweep_id"] for s in store.list_sweeps()] == ["odd", "good"]
    assert [s["sweep_id"] for s in store.list_sweeps(tag="t")] == ["good"]
    with pytest.raises(JobNotFound):
        store.get_sweep("bad")


def test_a_checkpoint_counts_only_once_its_metrics_are_in_the_store(store, settings, tmp_path):
    # A job resumed from checkpoint-N trains on from step N+1: a row for step N still buffered
    # when the worker died would be a hole in the history for good.
    from ftkit.storage import Storage
    from ftkit.training import Reporter

    store.create(record("a1"))
    storage = Storage(str(tmp_path / "storage"))
    reporter = Reporter("a1", store, storage, flush_seconds=3600)
    reporter.flush()  # the throttle's clock starts: nothing below is due for an hour
    reporter.metric({"step": 10, "loss": 1.5}, current_step=10)
    assert store.metrics("a1") == []
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    reporter.save_checkpoint(folder)
    assert store.metrics("a1") == [{"step": 10, "loss": 1.5}]
    assert storage.listdir(*Storage.run_parts("a1", "checkpoints")) == ["checkpoint-10"]


def test_an_orphaned_kernel_writes_nothing_more(store):
    from ftkit.training import Reporter

    store.create(record("a1"))
    reporter = Reporter("a1", store)
    reporter.stop_reason = "orphaned"  # its worker died: the job is re-queued for another
    reporter.metric({"step": 11, "loss": 1.0}, current_step=11)
    reporter.flush()
    assert store.metrics("a1") == [] and store.get_field("a1", "current_step") is None


def test_several_fields_are_read_in_one_go(store):
    store.create(record("a1"))
    store.update("a1", worker="w1", attempt=2, stop=None)
    assert store.get_fields("a1", "worker", "attempt", "stop", "no_such_field") == {
        "worker": "w1",
        "attempt": 2,
        "stop": None,
        "no_such_field": None,
    }
    assert store.get_fields("b2", "worker") == {"worker": None}


@pytest.mark.parametrize("now", [{"worker": "w2"}, {"attempt": 2}])
def test_a_run_the_record_no_longer_names_stops_and_saves_nothing(store, tmp_path, now):
    # Another worker claimed the job (a broker restored from an older state let it), or the job
    # was re-queued as its next attempt (this run's worker was taken for dead): this run's
    # checkpoint and marker would race the run the record names.
    from ftkit.storage import Storage
    from ftkit.training import Reporter

    store.create(record("a1"))
    store.update("a1", worker="w1", attempt=1)
    storage = Storage(str(tmp_path / "storage"))
    reporter = Reporter("a1", store, storage, worker="w1", attempt=1, poll_seconds=3600)
    assert not reporter.should_stop()  # the first poll: the record names this run
    store.update("a1", **now)
    folder = tmp_path / "checkpoint-20"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    reporter.save_checkpoint(folder, trained=(0, 20))  # looked at when it writes, not at a poll
    assert reporter.stop_reason == "superseded" and reporter.should_stop()
    assert storage.listdir(*Storage.run_parts("a1", "checkpoints")) == []
    assert storage.trained_markers("a1") == []
    reporter.metric({"step": 20, "loss": 1.0}, current_step=20)
    reporter.flush()
    assert store.metrics("a1") == [] and store.get_field("a1", "current_step") is None


def test_a_poll_stops_a_run_the_record_no_longer_names(store):
    from ftkit.training import Reporter

    store.create(record("a1"))
    store.update("a1", worker="w1", attempt=1)
    reporter = Reporter("a1", store, worker="w1", attempt=1, poll_seconds=0)
    assert not reporter.should_stop()
    store.update("a1", stop="cancel")
    assert reporter.should_stop() and reporter.stop_reason == "cancel"
    store.update("a1", stop=None, attempt=2)
    moved_on = Reporter("a1", store, worker="w1", attempt=1, poll_seconds=0)
    assert moved_on.should_stop() and moved_on.stop_reason == "superseded"


# -- the typed records hold what the code writes ---------------------------------------------------
def declared(typed_dict) -> set[str]:
    return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


@pytest.mark.slow  # four real jobs
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the same JSON on both backends
def test_every_field_a_real_job_record_holds_is_declared_in_job_record(
    client, start_worker, tiny_model, tmp_path
):
    """Real records, written by Client.submit, a worker, its kernel and the store: one job that
    completes, one that continues it, one that fails in a notebook cell and one cancelled while
    queued. A field any of them writes that JobRecord does not declare fails here."""
    import shutil

    from ftkit.core.records import JobRecord, WorkerInfo

    config = {"base_model": str(tiny_model), "max_steps": 2, "max_seq_length": 128}
    gone = tmp_path / "no-such-model"
    shutil.copytree(tiny_model, gone)
    failing = client.submit(EXAMPLE_DATA, **{**config, "base_model": str(gone)})
    shutil.rmtree(gone)  # moved after submitting: the notebook's model cell fails
    done = client.submit(EXAMPLE_DATA, tags=["typed"], note="a note", **config)
    cancelled = client.submit(EXAMPLE_DATA, **config)
    cancelled.cancel()
    start_worker()
    assert failing.wait(timeout=300, progress=False)["status"] == statuses.FAILED
    assert done.wait(timeout=300, progress=False)["status"] == statuses.COMPLETED
    continued = client.submit(EXAMPLE_DATA, resume_from=done.id, **config)
    assert continued.wait(timeout=300, progress=False)["status"] == statuses.COMPLETED
    workers = client.store.workers()

    records = [client.store.get(job.id) for job in (failing, done, continued, cancelled)]
    written = set().union(*records)
    assert written - declared(JobRecord) == set()
    assert {"error_cell", "error_traceback", "result", "report", "queue_ref", "host"} <= written
    assert {"started_from", "resume_from", "stop", "cancel_requested", "current_step"} <= written
    assert workers and set().union(*workers) - declared(WorkerInfo) == set()


def test_every_field_a_store_write_names_is_declared_in_job_record():
    """The paths no test above runs to the end (a retry, a hand-back, a timeout, a reaper): every
    field named at a store's ``transition``, ``update`` or ``create`` call in ftkit's source."""
    import ast
    from pathlib import Path

    import ftkit
    from ftkit.core.records import JobRecord

    conditions = {"allowed", "expect", "expect_worker", "message"}
    named: dict[str, str] = {}
    for path in Path(ftkit.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            # store.transition(...), or through_outages(store.transition, ...)
            targets = [node.func, *node.args[:1]]
            if any(
                isinstance(t, ast.Attribute)
                and t.attr in ("transition", "update")
                and "store" in ast.unparse(t.value)
                for t in targets
            ):
                for keyword in node.keywords:
                    if keyword.arg and keyword.arg not in conditions:
                        named[keyword.arg] = f"{path.name}:{node.lineno}"
    assert "started_from" in named and "attempt" in named  # the scan sees both forms
    undeclared = {k: where for k, where in named.items() if k not in declared(JobRecord)}
    assert undeclared == {}
