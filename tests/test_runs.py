"""Runs people manage: tags and notes, finding jobs by tag, deleting a job and collecting old ones
(``ftkit gc``), on SQLite and on a real redis-server."""

from __future__ import annotations

import time

import pytest

from conftest import EXAMPLE_DATA, redis_only, wait_for
from ftkit.errors import ConfigError, JobActive, JobNotFound


def test_tags_and_a_note_are_kept_and_jobs_are_found_by_tag(client):
    ds = client.upload_dataset(EXAMPLE_DATA)
    a = client.submit(ds, max_steps=2, tags=["baseline", "lr"], note="first try")
    b = client.submit(ds, max_steps=2, tags=["lr", "lr"])
    client.submit(ds, max_steps=2)
    status = a.status()
    assert status["tags"] == ["baseline", "lr"] and status["note"] == "first try"
    assert status["config"]["max_steps"] == 2
    assert b.status()["tags"] == ["lr"] and b.status()["note"] is None
    assert [j["job_id"] for j in client.jobs(tag="lr")] == [b.id, a.id]
    assert [j["job_id"] for j in client.jobs(tag="baseline")] == [a.id]
    assert [j["job_id"] for j in client.jobs(tag="lr", status="queued", limit=1)] == [b.id]
    assert client.jobs(tag="lr", status="completed") == []


@pytest.mark.parametrize(
    "tags, message",
    [
        ("baseline", "list of words"),
        (["has space"], "tag 'has space'"),
        (["../up"], "tag '../up'"),
        ([7], "tag 7"),
        ([f"t{i}" for i in range(21)], "at most 20"),
    ],
)
def test_bad_tags_are_refused_before_anything_is_queued(client, tags, message):
    ds = client.upload_dataset(EXAMPLE_DATA)
    with pytest.raises(ConfigError, match=message) as info:
        client.submit(ds, max_steps=2, tags=tags)
    assert info.value.field == "tags" and client.count_jobs() == 0


def test_a_note_must_be_short_text(client):
    with pytest.raises(ConfigError, match="note"):
        client.submit(EXAMPLE_DATA, max_steps=2, note="x" * 5000)
    with pytest.raises(ConfigError, match="tag 'a b'"):
        client.jobs(tag="a b")


def test_a_queued_job_is_deleted_only_with_force_which_cancels_it_first(client):
    job = client.submit(EXAMPLE_DATA, max_steps=2, tags=["gone"])
    with pytest.raises(JobActive, match=f"job {job.id} is queued.*force=True"):
        job.delete()
    assert job.status()["status"] == "queued"
    row = job.delete(force=True)
    assert (row["job_id"], row["status"], row["bytes"]) == (job.id, "cancelled", 0)
    with pytest.raises(JobNotFound):
        job.status()
    assert client.jobs() == [] and client.jobs(tag="gone") == []
    with pytest.raises(JobNotFound):
        client.delete(job.id)


def test_gc_collects_ended_jobs_older_than_an_age_and_a_dry_run_keeps_them(client):
    ds = client.upload_dataset(EXAMPLE_DATA)
    ended = [client.submit(ds, max_steps=2) for _ in range(2)]
    for job in ended:
        job.cancel()
    waiting = client.submit(ds, max_steps=2)
    assert client.gc("1d") == []  # nothing ended a day ago
    with pytest.raises(ConfigError, match="status 'queued'"):
        client.gc("0s", status="queued")
    with pytest.raises(ConfigError, match="30 days"):
        client.gc("30 days")
    planned = client.gc("0s", dry_run=True)
    assert [r["job_id"] for r in planned] == sorted(j.id for j in ended)
    assert client.count_jobs() == 3
    assert client.gc("0s", status="failed") == []
    done = client.gc("0s", status="cancelled")
    assert [r["job_id"] for r in done] == sorted(j.id for j in ended)
    assert [j["job_id"] for j in client.jobs()] == [waiting.id]


