"""S3 storage against a real S3-compatible endpoint (moto server on loopback), with Redis as the
shared queue: the deployment of many machines, proven on one."""

from __future__ import annotations

import json
import os
import shutil
import uuid

import boto3
import pytest

from conftest import EXAMPLE_DATA
from ftkit.client import Client
from ftkit.config import Settings
from ftkit.errors import StorageError


@pytest.fixture
def settings(redis_server, s3_server, tmp_path, tmp_path_factory):
    """Overrides the backend-parametrized settings: Redis queue, S3 storage in a fresh bucket."""
    redis_server.flush()
    bucket = f"ftkit-{uuid.uuid4().hex[:10]}"
    s3_server.make_bucket(bucket)
    return Settings.from_env(
        {},
        redis_url=redis_server.url,
        storage=f"s3://{bucket}/team",
        s3_endpoint_url=s3_server.endpoint,
        scratch_dir=str(tmp_path / "scratch"),
        heartbeat_seconds=0.5,
        worker_grace_seconds=3.0,
        allowed_model_dirs=(str(tmp_path_factory.getbasetemp()),),
    )


def bucket_keys(settings) -> list[str]:
    bucket = settings.storage.removeprefix("s3://").split("/")[0]
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.slow
def test_a_job_runs_through_s3_and_leaves_no_secret_in_its_report(
    client, start_worker, tiny_model, tmp_path, settings
):
    start_worker()
    ds = client.upload_dataset(EXAMPLE_DATA)
    assert ds.url.startswith("s3://") and ds.url.endswith("/example_data.jsonl")
    job = client.submit(
        ds, base_model=str(tiny_model), max_steps=4, max_seq_length=128, report_to=["tensorboard"]
    )
    final = job.wait(timeout=240, progress=False)
    assert final["status"] == "completed", final["error"]
    assert final["result"]["report"] == f"{settings.storage}/runs/{job.id}/report.ipynb"
    keys = bucket_keys(settings)
    assert f"team/runs/{job.id}/report.ipynb" in keys
    assert any(k.startswith(f"team/runs/{job.id}/tensorboard/events.out.tfevents.") for k in keys)
    assert f"team/runs/{job.id}/adapter/adapter_model.safetensors" in keys
    assert f"team/datasets/{ds.sha256}/example_data.jsonl" in keys
    adapter = job.download(tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file()
    report = client.storage.read_text("runs", job.id, "report.ipynb")
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]):
        assert secret not in report
        assert secret not in json.dumps(client.store.get(job.id))


@pytest.mark.slow
def test_two_workers_on_two_scratch_folders_run_each_job_exactly_once(
    client, start_worker, tiny_model, settings
):
    start_worker()
    start_worker()
    ds = client.upload_dataset(EXAMPLE_DATA)
    jobs = [
        client.submit(ds, base_model=str(tiny_model), max_steps=2, max_seq_length=64)
        for _ in range(4)
    ]
    finals = [j.wait(timeout=300, progress=False) for j in jobs]
    assert [f["status"] for f in finals] == ["completed"] * 4
    for job in jobs:
        picked = [line for line in job.logs(200) if "picked up by worker" in line]
        assert len(picked) == 1, picked
    assert len({f["worker"] for f in finals}) == 2, "both workers took jobs"
    keys = bucket_keys(settings)
    assert all(f"team/runs/{j.id}/adapter/adapter_model.safetensors" in keys for j in jobs)
    staged = [
        line for j in jobs for line in j.logs(200) if "data set" in line and "staged from" in line
    ]
    assert len(staged) == 2, "each machine downloads the data set once, then uses its cache"


