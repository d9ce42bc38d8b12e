"""A hostile writer: someone with the Redis password (every notebook user has it, and the queue
secret too) edits job records and queue messages with raw Redis commands. A real worker must run
none of it, touch no path outside its folders, fail each tampered job visibly, and go on running
legitimate jobs (one is queued after each attack)."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from conftest import EXAMPLE_DATA, WorkerProcess, wait_for
from ftkit import spec
from ftkit.client import Client
from ftkit.config import Settings
from ftkit.jobstore import QueueMessage, huey_layout
from ftkit.queue import QUEUE_NAME, enqueue

SECRET = "hostile-writer-test-secret"
QUEUE_KEY = huey_layout.redis_queue_key(QUEUE_NAME)


@dataclass
class Attack:
    """The world after a batch of attacks, queued before the worker starts, then run by it."""

    client: Client
    r: redis.Redis
    tmp: Path
    canary: Path
    victims: list[Path]
    jobs: dict[str, str] = field(default_factory=dict)  # attack name -> job id
    legit: list[str] = field(default_factory=list)
    worker: WorkerProcess | None = None

    def key(self, job_id: str) -> str:
        return f"ftkit:job:{job_id}"

    def record(self, job_id: str) -> dict:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.key(job_id)).items()}

    def write(self, key_id: str, **fields) -> None:
        """HSET raw JSON values, as anyone with the password can."""
        self.r.hset(self.key(key_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def resign(self, job_id: str) -> None:
        """What an attacker who also holds the queue secret can do: sign the tampered record."""
        self.write(job_id, signature=spec.sign(self.record(job_id), SECRET))

    def submit(self, **overrides) -> str:
        config = dict(base_model=self.model, max_steps=2, batch_size=2, max_seq_length=128)
        return self.client.submit(EXAMPLE_DATA, **{**config, **overrides}).id

    model: str = ""


def push_raw(r: redis.Redis, data: bytes, priority: int = 0) -> None:
    """Put bytes on the Huey queue exactly as Huey does (a time prefix keeps FIFO order)."""
    key, member, score = huey_layout.redis_member(QueueMessage(QUEUE_NAME, data, priority))
    r.zadd(key, {member: score})


@pytest.fixture(scope="module")
def attack(redis_server, tiny_model, tmp_path_factory):
    redis_server.flush()
    tmp = tmp_path_factory.mktemp("hostile")
    settings = Settings.from_env(
        {},
        redis_url=redis_server.url,
        storage=str(tmp / "storage"),
        scratch_dir=str(tmp / "scratch"),
        heartbeat_seconds=0.5,
        worker_grace_seconds=30.0,
        allowed_model_dirs=(str(tiny_model.parent),),
        queue_secret=SECRET,
    )
    victims = [tmp / "victim", tmp / "absolute-victim"]
    for v in victims:
        v.mkdir()
        (v / "precious.txt").write_text("keep me")
    world = Attack(
        client=Client(settings),
        r=redis.Redis.from_url(redis_server.url),
        tmp=tmp,
        canary=tmp / "canary",
        victims=victims,
        model=str(tiny_model),
    )
    injected = f"x = 1\nimport pathlib; pathlib.Path({str(world.canary)!r}).write_text('pwned')\ny"

    def then_a_legit_job():
        world.legit.append(world.submit())

    # 1. A parameter name that is code, as the record was left (signature now wrong) ...
    j = world.jobs["injection"] = world.submit()
    world.write(j, config={**world.record(j)["config"], injected: 1})
    # ... and re-signed by someone holding the secret: the configuration check must catch it.
    j = world.jobs["injection_resigned"] = world.submit()
    world.write(j, config={**world.record(j)["config"], injected: 1})
    world.resign(j)
    then_a_legit_job()
    # 2. Job ids that climb out of the scratch folder, with records and signed messages for them.
    template = world.record(world.legit[0])
    for name, bad_id in (("relative_id", "../../victim"), ("absolute_id", str(victims[1]))):
        world.write(bad_id, **{**template, "job_id": bad_id, "status": "queued"})
        enqueue(world.client.huey, bad_id)
        world.jobs[name] = bad_id
    # 3. A value changed after submit.
    j = world.jobs["changed_value"] = world.submit()
    world.write(j, config={**world.record(j)["config"], "max_steps": 50})
    # 4. A data set reference that points at a local file outside storage (re-signed).
    for name, dataset in (
        ("dataset_name", {"name": "../../../../../../etc/passwd"}),
        ("dataset_sha", {"sha256": "../../../../etc"}),
    ):
        j = world.jobs[name] = world.submit()
        world.write(j, dataset={**world.record(j)["dataset"], **dataset})
        world.resign(j)
    # 5. A base model outside the worker's allowed folders (re-signed; the client never saw it).
    j = world.jobs["model_outside"] = world.submit()
    world.write(j, config={**world.record(j)["config"], "base_model": str(tmp)})
    world.resign(j)
    then_a_legit_job()
    # 6. A forged queue message (wrong signature) for a legitimate queued job, read first.
    forged_for = world.legit[-1]
    body = {"__message__": {"id": "x", "name": "ftkit.queue.ftkit.run_job", "args": [forged_for]}}
    push_raw(world.r, b"0" * 64 + b":" + json.dumps(body).encode(), priority=10)
    world.jobs["forged_for"] = forged_for
    # 7. Capture a legitimate message now, to replay it once its job has completed.
    replayed = world.legit[0]
    raw = [
        m for m, _ in world.r.zrange(QUEUE_KEY, 0, -1, withscores=True) if replayed.encode() in m
    ]
    assert len(raw) == 1

    world.worker = WorkerProcess(
        settings,
        tmp / "scratch",
        tmp / "worker.log",
        env={"FTKIT_QUEUE_SECRET": SECRET},
    )
    everything = [*[j for n, j in world.jobs.items() if spec.is_job_id(j)], *world.legit]
    wait_for(
        lambda: all(world.record(j)["status"] in ("completed", "failed") for j in everything),
        600,
        "every job to end",
        interval=0.5,
    )
    push_raw(world.r, raw[0][8:])  # the replay
    world.jobs["replayed"] = replayed
    then_a_legit_job()
    wait_for(
        lambda: world.record(world.legit[-1])["status"] in ("completed", "failed"),
        300,
        "the last legitimate job",
        interval=0.5,
    )
    yield world
    world.worker.stop(signal.SIGINT, timeout=30)


def refused(world: Attack, name: str, why: str) -> None:
    record = world.record(world.jobs[name])
    assert record["status"] == "failed", record
    assert "refused by worker" in record["error"] and why in record["error"], record["error"]
    assert any(why in line for line in world.client.store.logs(world.jobs[name], 50))
    assert not world.client.store.metrics(world.jobs[name]), "a refused job must train nothing"


@pytest.mark.slow
def test_a_parameter_name_injection_never_runs(attack):
    assert not attack.canary.exists()
    refused(attack, "injection", "signature does not match")


@pytest.mark.slow
def test_a_resigned_parameter_name_injection_is_refused_by_the_config_check(attack):
    assert not attack.canary.exists()
    refused(attack, "injection_resigned", "unknown TrainConfig key")


@pytest.mark.slow
def test_job_ids_that_climb_out_of_the_scratch_folder_touch_nothing(attack):
    for victim in attack.victims:
        assert (victim / "precious.txt").read_text() == "keep me"
    assert "malformed" in attack.worker.output()
    for name in ("relative_id", "absolute_id"):
        assert attack.record(attack.jobs[name])["status"] == "queued"  # never claimed


@pytest.mark.slow
def test_a_value_changed_after_submit_fails_the_job_without_training(attack):
    refused(attack, "changed_value", "job record changed after submit")


@pytest.mark.slow
def test_a_data_set_reference_outside_storage_is_refused(attack):
    refused(attack, "dataset_name", "invalid data set name")
    refused(attack, "dataset_sha", "is not a sha256 hex digest")


@pytest.mark.slow
def test_a_base_model_outside_the_allowed_folders_is_refused_on_the_worker(attack):
    refused(attack, "model_outside", "is outside FTKIT_ALLOWED_MODEL_DIRS")


@pytest.mark.slow
def test_a_forged_message_for_a_legitimate_job_is_ignored_and_the_job_runs_once(attack):
    job_id = attack.jobs["forged_for"]
    assert attack.record(job_id)["status"] == "completed"
    logs = attack.client.store.logs(job_id, 100)
    assert any("ignored a queue message that failed verification" in line for line in logs)
    assert sum("picked up by worker" in line for line in logs) == 1


@pytest.mark.slow
def test_a_replayed_message_does_not_run_a_finished_job_again(attack):
    job_id = attack.jobs["replayed"]
    assert attack.record(job_id)["status"] == "completed"
    logs = attack.client.store.logs(job_id, 100)
    assert sum("picked up by worker" in line for line in logs) == 1
    assert "skipping job" in attack.worker.output()


@pytest.mark.slow
def test_legitimate_jobs_queued_between_and_after_the_attacks_complete(attack):
    for job_id in attack.legit:
        record = attack.record(job_id)
        assert record["status"] == "completed", record.get("error")
        assert [m["step"] for m in attack.client.store.metrics(job_id)] == [1, 2]
    assert attack.worker.proc.poll() is None, attack.worker.output()


@pytest.mark.slow
def test_secrets_stay_out_of_records_logs_and_reports(attack):
    job_id = attack.legit[0]
    report = Path(attack.record(job_id)["report"]).read_text()
    every_log = "\n".join(line for j in attack.legit for line in attack.client.store.logs(j, 500))
    for text in (json.dumps(attack.record(job_id)), every_log, report, attack.worker.output()):
        assert SECRET not in text


def test_a_checkpoint_is_staged_file_by_file_from_what_resuming_reads(tmp_path):
    """Anyone with storage credentials can add files to a checkpoint folder: the worker copies out
    only what the trainer reads to resume, never a planted pickle or script."""
    from ftkit.lineage import CHECKPOINT_FILES
    from ftkit.storage import Storage

    storage = Storage(str(tmp_path / "storage"))
    folder = tmp_path / "checkpoint-5"
    (folder / "nested").mkdir(parents=True)
    kept = [
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_state.json",
        "optimizer.pt",
    ]
    planted = ["training_args.bin", "evil.pkl", "custom_code.py", "nested/optimizer.pt"]
    for name in kept + planted:
        (folder / name).write_bytes(b"x")
    parts = Storage.run_parts("0123456789ab", "checkpoints", "checkpoint-5")
    storage.put_dir(folder, *parts)
    staged = storage.get_dir(parts, tmp_path / "staged", only=CHECKPOINT_FILES)
    found = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert found == sorted(kept)