def test_the_gc_command_prints_what_it_frees(client, capsys, monkeypatch):
    import ftkit
    from ftkit import cli

    job = client.submit(EXAMPLE_DATA, max_steps=2)
    job.cancel()
    monkeypatch.setattr(ftkit, "client", lambda: client)  # the CLI's connection
    assert cli.main(["gc", "--older-than", "0s", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{job.id}  cancelled" in out and "would free 0 B from 1 job" in out
    assert cli.main(["gc", "--older-than", "0s", "--status", "cancelled"]) == 0
    assert "freed 0 B from 1 job" in capsys.readouterr().out
    assert client.jobs() == []
    assert cli.main(["gc", "--older-than", "soon"]) == 2
    assert "age 'soon'" in capsys.readouterr().err


@pytest.mark.slow
@redis_only  # the tag index on both backends: test_jobs.py
def test_a_worker_run_is_found_by_tag_and_deleted_with_its_run_folder(
    client, start_worker, tiny_model
):
    from ftkit.storage import Storage

    start_worker()
    ds = client.upload_dataset(EXAMPLE_DATA)
    common = dict(base_model=str(tiny_model), batch_size=2, max_seq_length=128)
    done = client.submit(ds, max_steps=3, tags=["sweep-a"], note="short", **common)
    assert done.wait(timeout=300, progress=False)["status"] == "completed"
    assert [j["job_id"] for j in client.jobs(tag="sweep-a", status="completed")] == [done.id]
    run = Storage.run_parts(done.id)
    assert client.storage.exists(*run, "adapter", "adapter_config.json")
    size = client.storage.size(*run)

    busy = client.submit(ds, max_steps=100_000, tags=["sweep-a"], **common)
    wait_for(lambda: busy.status()["status"] == "training", 300, "the second job to train")
    with pytest.raises(JobActive, match="training"):
        busy.delete()
    row = busy.delete(force=True)
    assert row["status"] == "cancelled" and not client.storage.exists(*Storage.run_parts(busy.id))

    lines = done.logs(500)
    assert any("picked up by worker" in line for line in lines)  # an ftkit event
    assert any(line.startswith("step 3/3") for line in lines)  # printed by a cell
    assert list(done.logs(follow=True)) == lines
    row = done.delete()
    assert row["bytes"] == size > 0 and not client.storage.exists(*run)
    assert client.jobs(tag="sweep-a") == [] and client.jobs() == []


def test_output_lines_reach_the_logs_in_order_once_each(settings):
    from ftkit import jobstore
    from ftkit.worker.output_log import MAX_LINE, OutputLog

    store = jobstore.open_store(settings)
    store.create({"job_id": "0123456789ab", "status": "training", "created_at": 1.0})
    out = OutputLog(store, "0123456789ab", every=3600)
    out.write("loading model\ntrain")
    out.write("ing 10%\r")
    out.flush()
    out.write("\rtraining 100%\nlong " + "x" * (2 * MAX_LINE) + "\n")
    out.flush()
    assert store.logs("0123456789ab") == []  # batched: sent once per `every`, or at close
    out.write("the last words")
    out.close()
    lines = store.logs("0123456789ab")
    assert lines[:2] == ["loading model", "training 100%"]
    assert lines[2].startswith("long xxx") and lines[2].endswith(" [...]")
    assert len(lines[2]) == MAX_LINE + len(" [...]") and lines[3:] == ["the last words"]

    quiet = OutputLog(store, "0123456789ab", every=0.2)
    quiet.write("printed, then silence\n")
    quiet.flush()
    wait_for(
        lambda: store.logs("0123456789ab", 1) == ["printed, then silence"], 30, "the timer's send"
    )


def test_following_logs_yields_every_line_until_the_job_ends(client):
    import threading

    job = client.submit(EXAMPLE_DATA, max_steps=2)
    store = client.store

    def write():
        for i in range(5):
            store.add_logs(job.id, [f"line {i}"])
            time.sleep(0.05)
        job.cancel()

    with pytest.raises(TimeoutError):
        list(job.logs(follow=True, timeout=0.3, poll=0.05))
    writer = threading.Thread(target=write)
    writer.start()
    seen = list(job.logs(follow=True, timeout=60))
    writer.join()
    assert [line for line in seen if line.startswith("line")] == [f"line {i}" for i in range(5)]
    assert "cancelled while queued" in seen[-1]
    assert job.logs(2)[-1] == seen[-1]


def test_the_logs_command_prints_the_tail_and_follows_to_the_end(client, capsys, monkeypatch):
    import ftkit
    from ftkit import cli

    job = client.submit(EXAMPLE_DATA, max_steps=2)
    client.store.add_logs(job.id, ["one", "two", "three"])
    monkeypatch.setattr(ftkit, "client", lambda: client)  # the CLI's connection
    assert cli.main(["logs", job.id, "-n", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["two", "three"]
    job.cancel()
    assert cli.main(["logs", job.id, "--follow"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["one", "two", "three"] and "cancelled while queued" in out[-1]


@pytest.mark.parametrize(
    "parent, message",
    [("../etc", "give a Job or a job id"), ("0123456789ab", "no job 0123456789ab")],
)
def test_resume_from_names_an_existing_job(client, parent, message):
    with pytest.raises(ConfigError, match=message) as info:
        client.submit(EXAMPLE_DATA, max_steps=2, resume_from=parent)
    assert info.value.field == "resume_from" and client.count_jobs() == 0


def test_resume_from_a_job_without_a_checkpoint_says_how_to_keep_one(client):
    parent = client.submit(EXAMPLE_DATA, max_steps=2)
    with pytest.raises(
        ConfigError, match=f"job {parent.id} .queued. kept no checkpoint.*save_steps"
    ):
        client.submit(EXAMPLE_DATA, max_steps=4, resume_from=parent)


def test_retry_is_for_ended_jobs_and_keeps_the_config_tags_and_note(client):
    job = client.submit(EXAMPLE_DATA, max_steps=3, lora_r=4, tags=["t"], note="n")
    with pytest.raises(ConfigError, match="only a failed or cancelled job is retried"):
        job.retry()
    job.cancel()
    again = job.retry()  # it kept no checkpoint: the same run from step 1
    old, new = job.status(), again.status()
    assert new["status"] == "queued" and new["config"] == old["config"]
    assert new["dataset"] == old["dataset"] and (new["tags"], new["note"]) == (["t"], "n")
    assert new["resume_from"] is None and new["retry_of"] == job.id
    assert old["resume_from"] is None and old["retry_of"] is None


@pytest.mark.parametrize("field, what", [("resume_from", "continues"), ("retry_of", "retries")])
def test_the_continued_or_retried_job_is_signed_and_checked(field, what):
    from ftkit.spec import JobSpec, RecordRefused, sign, signed_bytes, verify_signature

    base = {"job_id": "0123456789ab", "config": {}, "submitted_by": "me", "created_at": 1.0}
    older = sign(base, "s3cret")
    assert field.encode() not in signed_bytes(base)  # older records sign the same bytes
    verify_signature({**base, field: None, "signature": older}, "s3cret")
    record = {**base, field: "abcdefabcdef"}
    record["signature"] = sign(record, "s3cret")
    verify_signature(record, "s3cret")
    with pytest.raises(RecordRefused, match="signature"):
        verify_signature({**record, field: "bbbbbbbbbbbb"}, "s3cret")
    with pytest.raises(RecordRefused, match="signature"):
        verify_signature({**record, field: None}, "s3cret")
    with pytest.raises(RecordRefused, match="signature"):  # added to a record signed without it
        verify_signature({**record, "signature": older}, "s3cret")
    dataset = {"sha256": "a" * 64, "name": "d.jsonl", "format": "chat"}
    assert getattr(JobSpec.from_record({**record, "dataset": dataset}), field) == "abcdefabcdef"
    for bad in ("../../x", "0123456789ab"):  # not an id; the job itself
        with pytest.raises(RecordRefused, match=f"the job it {what}.*not a job id"):
            JobSpec.from_record({**record, "dataset": dataset, field: bad})


def test_the_report_names_and_links_the_job_it_continues_or_retries():
    from ftkit.report import header_html

    link = f"<a href='../{'a' * 12}/report.html'>{'a' * 12}</a>"
    record = {"job_id": "b" * 12, "status": "completed", "resume_from": "a" * 12}
    assert link in header_html(record)
    adapter = header_html({**record, "started_from": "adapter"})
    assert f"continued from job {link}'s adapter (no checkpoint kept: fresh optimizer)" in adapter
    checkpoint = header_html({**record, "started_from": "checkpoint-40"})
    assert f"{link}: resumed from checkpoint-40" in checkpoint and "adapter'" not in checkpoint
    assert "<b>" not in header_html({**record, "started_from": "<b>checkpoint-4"})
    retried = header_html({"job_id": "b" * 12, "status": "failed", "retry_of": "a" * 12})
    assert f"<th style='text-align:left'>retry of</th><td style='text-align:left'>{link}" in retried
    for field in ("resume_from", "retry_of"):
        assert "href" not in header_html({"status": "completed", field: "<script>x"})
        assert "href" not in header_html({"status": "completed", field: "../../etc/x"})


@pytest.mark.slow
@redis_only  # the store contract runs on both backends in test_jobs.py
def test_a_job_continues_from_a_past_jobs_checkpoint_and_a_cancelled_one_is_retried(
    client, start_worker, tiny_model, tmp_path
):
    start_worker()
    common = dict(base_model=str(tiny_model), batch_size=2, max_seq_length=128, save_steps=2)
    first = client.submit(EXAMPLE_DATA, max_steps=4, **common)
    assert first.wait(timeout=300, progress=False)["status"] == "completed"
    other = tmp_path / "other.jsonl"
    other.write_text("".join(EXAMPLE_DATA.read_text().splitlines(keepends=True)[:40]))
    more = client.submit(other, max_steps=6, resume_from=first, **common)
    final = more.wait(timeout=300, progress=False)
    assert final["status"] == "completed", final["error"]
    assert final["resume_from"] == first.id and final["dataset"]["rows"] == 40
    assert final["started_from"] == "checkpoint-4" and final["retry_of"] is None
    assert [m["step"] for m in more.metrics()] == [1, 2, 3, 4, 5, 6]
    assert any(f"continuing job {first.id} from its checkpoint-4" in x for x in more.logs(200))
    assert f'../{first.id}/report.html">{first.id}</a>: resumed from checkpoint-4' in (
        more.report_html()
    )

    long = client.submit(EXAMPLE_DATA, max_steps=100_000, **common)
    wait_for(
        lambda: any("checkpoint-2 saved" in line for line in long.logs(200)), 300, "a checkpoint"
    )
    long.cancel()
    wait_for(lambda: long.status()["status"] == "cancelled", 120, "the cancel")
    retried = long.retry()
    assert retried.status()["resume_from"] == retried.status()["retry_of"] == long.id
    assert retried.status()["config"] == long.status()["config"]
    wait_for(
        lambda: any(f"continuing job {long.id} from its checkpoint-" in x for x in retried.logs()),
        300,
        "the retry to start from the checkpoint",
    )
    retried.cancel()
    wait_for(lambda: retried.status()["status"] == "cancelled", 120, "the retry's cancel")
    header = retried.report_html()
    assert f'retry of</th><td style="text-align:left"><a href="../{long.id}/report.html">' in header
    assert f"{long.id}</a>: resumed from checkpoint-" in header