@pytest.mark.slow
def test_a_local_model_folder_trains_on_a_worker_that_sees_only_s3(
    client, start_worker, tiny_model, tmp_path, settings
):
    mine = tmp_path / "laptop" / "my-finetuned-model"
    shutil.copytree(tiny_model, mine)
    job = client.submit(EXAMPLE_DATA, base_model=str(mine), max_steps=4, max_seq_length=128)
    ref = client.store.get(job.id)["model"]
    assert ref["name"] == "my-finetuned-model" and len(ref["sha256"]) == 64
    keys = bucket_keys(settings)
    assert f"team/models/{ref['sha256']}/model.json" in keys
    assert f"team/models/{ref['sha256']}/my-finetuned-model/config.json" in keys
    shutil.rmtree(mine)  # the worker is on another machine: the laptop's folder is not there
    worker = start_worker()
    final = job.wait(timeout=300, progress=False)
    assert final["status"] == "completed", (final["error"], worker.output())
    assert final["config"]["base_model"] == str(mine), "the record keeps what the user gave"
    assert any("model my-finetuned-model staged from storage" in e for e in job.logs(100))


def test_a_missing_bucket_is_a_clear_storage_error(settings, s3_server):
    client = Client(
        Settings.from_env(
            {},
            redis_url=settings.redis_url,
            storage="s3://no-such-bucket-ftkit/x",
            s3_endpoint_url=s3_server.endpoint,
        )
    )
    with pytest.raises(StorageError, match="no-such-bucket-ftkit"):
        client.upload_dataset(EXAMPLE_DATA)


def test_an_unreachable_endpoint_is_a_clear_storage_error(settings):
    from conftest import free_port

    client = Client(
        Settings.from_env(
            {},
            redis_url=settings.redis_url,
            storage="s3://bucket/x",
            s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        )
    )
    with pytest.raises(StorageError, match="s3://bucket/x"):
        client.upload_dataset(EXAMPLE_DATA)


def test_missing_credentials_are_a_clear_storage_error(settings, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="credentials"):
        Client(settings).upload_dataset(EXAMPLE_DATA)


def test_a_file_past_the_multipart_threshold_goes_up_in_parts_and_a_failed_one_leaves_nothing(
    s3_server, monkeypatch, tmp_path
):
    """With the part size lowered to S3's smallest (5 MiB), a 12 MiB file crosses the multipart
    threshold: three parts, read back byte for byte. An upload whose source fails after two parts
    were stored is aborted: no object, and no unfinished upload holding its parts."""
    import hashlib
    import io

    from ftkit import storage as storage_module

    monkeypatch.setattr(storage_module, "CHUNK", 5 << 20)
    bucket = f"ftkit-{uuid.uuid4().hex[:10]}"
    s3_server.make_bucket(bucket)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    store = storage_module.Storage(f"s3://{bucket}/team", endpoint_url=s3_server.endpoint)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))

    store.put_file(big, "runs", "j1", "big.bin")
    head = s3.head_object(Bucket=bucket, Key="team/runs/j1/big.bin")
    assert head["ContentLength"] == 12 << 20
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # a multipart object of 3 parts
    back = store.get_file(("runs", "j1", "big.bin"), tmp_path / "back.bin")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()

    class FailsAfter(io.RawIOBase):
        """The file, until 11 MiB have been read (two parts sent): then a read error."""

        def __init__(self):
            self.inner, self.sent, self.in_progress = open(big, "rb"), 0, None

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            if self.sent >= 11 << 20:
                uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                self.in_progress = [
                    (
                        u["Key"],
                        len(
                            s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get(
                                "Parts", []
                            )
                        ),
                    )
                    for u in uploads
                ]
                raise OSError("read error on the source disk")
            n = self.inner.readinto(buffer)
            self.sent += n
            return n

    source = FailsAfter()
    with pytest.raises(OSError, match="read error"):
        store.put_stream(source, 12 << 20, "runs", "j1", "broken.bin")  # put_file's upload
    source.inner.close()
    assert source.in_progress == [("team/runs/j1/broken.bin", 2)]  # two parts stored, then...
    assert "team/runs/j1/broken.bin" not in bucket_keys_of(s3, bucket)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def bucket_keys_of(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
