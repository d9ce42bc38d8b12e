"""Webhooks: a job's end announced to a real HTTP server on loopback, checked by the README's own
receiver; what a worker refuses to call; the URL checked where it is given; verify() for
receivers. One module-scoped world runs one real worker and one real training job."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from conftest import EXAMPLE_DATA, REPO, WorkerProcess, sqlite_only, wait_for
from ftkit import webhooks
from ftkit.client import Client
from ftkit.config import Settings
from ftkit.core.rules import check_webhook
from ftkit.errors import ConfigError, WebhookError
from ftkit.spec import JobSpec, RecordRefused, sign, verify_signature
from ftkit.worker.notify import Notices, trusted_webhook
from ftkit.worker.runtime import Runtime

SECRET = "whsec-for-the-tests-7Qx2"  # FTKIT_WEBHOOK_SECRET of the worker and the receiver
QUEUE_SECRET = "queue-secret-for-the-tests-Lm4"


# -- the README's receiver, on a real socket ---------------------------------------------------------
def readme_receiver() -> type:
    """The README's receiver class, as written (its last line, which serves on port 8080, left out)."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- webhook-receiver:", 1)[1].split("```python\n", 1)[1].split("```")[0]
    code = block.rsplit("\nHTTPServer(", 1)[0]
    namespace: dict[str, Any] = {}
    os.environ["FTKIT_WEBHOOK_SECRET"] = SECRET  # what the README's code reads
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        del os.environ["FTKIT_WEBHOOK_SECRET"]
    return namespace["Receiver"]


@dataclass
class Post:
    path: str
    answered: int  # what the README's check answered: 204 accepted, 400 refused
    headers: dict[str, str]
    body: bytes


