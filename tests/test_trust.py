"""What a client and a worker say and refuse about trust, checked without a worker: signatures over
job records, masked passwords, start-up warnings, and submit refusing what the workers would."""

from __future__ import annotations

import copy

import pytest

from conftest import EXAMPLE_DATA
from ftkit import spec
from ftkit.config import Settings, mask_url
from ftkit.errors import ConfigError
from ftkit.worker import exposure_warnings

RECORD = {
    "job_id": "0123456789ab",
    "dataset": {"sha256": "a" * 64, "name": "train.jsonl", "format": "chat", "columns": None},
    "config": {"base_model": "org/model", "max_steps": 5},
    "submitted_by": "ada",
    "created_at": 1764400000.123456,
    "status": "queued",
}


def signed(secret: str = "s3cret") -> dict:
    record = copy.deepcopy(RECORD)
    record["signature"] = spec.sign(record, secret)
    return record


def test_a_signed_record_verifies_and_any_change_to_a_signed_field_does_not():
    spec.verify_signature(signed(), "s3cret")
    for path, value in [
        (("config", "max_steps"), 50),
        (("dataset", "name"), "other.jsonl"),
        (("submitted_by",), "mallory"),
        (("created_at",), 1.0),
        (("job_id",), "ba9876543210"),
    ]:
        record = signed()
        target = record
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        with pytest.raises(spec.RecordRefused, match="signature does not match"):
            spec.verify_signature(record, "s3cret")


def test_status_and_progress_are_not_signed_so_workers_can_move_them():
    record = signed()
    record.update(status="training", progress=0.5, worker="w1", attempt=2)
    spec.verify_signature(record, "s3cret")


def test_a_worker_with_a_secret_refuses_unsigned_or_differently_signed_records():
    with pytest.raises(spec.RecordRefused, match="not signed"):
        spec.verify_signature(RECORD, "s3cret")
    with pytest.raises(spec.RecordRefused, match="signature does not match"):
        spec.verify_signature(signed("another"), "s3cret")


def test_a_record_is_rebuilt_through_train_config():
    job = spec.JobSpec.from_record(RECORD)
    assert job.config.max_steps == 5 and job.dataset.name == "train.jsonl"
    for change, why in [
        ({"config": {"x = 1\nimport os\ny": 1}}, "unknown TrainConfig key"),
        ({"config": {"max_steps": -1}}, "max_steps"),
        ({"job_id": "../../etc"}, "12 hex characters"),
        ({"dataset": {**RECORD["dataset"], "name": "../x"}}, "invalid data set name"),
        ({"dataset": {**RECORD["dataset"], "format": "pickle"}}, "format"),
        ({"dataset": "s3://elsewhere"}, "not an object"),
    ]:
        with pytest.raises(spec.RecordRefused, match=why):
            spec.JobSpec.from_record({**RECORD, **change})


def test_redis_passwords_are_masked_wherever_settings_are_shown():
    url = "redis://:hunter2-password@redis.example:6379/0"
    assert mask_url(url) == "redis://:***@redis.example:6379/0"
    assert mask_url("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"
    settings = Settings.from_env({}, redis_url=url, queue_secret="team-secret")
    for shown in (repr(settings), str(settings), settings.queue_location):
        assert "hunter2" not in shown and "team-secret" not in shown
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"FTKIT_REDIS_URL": "http://:hunter2-password@h:1/0"})
    assert "hunter2" not in str(refused.value)


def test_a_worker_on_a_remote_redis_without_a_secret_warns_at_start():
    remote = Settings.from_env({}, redis_url="redis://:pw@10.0.0.5:6379/0")
    assert any("FTKIT_QUEUE_SECRET" in w for w in exposure_warnings(remote))
    local = Settings.from_env({}, redis_url="redis://127.0.0.1:6379/0", allowed_model_dirs=("/m",))
    assert exposure_warnings(local) == []
    signed_remote = Settings.from_env(
        {}, redis_url="redis://10.0.0.5/0", queue_secret="x", allowed_model_dirs=("/m",)
    )
    assert exposure_warnings(signed_remote) == []


def test_health_says_whether_messages_are_signed(client):
    assert client.health()["signed_messages"] is False
    assert "hunter2" not in str(client.health())


@pytest.mark.parametrize("settings", ["redis"], indirect=True)
def test_submit_refuses_when_live_workers_require_another_secret(client, settings):
    client.store.heartbeat(
        "w1", {"secret_fingerprint": spec.secret_fingerprint("workers-secret")}, ttl=30
    )
    with pytest.raises(ConfigError, match="FTKIT_QUEUE_SECRET"):
        client.submit(EXAMPLE_DATA, max_steps=1)
    assert client.store.count() == 0
