"""One job, many devices (issue #27), the workers' side: workers that own several devices
(``ftkit worker --gpus ... --gpus-per-worker``, ``--cpu-devices``), a job routed only to a worker
with the devices it asks for, and a job that no live worker can run saying why, wherever a
person looks. No training here: what routing decides ends at the claim."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from apiserver import serve_in_thread

from conftest import EXAMPLE_DATA, redis_only, wait_for
from ftkit.cli import main
from ftkit.cli.service import gpu_groups
from ftkit.config import TrainConfig
from ftkit.errors import ConfigError, NoWorkerWarning
from ftkit.placement import Need, Offer, refusal, waiting_reason
from ftkit.storage import Storage

WAITING = "waiting for a worker with 2 devices; the largest has 1"


# -- what a job needs and a worker offers (no servers) ---------------------------------------------
def test_a_job_goes_only_where_its_devices_are_and_says_why_it_waits():
    big = Need.of(TrainConfig(devices=4))
    assert Need.of(TrainConfig()) == Need() and big == Need(devices=4)
    assert Need.of({"devices": 2, "sharding": "fsdp"}) == Need(devices=2, gpus_only=True)
    # A record is untrusted: a value in the wrong shape reads as the default, never as an error.
    for garbled in ({"devices": "4"}, {"devices": True}, {"devices": -3}, {"devices": 2.0}):
        assert Need.of(garbled) == Need()
    assert Offer.of({"worker_id": "w"}) == Offer("cpu", 1)  # a worker from before device groups
    assert Offer.of({"device_kind": "tpu", "devices": "8"}) == Offer("cpu", 1)
    two_gpus, two_cpus = Offer("cuda", 2), Offer("cpu", 2)
    assert refusal(Need(), two_gpus) is None  # a smaller job runs on a larger worker
    assert refusal(Need(devices=2), two_cpus) is None
    assert refusal(big, two_gpus) == "the job needs 4 devices and this worker has 2"
    assert "CPUs only" in refusal(Need(devices=2, gpus_only=True), two_cpus)
    assert waiting_reason(big, [two_gpus, Offer()]) == (
        "waiting for a worker with 4 devices; the largest has 2"
    )
    assert waiting_reason(big, []) == "waiting for a worker with 4 devices; no worker is running"
    assert waiting_reason(Need(devices=2, gpus_only=True), [two_cpus]) == (
        "waiting for a worker with 2 GPUs (sharding='fsdp' shards on GPUs); "
        "the workers have CPUs only"
    )
    assert waiting_reason(Need(devices=2), [Offer(), two_cpus]) is None
    assert waiting_reason(Need(), []) is None  # no worker at all: said elsewhere, for every job


# -- the command line --------------------------------------------------------------------------------
def test_gpus_are_grouped_per_worker_and_bad_combinations_are_refused(capsys):
    assert gpu_groups("0,1,2,3", 2, None) == [["0", "1"], ["2", "3"]]
    assert gpu_groups("0,1,2,3", None, None) == [["0"], ["1"], ["2"], ["3"]]  # as before
    # (the workers these start, each seeing its own devices: test_end_to_end, one per GPU or group)
    assert gpu_groups(None, None, 2) == []  # one CPU worker, in this process
    refused = {
        ("--gpus", "0,1,2", "--gpus-per-worker", "2"): "--gpus lists 3 GPUs, which "
        "--gpus-per-worker 2 does not divide evenly",
        ("--gpus-per-worker", "2"): "--gpus-per-worker 2 groups the GPUs --gpus lists",
        ("--gpus", "0,1", "--cpu-devices", "2"): "--cpu-devices 2 trains on the CPU and --gpus",
        ("--cpu-devices", "0",): "--cpu-devices 0: give 1 to 64",
        ("--gpus", "0,1,1"): "list each GPU once",
    }  # fmt: skip
    for args, message in refused.items():
        assert main(["worker", *args]) == 2  # before any worker starts
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cpu_devices=0"):
        from ftkit.client import Client

        Client().start_local_worker(cpu_devices=0)


# -- the worker's side of routing, on each backend (no worker process) ------------------------------
def test_a_worker_holds_a_job_it_leaves_and_writes_its_message_back_once(
    settings, client, tmp_path
):
    """What a 1-device worker does with the message of a 2-device job it takes: no claim, one
    event, the message held and then written back once, with the job's priority; a stray second
    message of a job whose own still waits is dropped."""
    from ftkit.queue import enqueue
    from ftkit.worker.routing import Holds
    from ftkit.worker.runtime import Runtime

    ds = client.upload_dataset(EXAMPLE_DATA)
    with pytest.warns(NoWorkerWarning, match="no worker is running"):
        job = client.submit(ds, base_model="org/model", devices=2, priority=3)
    rt = Runtime(settings, client.store, client.storage, "small-1", tmp_path, offer=Offer())
    rt.huey, store = client.huey, client.store
    holds = Holds(rt)
    enqueue(rt.huey, job.id, priority=5)  # a stray second message, taken first
    assert rt.huey.dequeue().priority == 5 and not holds.fits(job.id)
    assert holds.held == {} and store.message_pending(store.get(job.id))  # its own still waits
    for _ in range(2):
        ref = store.get(job.id)["queue_ref"]
        assert rt.huey.dequeue().priority == 3  # the job's own message
        assert not holds.fits(job.id) and list(holds.held) == [job.id]
        assert not store.message_pending(store.get(job.id))  # held: not in the queue
        assert holds.release(every=True) == [job.id] and holds.release(every=True) == []
        record = store.get(job.id)
        assert record["status"] == "queued" and record["queue_ref"] != ref
        assert store.message_pending(record) and record.get("worker") is None
    assert rt.huey.dequeue().priority == 3 and rt.huey.dequeue() is None  # one message, no more
    left = [line for line in job.logs(20) if "left for a larger worker" in line]
    assert len(left) == 1 and "worker small-1 has 1 device; the job needs 2 devices" in left[0]


# -- routing, and the reason a job waits, end to end --------------------------------------------------
@pytest.mark.slow
@redis_only
def test_a_job_waits_for_a_worker_with_its_devices(settings, client, start_worker, tmp_path):
    """A 2-device job where only a 1-device worker listens: the worker leaves it queued (priority
    kept, one event), its status, health(), the HTTP API, the panel and the web page say why, and
    a 2-device worker started from the notebook takes it."""
    from ftkit.panels import Dashboard, MonitorPanel

    proc = start_worker(args=("--cpu-devices", "1"))
    [small] = client.workers()
    small_id = small["worker_id"]
    assert (small["device_kind"], small["devices"]) == ("cpu", 1)
    ds = client.upload_dataset(EXAMPLE_DATA)
    with pytest.warns(NoWorkerWarning, match=WAITING):
        job = client.submit(ds, base_model="org/model", max_steps=2, devices=2, priority=3)
    wait_for(lambda: proc.output().count(f"left job {job.id}") >= 3, 60, "three bounces")
    record = client.store.get(job.id)
    assert record["status"] == "queued" and record["worker"] is None
    # Each time the message goes back it keeps the job's priority: Huey says what it read.
    taken = [line for line in proc.output().splitlines() if "Executing ftkit.queue" in line]
    assert len(taken) >= 3 and all(line.endswith(" p=3") for line in taken), taken
    left = [line for line in job.logs(50) if "left for a larger worker" in line]
    assert len(left) == 1 and "has 1 device; the job needs 2 devices" in left[0], left
    assert job.status()["waiting_for"] == WAITING
    health = client.health()
    assert health["status"] == "degraded"
    assert health["waiting_jobs"] == [{"job_id": job.id, "reason": WAITING}]
    assert health["warning"] == f"job {job.id} is {WAITING}"
    monitor = MonitorPanel(job, autostart=False)
    assert WAITING in monitor.status.value
    dashboard = Dashboard(client, autostart=False)
    assert "1 × CPU" in dashboard.workers.value and WAITING in dashboard.jobs.value
    api = serve_in_thread(settings, tmp_path / "api")
    try:
        assert api.request("GET", f"/status/{job.id}")[1]["waiting_for"] == WAITING
        served = api.request("GET", "/health")[1]
        assert served["status"] == "degraded" and served["waiting_jobs"][0]["reason"] == WAITING
        page = api.request("GET", "/")[1].decode()
        assert WAITING in page and "1 × CPU" in page
        config = {"base_model": "org/model", "max_steps": 2, "devices": 2, "sharding": "none"}
        with pytest.warns(NoWorkerWarning, match=WAITING):  # the server in this process
            posted = api.request("POST", "/train", {"dataset_id": ds.id, "config": config})[1]
        assert posted["message"].endswith(f"org/model; {WAITING}")
        status = api.request("GET", f"/status/{posted['job_id']}")[1]
        assert status["config"]["devices"] == 2 and status["waiting_for"] == WAITING
        assert api.request("DELETE", f"/job/{posted['job_id']}")[1]["status"] == "cancelled"
    finally:
        api.stop()

    # The training side of a 2-device job lands separately: the claim is what routing decides.
    # Without its data set the claimed job ends at staging, before any kernel starts.
    client.storage.remove(*Storage.dataset_parts(ds.sha256, ds.name))
    large = client.start_local_worker(
        cpu_devices=2, env={"FTKIT_WARM_KERNEL": "0", "FTKIT_CHECK_IMPORTS": "0"}
    )
    try:
        two = wait_for(
            lambda: [w for w in client.workers() if w.get("devices") == 2], 60, "its heartbeat"
        )[0]
        assert two["device_kind"] == "cpu" and two["cuda_visible_devices"] == ""
        listed = subprocess.run(
            [sys.executable, "-m", "ftkit.cli", "workers"],
            env={**os.environ, **settings.to_env()},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert listed[0].split()[:4] == ["WORKER_ID", "HOST", "DEVICE_KIND", "DEVICES"]
        assert sorted(line.split()[2:4] for line in listed[1:]) == [["cpu", "1"], ["cpu", "2"]]
        assert job.status()["waiting_for"] is None or job.status()["status"] != "queued"
        wait_for(lambda: client.store.get(job.id)["worker"] == two["worker_id"], 60, "its claim")
        assert f"picked up by worker {two['worker_id']}" in "\n".join(job.logs(50))
        assert client.health()["waiting_jobs"] == []
        assert job.wait(timeout=60, progress=False)["status"] == "failed"  # no data set, as made
    finally:
        large.stop(timeout=30)
    assert f"picked up by worker {small_id}" not in "\n".join(job.logs(100))