class Receiver:
    """The README's receiver on a loopback port, recording each POST and its answer. Its port is
    bound from the start but refuses connections until ``start()``: a receiver that is down."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        outer, base = self, readme_receiver()

        class Recording(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.rfile = io.BytesIO(body)  # the README's code reads it again
                super().do_POST()
                outer.posts.append(Post(self.path, self.answered, dict(self.headers), body))

            def send_response(self, code: int, message: str | None = None) -> None:
                self.answered = code
                super().send_response(code, message)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Recording, bind_and_activate=False)
        self.server.server_bind()
        self.port = self.server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> Receiver:
        self.server.server_activate()
        self.serving = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.serving.start()
        return self

    def stop(self) -> None:
        if getattr(self, "serving", None) is not None:
            self.server.shutdown()  # waits for serve_forever: only once it runs
        self.server.server_close()

    def to(self, path: str) -> list[Post]:
        return [p for p in self.posts if p.path == path]


def events(client: Client, job_id: str) -> list[str]:
    return [line for line in client.store.logs(job_id, 500) if "webhook" in line]


# -- one worker, four ends ---------------------------------------------------------------------------
@dataclass
class World:
    client: Client
    up: Receiver  # answers from the start
    late: Receiver  # down until the job cancelled while queued has failed twice to reach it
    jobs: dict[str, Any]
    worker: WorkerProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    """Before a worker starts: two jobs cancelled while queued (one whose receiver is down, one
    whose host is off the worker's allow-list), then a job that trains and one whose local model
    the worker refuses. Then one worker, signing with SECRET and allowed 127.0.0.1 only."""
    folder = tmp_path_factory.mktemp("webhooks")
    settings = Settings.from_env(
        {},
        queue_db=str(folder / "queue.db"),
        storage=str(folder / "storage"),
        home=str(folder / "home"),
        heartbeat_seconds=0.5,
        worker_grace_seconds=3.0,
        queue_secret=QUEUE_SECRET,  # the webhook is signed with the spec
        allowed_model_dirs=(str(tmp_path_factory.getbasetemp()),),
    )
    client, up, late = Client(settings), Receiver().start(), Receiver()
    elsewhere = folder / "elsewhere" / "model"  # a model the worker is not allowed to read
    elsewhere.mkdir(parents=True)
    shutil.copy(tiny_model / "config.json", elsewhere / "config.json")
    small = dict(base_model=str(tiny_model), max_steps=2, max_seq_length=128, batch_size=2)
    jobs = {
        "late": client.submit(EXAMPLE_DATA, webhook=late.url("/late"), priority=9, **small),
        "off_list": client.submit(
            EXAMPLE_DATA, webhook=up.url("/off", host="localhost"), priority=9, **small
        ),
    }
    for job in jobs.values():
        assert job.cancel() == "cancelled"
    jobs["done"] = client.submit(
        EXAMPLE_DATA, webhook=up.url("/done"), tags=["hooked"], note="told when done", **small
    )
    jobs["refused"] = client.submit(
        EXAMPLE_DATA, webhook=up.url("/refused"), **{**small, "base_model": str(elsewhere)}
    )
    (folder / "scratch").mkdir()
    worker = WorkerProcess(
        settings,
        folder / "scratch",
        folder / "worker.log",
        env={
            "FTKIT_QUEUE_SECRET": QUEUE_SECRET,
            "FTKIT_WEBHOOK_SECRET": SECRET,
            "FTKIT_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "FTKIT_WEBHOOK_BACKOFF_SECONDS": "0.3",
            "FTKIT_WEBHOOK_RETRY_SECONDS": "300",
            "FTKIT_ALLOWED_MODEL_DIRS": str(tiny_model.parent),
        },
    )
    late_id = jobs["late"].id
    try:
        wait_for(
            lambda: any("attempt 2 failed" in e for e in events(client, late_id)),
            120,
            "two failed attempts to reach the receiver that is down",
        )
        late.start()  # it comes back
        ended = {"done": "completed", "refused": "failed"}
        for name, status in ended.items():
            final = jobs[name].wait(timeout=300, progress=False)
            assert final["status"] == status, (name, final["error"], worker.output()[-3000:])
        wait_for(
            lambda: all(
                (j.status()["webhook_delivery"] or {}).get("state") not in (None, "pending")
                for j in jobs.values()
            ),
            120,
            "every job's webhook delivery to end",
        )
        yield World(client, up, late, jobs, worker)
    finally:
        worker.stop()
        up.stop()
        late.stop()


def only_post(receiver: Receiver, path: str) -> tuple[Post, dict[str, Any]]:
    posts = receiver.to(path)
    assert len(posts) == 1, [p.path for p in receiver.posts]
    return posts[0], json.loads(posts[0].body)


@pytest.mark.slow
def test_a_completed_job_is_announced_signed_as_the_readme_checks_and_with_no_secret(world):
    job = world.jobs["done"]
    status = job.status()
    post, event = only_post(world.up, "/done")
    assert post.answered == 204, "the README's receiver accepted the signature"
    assert webhooks.verify(post.body, post.headers, SECRET) == event
    assert event["type"] == "fine_tuning.job.succeeded" and event["object"] == "event"
    assert post.headers["Ftkit-Event-Id"] == event["id"] == status["webhook_delivery"]["id"]
    assert post.headers["Ftkit-Event-Type"] == event["type"]
    data, result = event["data"], status["result"]
    assert data["job_id"] == job.id and data["status"] == "completed" and data["error"] is None
    assert data["final_loss"] == result["final_loss"] is not None
    assert data["adapter"] == result["adapter_dir"] and data["report"] == status["report"]
    assert (data["tags"], data["note"], data["attempt"]) == (["hooked"], "told when done", 1)
    for name in ("created_at", "started_at", "finished_at"):
        assert data[name] == status[name]
    sent = post.body.decode() + json.dumps(post.headers)
    assert SECRET not in sent and QUEUE_SECRET not in sent
    assert SECRET not in open(status["report"]).read()  # the kernel never held it
    assert status["webhook_delivery"]["state"] == "delivered"
    assert any("delivered (HTTP 204, attempt 1)" in e for e in events(world.client, job.id))
    # The README's check can fail: the same headers on a changed body are refused.
    tampered = post.body.replace(b'"completed"', b'"cancelled"')
    assert webhooks.post(world.up.url("/tampered"), tampered, post.headers, "127.0.0.1") == 400
    with pytest.raises(WebhookError, match="signature does not match"):
        webhooks.verify(tampered, post.headers, SECRET)


@pytest.mark.slow
def test_a_record_the_worker_refuses_is_announced_as_failed(world):
    post, event = only_post(world.up, "/refused")
    assert post.answered == 204 and event["type"] == "fine_tuning.job.failed"
    assert "refused by worker" in event["data"]["error"]
    assert "FTKIT_ALLOWED_MODEL_DIRS" in event["data"]["error"]


@pytest.mark.slow
def test_a_job_cancelled_while_queued_is_announced_once_its_receiver_comes_back(world):
    job = world.jobs["late"]
    post, event = only_post(world.late, "/late")
    assert post.answered == 204 and event["type"] == "fine_tuning.job.cancelled"
    assert event["data"]["started_at"] is None and event["data"]["status"] == "cancelled"
    lines = events(world.client, job.id)
    assert re.search(r"attempt 1 failed \(connection refused\); next in 0\.3 s", lines[0]), lines
    assert "attempt 2 failed (connection refused); next in 0.6 s" in lines[1], lines
    delivery = job.status()["webhook_delivery"]
    assert delivery["state"] == "delivered" and delivery["attempts"] >= 3
    assert f"delivered (HTTP 204, attempt {delivery['attempts']})" in lines[-1]
    assert len(lines) == delivery["attempts"]  # one event per attempt, in the job's log


@pytest.mark.slow
def test_a_host_off_the_allow_list_is_never_called(world):
    job = world.jobs["off_list"]
    assert world.up.to("/off") == []
    delivery = job.status()["webhook_delivery"]
    assert delivery["state"] == "refused" and "FTKIT_WEBHOOK_ALLOWED_HOSTS" in delivery["outcome"]
    (line,) = events(world.client, job.id)
    assert "not called: host localhost is not in FTKIT_WEBHOOK_ALLOWED_HOSTS" in line


# -- the parts, without a worker ---------------------------------------------------------------------
def test_verify_accepts_what_a_worker_signs_and_nothing_else():
    record = {"job_id": "0123456789ab", "status": "failed", "error": "boom", "created_at": 1.0}
    event = webhooks.event(record)
    body = webhooks.body_of(event)
    headers = webhooks.headers_for(body, event, SECRET)
    shouting = {k.upper(): v for k, v in headers.items()}  # header names have no case
    assert webhooks.verify(body, shouting, SECRET) == event
    assert webhooks.verify(body.decode(), headers, SECRET)["type"] == "fine_tuning.job.failed"
    now = time.time()
    for why, args, kwargs in [
        ("tolerance", (body, headers, SECRET), {"now": now + 301}),  # a replay, five minutes on
        ("tolerance", (body, headers, SECRET), {"now": now - 301}),
        ("does not match", (body + b" ", headers, SECRET), {}),
        ("does not match", (body, headers, "another-secret"), {}),
        ("no Ftkit-Signature", (body, {}, SECRET), {}),
        ("is not t=", (body, {"Ftkit-Signature": "v1=abc"}, SECRET), {}),
        ("is not t=", (body, {"Ftkit-Signature": "t=1,v1=é"}, SECRET), {}),
    ]:
        with pytest.raises(WebhookError, match=why):
            webhooks.verify(*args, **kwargs)
    assert webhooks.verify(body, headers, SECRET, tolerance=600, now=now + 400) == event
    assert webhooks.SIGNATURE_HEADER not in webhooks.headers_for(body, event, None)


def test_the_event_masks_passwords_and_reads_like_the_status():
    record = {
        "job_id": "0123456789ab",
        "status": "completed",
        "created_at": 1796119200.5,
        "started_at": None,
        "finished_at": 1796119260,
        "report": "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/runs/0123456789ab/report.ipynb",
        "error": "could not reach redis://:hunter2@10.0.0.5:6379/0",
        "result": {"final_loss": 0.5, "adapter_dir": "/srv/storage/runs/0123456789ab/adapter"},
        "tags": ["a"],
    }
    event = webhooks.event(record)
    text = json.dumps(event)
    assert "wJalrXUtnFEMI" not in text and "hunter2" not in text
    assert event["data"]["report"].startswith("s3://AKIAEXAMPLE:***@bucket/")
    assert event["data"]["created_at"] == "2026-12-01T10:00:00+00:00"
    assert event["data"]["started_at"] is None and event["data"]["final_loss"] == 0.5
    assert event["id"].startswith("evt_") and event["id"] != webhooks.event(record)["id"]
    cancelled = webhooks.event({**record, "status": "cancelled", "result": None, "loss": 1.25})
    assert cancelled["data"]["final_loss"] == 1.25 and cancelled["data"]["adapter"] is None


def test_a_worker_calls_public_addresses_or_the_hosts_it_allows():
    refused = webhooks.DestinationRefused
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",  # resolves to loopback
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://[::1]:8443/hook",
        "http://0.0.0.0/",
    ]:
        with pytest.raises(refused, match="not a public address"):
            webhooks.destination(url, ())
    assert webhooks.destination("https://93.184.215.14/hook", ()) == "93.184.215.14"
    assert webhooks.destination("http://127.0.0.1:9/", ("127.0.0.1",)) == "127.0.0.1"
    with pytest.raises(refused, match="host localhost is not in FTKIT_WEBHOOK_ALLOWED_HOSTS"):
        webhooks.destination("http://localhost:9/", ("127.0.0.1",))
    allowed = ("hooks.example.com", "*.corp.example.com")
    assert webhooks.host_allowed("HOOKS.example.com.", allowed)
    assert webhooks.host_allowed("a.b.corp.example.com", allowed)
    assert not webhooks.host_allowed("corp.example.com", allowed)
    assert not webhooks.host_allowed("evilcorp.example.com", allowed)
    assert not webhooks.host_allowed("hooks.example.com.evil.net", allowed)
    settings = Settings.from_env({"FTKIT_WEBHOOK_ALLOWED_HOSTS": " Hooks.Example.com, *.corp.x ,"})
    assert settings.webhook_allowed_hosts == ("hooks.example.com", "*.corp.x")


def test_retries_wait_longer_each_time_for_a_bounded_while():
    waits = list(webhooks.delays(1, 600))
    assert waits[:7] == [1, 2, 4, 8, 16, 32, 60] and set(waits[6:]) == {60}
    assert 540 < sum(waits) <= 600
    assert list(webhooks.delays(0.3, 2)) == [0.3, 0.6]
    assert [webhooks.worth_retrying(s) for s in (500, 503, 429, 408, 404, 400, 301)] == [
        True, True, True, True, False, False, False,
    ]  # fmt: skip


def test_a_webhook_url_is_checked_where_it_is_given():
    assert check_webhook("https://hooks.example.com:8443/ftkit?team=ml") is not None
    assert check_webhook(None) is None and check_webhook("") is None
    for bad, why in [
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("https:///no-host", "http:// or https://"),
        ("hooks.example.com/x", "http:// or https://"),
        ("https://user:pw@hooks.example.com/x", "user name or password"),
        ("https://token@hooks.example.com/x", "user name or password"),
        ("https://hooks.example.com/x\nHost: evil", "one line"),
        ("https://hooks.example.com/a b", "one line"),
        ("https://hooks.example.com/" + "x" * 2048, "at most 2048"),
        ("https://hooks.example.com:99999/", "not a URL"),
        (["https://hooks.example.com"], "URL string"),
    ]:
        with pytest.raises(ConfigError, match=why) as caught:
            check_webhook(bad)
        assert caught.value.field == "webhook"
    with pytest.raises(ConfigError, match="FTKIT_WEBHOOK_URL"):
        Settings.from_env({"FTKIT_WEBHOOK_URL": "ftp://x"})


@sqlite_only
def test_the_webhook_is_checked_at_submit_and_signed_with_the_job(client, settings):
    with pytest.raises(ConfigError, match="user name or password") as caught:
        client.submit(EXAMPLE_DATA, webhook="https://u:pw@hooks.example.com/", base_model="org/m")
    assert caught.value.field == "webhook" and client.count_jobs() == 0
    hooked = Client(
        dataclasses.replace(
            settings, queue_secret=QUEUE_SECRET, webhook_url="https://default.example.com/h"
        )
    )
    job = hooked.submit(EXAMPLE_DATA, base_model="org/m", max_steps=2)  # FTKIT_WEBHOOK_URL's
    record = hooked.store.get(job.id)
    assert record["webhook"] == "https://default.example.com/h" == job.status()["webhook"]
    assert trusted_webhook(record, QUEUE_SECRET) == record["webhook"]
    none = hooked.submit(EXAMPLE_DATA, webhook="", base_model="org/m", max_steps=2)
    assert "webhook" not in hooked.store.get(none.id) and none.status()["webhook"] is None
    # Whoever can write to the store cannot send the job's end elsewhere.
    redirected = {**record, "webhook": "https://attacker.example.net/"}
    with pytest.raises(RecordRefused, match="signature does not match"):
        verify_signature(redirected, QUEUE_SECRET)
    with pytest.raises(RecordRefused, match="does not verify"):
        trusted_webhook(redirected, QUEUE_SECRET)
    resigned = {**record, "webhook": "gopher://x"}
    resigned["signature"] = sign(resigned, QUEUE_SECRET)
    with pytest.raises(RecordRefused, match="the job's webhook"):
        JobSpec.from_record(resigned)
    # The command line's submit takes it too, checked the same way.
    from ftkit.cli.jobs import cmd_submit
    from ftkit.cli.parser import build_parser

    args = ["submit", str(EXAMPLE_DATA), "--webhook", "ftp://x", "--base-model", "org/m"]
    with pytest.raises(ConfigError, match="http:// or https://"):
        cmd_submit(build_parser().parse_args(args))
    # A retry is told where its job was, not where today's default points.
    job.cancel()
    again = Client(dataclasses.replace(settings, queue_secret=QUEUE_SECRET)).get_job(job.id).retry()
    assert again.status()["webhook"] == "https://default.example.com/h"


@sqlite_only
def test_post_train_takes_a_webhook_and_answers_422_for_a_bad_one(settings, tmp_path):
    from apiserver import serve_in_thread

    api = serve_in_thread(settings, tmp_path / "api")
    try:
        assert api.upload("train.jsonl", EXAMPLE_DATA.read_bytes())[0] == 200
        base = {
            "dataset_filename": "train.jsonl",
            "config": {"base_model": "org/m", "max_steps": 2},
        }
        for bad in ["ftp://hooks.example.com/x", "https://u:pw@hooks.example.com/x", "x" * 3000]:
            status, body, _ = api.request("POST", "/train", {**base, "webhook": bad})
            assert status == 422 and body["detail"][0]["loc"] == ["body", "webhook"], body
        assert api.request("GET", "/jobs")[1]["total"] == 0
        good = "https://hooks.example.com/ftkit"
        status, body, _ = api.request("POST", "/train", {**base, "webhook": good})
        assert status == 200, body
        shown = api.request("GET", f"/status/{body['job_id']}")[1]
        assert shown["webhook"] == good and shown["webhook_delivery"] is None
    finally:
        api.stop()


def runtime(settings: Settings, client: Client, folder) -> Runtime:
    """What a worker's delivery threads share, on the client's own store."""
    return Runtime(settings, client.store, client.storage, "test-worker", folder)


def test_a_jobs_end_is_announced_once_whoever_sees_it(client, settings, tmp_path):
    """The claim is a compare-and-set on the record, on both backends."""
    job = client.submit(
        EXAMPLE_DATA, webhook="http://127.0.0.1:9/x", base_model="org/m", max_steps=2
    )
    first, second = (
        Notices(runtime(settings, client, tmp_path)),
        Notices(runtime(settings, client, tmp_path)),
    )
    assert first.claim(job.id) is None  # queued: no end yet
    job.cancel()
    url, event = first.claim(job.id)
    assert url == "http://127.0.0.1:9/x" and event["type"] == "fine_tuning.job.cancelled"
    assert second.claim(job.id) is None and first.claim(job.id) is None
    status = job.status()
    assert status["status"] == "cancelled" and status["finished_at"] is not None
    assert status["webhook_delivery"] == {
        "id": event["id"], "type": event["type"], "state": "pending", "attempts": 0,
        "outcome": None,
    }  # fmt: skip


@sqlite_only
def test_a_stopping_worker_tries_once_more_then_gives_up(client, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("FTKIT_WEBHOOK_BACKOFF_SECONDS", "120")  # the next wait: past any test
    down = Receiver()  # bound, and refusing
    try:
        job = client.submit(EXAMPLE_DATA, webhook=down.url("/x"), base_model="org/m", max_steps=2)
        job.cancel()
        allowed = dataclasses.replace(settings, webhook_allowed_hosts=("127.0.0.1",))
        notices = Notices(runtime(allowed, client, tmp_path))
        notices.announce(job.id)
        wait_for(
            lambda: any("attempt 1 failed" in e for e in events(client, job.id)), 60, "attempt 1"
        )
        notices.close()
        assert not notices.threads, "close() woke the delivery from its two-minute wait"
    finally:
        down.stop()
    lines = events(client, job.id)
    assert "attempt 1 failed (connection refused); next in 120 s" in lines[0], lines
    assert "abandoned after 2 attempts (connection refused): the worker stopped" in lines[1]
    assert job.status()["webhook_delivery"]["state"] == "abandoned"


def test_kernels_never_hold_the_worker_secrets(monkeypatch):
    from ftkit.worker.kernels import kernel_env

    monkeypatch.setenv("FTKIT_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("FTKIT_QUEUE_SECRET", QUEUE_SECRET)
    monkeypatch.setenv("FTKIT_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    env = kernel_env()
    assert SECRET not in env.values() and QUEUE_SECRET not in env.values()
    assert env["FTKIT_WEBHOOK_ALLOWED_HOSTS"] == "127.0.0.1"
