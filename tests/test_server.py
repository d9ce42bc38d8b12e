"""`ftkit serve` over real HTTP: a uvicorn subprocess on a free loopback port, the same queue, job
store and storage as a notebook, a real worker for the cURL flow of the README."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from apiserver import ApiServer, serve_in_thread, start_server

from conftest import EXAMPLE_DATA, PICO, REPO, wait_for

GOOD = EXAMPLE_DATA.read_bytes()
BAD = b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n{"text": 5}\n'


@pytest.fixture
def api(settings, tmp_path):
    server = serve_in_thread(settings, tmp_path / "api")
    yield server
    server.stop()


@pytest.fixture
def api_process(settings, tmp_path):
    """`ftkit serve` itself, as a subprocess."""
    server = start_server(settings, tmp_path / "api")
    yield server
    server.stop()


def ok(response):
    status, body, _ = response
    assert status == 200, body
    return body


# -- the cURL flow -----------------------------------------------------------------------------------
def readme_block(marker: str) -> str:
    """The README's bash block under ``<!-- marker: ... -->``, as it is."""
    text = (REPO / "README.md").read_text()
    return text.split(f"<!-- {marker}:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]


def readme_curl_flow() -> str:
    """The README's cURL block from its ``URL=`` line on (the lines before start the processes
    the test starts itself), then its preference block (DPO on the flow's SFT job)."""
    block = readme_block("curl-flow")
    return block[block.index("URL=") :] + "SFT=$JOB\n" + readme_block("curl-preference")


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_the_readme_curl_flow_uploads_trains_and_downloads(
    settings, api_process, start_worker, tiny_model, tmp_path
):
    api = api_process
    start_worker()
    cwd = tmp_path / "repo"  # what `make demo` leaves: the example data and ./storage/tiny-llama
    (cwd / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLE_DATA, cwd / "examples")
    shutil.copy(REPO / "examples" / "preference_data.jsonl", cwd / "examples")
    (cwd / "storage").mkdir()
    (cwd / "storage" / "tiny-llama").symlink_to(tiny_model)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_curl_flow()],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "FTKIT_URL": api.url},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr + api.output()[-3000:]
    job_id = re.search(r"adapter-([0-9a-f]{12})\.zip", run.stdout).group(1)  # type: ignore[union-attr]
    final = json.loads(run.stdout[run.stdout.index('{\n  "status"') :].split("\n}\n")[0] + "}")
    assert final["status"] == "completed", run.stdout
    assert final["result"]["adapter_dir"] and final["result"]["training_duration_seconds"] > 0
    with zipfile.ZipFile(cwd / f"adapter-{job_id}.zip") as zf:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zf.namelist())
    tried = json.loads(run.stdout[run.stdout.index('{\n  "base"') :].split("\n}\n")[0] + "}")
    assert set(tried) == {"base", "tuned", "settings"} and tried["settings"]["sampling"] == "greedy"
    # The server is a view over the same records a notebook reads: no second source of truth.
    from ftkit.client import Client

    status = Client(settings).get_job(job_id).status()
    # ...whose storage paths reach HTTP clients without the server's folder
    seen = json.loads(json.dumps(status["result"]).replace(str(settings.storage), "<storage>"))
    assert status["status"] == "completed" and seen == final["result"]
    assert str(settings.storage) not in json.dumps(final)
    metrics = ok(api.request("GET", f"/metrics/{job_id}"))["metrics"]
    assert len(metrics) >= 5 and all(m["loss"] > 0 for m in metrics if m.get("loss") is not None)
    assert ok(api.request("GET", f"/logs/{job_id}"))["lines"]
    report = ok(api.request("GET", f"/report/{job_id}"))
    assert b"<html" in report.lower() and job_id.encode() in report
    health = ok(api.request("GET", "/health"))
    assert health["status"] == "healthy" and health["workers"] == health["celery_workers"] == 1

    # The preference block: DPO on the pairs, continuing the SFT job, its rewards printed last.
    dpo = next(j for j in Client(settings).jobs() if j.get("resume_from") == job_id)
    assert dpo["status"] == "completed", dpo.get("error")
    assert dpo["config"]["method"] == "dpo" and dpo["started_from"] == "adapter"
    last = json.loads(run.stdout[run.stdout.rindex('{\n  "step"') :])
    assert last["step"] == 10 and {"loss", "rewards/margins", "rewards/accuracies"} <= set(last)


# -- upload, reservation, train ------------------------------------------------------------------------
def test_upload_reserves_the_job_id_that_train_then_uses(api, client):
    up = ok(api.upload("train.jsonl", GOOD))
    assert up["status"] == "success" and up["filename"] == "train.jsonl"
    assert (
        up["rows"] == 120 and up["format"] == "chat" and re.fullmatch(r"[0-9a-f]{12}", up["job_id"])
    )
    assert api.request("GET", f"/status/{up['job_id']}")[0] == 404  # reserved, not yet a job
    train = ok(
        api.request(
            "POST",
            "/train",
            {"dataset_filename": "train.jsonl", "job_id": up["job_id"], "config": {"max_steps": 3}},
        )
    )
    assert train["job_id"] == up["job_id"] and train["status"] == "queued"
    status = ok(api.request("GET", f"/status/{up['job_id']}"))
    assert status["status"] == "queued" and status["total_steps"] == 3
    assert status["dataset"]["id"] == up["dataset_id"]
    assert client.get_job(up["job_id"]).status()["config"]["max_steps"] == 3  # the same record
    # The reserved id is used once; an id no upload issued is refused, naming the field.
    again = api.request("POST", "/train", {"job_id": up["job_id"], "config": {}})
    assert again[0] == 409 and "exists" in again[1]["detail"]
    made_up = api.request(
        "POST", "/train", {"dataset_id": up["dataset_id"], "job_id": "0123456789ab"}
    )
    assert made_up[0] == 422 and made_up[1]["detail"][0]["loc"] == ["body", "job_id"]
    # Without a job id: a new one, the data set found by its id.
    fresh = ok(api.request("POST", "/train", {"dataset_id": up["dataset_id"][:12]}))
    assert fresh["job_id"] != up["job_id"]
    assert client.count_jobs() == 2


def test_a_reserved_id_belongs_to_its_data_set(api):
    first = ok(api.upload("a.jsonl", GOOD))
    ok(api.upload("b.jsonl", b'{"text": "another data set"}\n'))
    wrong = api.request(
        "POST", "/train", {"dataset_filename": "b.jsonl", "job_id": first["job_id"]}
    )
    assert wrong[0] == 422 and "reserved for data set a.jsonl" in wrong[1]["detail"][0]["msg"]


def test_the_client_file_name_is_never_a_path(api, settings):
    up = ok(api.upload("../../etc/evil.jsonl", GOOD))
    assert up["filename"] == "evil.jsonl"
    stored = sorted(p.name for p in Path(settings.storage).rglob("*.jsonl"))
    assert stored == ["evil.jsonl"]
    assert not list(Path(settings.storage).parent.glob("etc"))
    # The one name that would overwrite the data with its metadata is refused.
    status, body, _ = api.upload("dataset.json", GOOD)
    assert status == 422 and "rename the file" in body["detail"][0]["msg"]


# -- every error code ------------------------------------------------------------------------------
def test_bad_data_is_a_422_with_line_numbered_problems(api, settings):
    status, body, _ = api.upload("bad.jsonl", BAD)
    assert status == 422
    lines = {d["loc"][2] for d in body["detail"] if len(d["loc"]) > 2}
    assert {2, 3} <= lines, body
    assert any("line 2" in d["msg"] and "Fix:" in d["msg"] for d in body["detail"])
    assert not (Path(settings.storage) / "datasets").exists()  # nothing stored


@pytest.mark.parametrize(
    "config, field",
    [
        ({"lora_r": 0}, "lora_r"),
        ({"learning_rate": 5}, "learning_rate"),
        ({"lerning_rate": 0.1}, "lerning_rate"),
        ({"batch_size": "2"}, "batch_size"),  # a string is not a number
    ],
)
def test_an_invalid_config_is_a_422_naming_the_field(api, config, field):
    ok(api.upload("train.jsonl", GOOD))
    status, body, _ = api.request(
        "POST", "/train", {"dataset_filename": "train.jsonl", "config": config}
    )
    assert status == 422, body
    assert body["detail"][0]["loc"][:3] == ["body", "config", field], body
    if field == "lerning_rate":
        assert "did you mean 'learning_rate'" in body["detail"][0]["msg"]


# -- preference tuning: the method and its settings in `config`, its metrics on the page -------------
PAIRS = b"".join(
    json.dumps(
        {"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}
    ).encode()
    + b"\n"
    for i in range(16)
)


def test_train_takes_a_preference_method_and_its_settings_in_config(api, client):
    properties = ok(api.request("GET", "/openapi.json"))["components"]["schemas"]["TrainConfigIn"]
    assert {"method", "beta", "dpo_loss_type", "kto_desirable_weight",
            "kto_undesirable_weight"} <= set(properties["properties"])  # fmt: skip
    described = properties["properties"]["dpo_loss_type"]["description"]
    assert described == (
        "TrainConfig.dpo_loss_type: one of sigmoid, ipo, hinge, robust "
        "(method dpo only; unset: TRL's default)"
    )
    up = ok(api.upload("pairs.jsonl", PAIRS))
    config = {"method": "dpo", "beta": 0.1, "dpo_loss_type": "ipo", "max_steps": 3}
    ok(api.request("POST", "/train", {"job_id": up["job_id"], "config": config}))
    status = ok(api.request("GET", f"/status/{up['job_id']}"))
    assert {k: status["config"][k] for k in config} == config
    assert status["config"]["kto_desirable_weight"] is None  # TRL's default, unset
    assert client.get_job(up["job_id"]).status()["config"]["method"] == "dpo"  # the same record


NOT_SFT = "TrainConfig.beta=0.1: applies to method='dpo' or 'orpo' or 'kto', not method='sft'"


@pytest.mark.parametrize(
    "config, field, words",
    [
        ({"beta": 0.1}, "beta", NOT_SFT),
        ({"method": "orpo", "dpo_loss_type": "ipo"}, "dpo_loss_type",
         "applies to method='dpo', not method='orpo'"),
        ({"method": "dpo", "kto_desirable_weight": 1.5}, "kto_desirable_weight",
         "applies to method='kto', not method='dpo'"),
        ({"method": "kto", "beta": 0}, "beta", "must be a number > 0"),
        ({"method": "ppo"}, "method", "must be one of sft, dpo, orpo, kto"),
        ({"method": "dpo", "beta": "0.1"}, "beta", "number"),  # strict: a string is no number
    ],
)  # fmt: skip
def test_a_setting_the_method_does_not_take_is_a_422_naming_the_method_and_the_field(
    api, client, config, field, words
):
    ok(api.upload("train.jsonl", GOOD))
    status, body, _ = api.request(
        "POST", "/train", {"dataset_filename": "train.jsonl", "config": config}
    )
    assert status == 422, body
    assert body["detail"][0]["loc"][:3] == ["body", "config", field], body
    assert words in body["detail"][0]["msg"], body
    assert client.count_jobs() == 0


def test_the_page_shows_a_jobs_method_and_a_preference_jobs_margins(api, client):
    ok(api.upload("train.jsonl", GOOD))
    sft = ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl"}))["job_id"]
    dpo = "0123456789ab"  # a preference job as its worker leaves it: TRL's metric names
    client.store.create(
        {"job_id": dpo, "status": "queued", "created_at": time.time(), "progress": 0.0,
         "config": {"base_model": "m", "method": "dpo", "beta": 0.1},
         "dataset": {"name": "pairs.jsonl"}, "attempt": 1}
    )  # fmt: skip
    client.store.add_metrics(
        dpo,
        [{"step": s, "loss": 0.69 - s / 100, "rewards/margins": s / 10,
          "rewards/accuracies": 0.5 + s / 20} for s in range(1, 6)],
    )  # fmt: skip
    client.store.transition(dpo, "completed", current_step=5, loss=0.64)
    page = ok(api.request("GET", f"/ui/job/{dpo}")).decode()
    assert "method <b class='method'>dpo</b>" in page
    assert "<p class='preference'>margin 0.500 · accuracy 0.750</p>" in page
    margins = page.split("class='ftkit-rewards-margins'")[1].split("points='")[1].split("'")[0]
    assert len(margins.split()) == 5  # one point per logged step, beside the loss curve
    page = ok(api.request("GET", f"/ui/job/{sft}")).decode()
    assert "method <b class='method'>sft</b>" in page and "class='preference'" not in page
    dashboard = ok(api.request("GET", "/")).decode()
    assert "<th style='text-align:left;padding:2px 8px'>method</th>" in dashboard
    assert "<td style='padding:2px 8px'>dpo</td>" in dashboard
    metrics = ok(api.request("GET", f"/metrics/{dpo}"))["metrics"]
    assert metrics[-1]["rewards/margins"] == 0.5 and metrics[-1]["rewards/accuracies"] == 0.75
    hostile = "<img src=x onerror=alert(1)>"  # a record is written by anyone with the queue's URL
    client.store.update(dpo, config={"base_model": "m", "method": hostile})
    assert "<img" not in ok(api.request("GET", f"/ui/job/{dpo}")).decode()
    assert "<img" not in ok(api.request("GET", "/")).decode()


def test_errors_map_to_status_codes(api):
    up = ok(api.upload("train.jsonl", GOOD))
    queued = ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl"}))["job_id"]
    cases = [
        (("POST", "/train", {"dataset_filename": "nope.jsonl"}), 404),
        (("POST", "/train", {"dataset_id": "0" * 64}), 404),
        (("POST", "/train", {"config": {}}), 422),  # no data set named
        (("POST", "/train", {"dataset_filename": "train.jsonl", "bogus": 1}), 422),
        (("GET", "/status/0123456789ab", None), 404),
        (("GET", "/status/NOT-AN-ID", None), 422),
        (("GET", "/metrics/0123456789ab", None), 404),
        (("GET", "/logs/0123456789ab", None), 404),
        (("GET", "/report/0123456789ab", None), 404),
        (("GET", f"/report/{queued}", None), 404),  # no report yet
        (("GET", "/download/0123456789ab", None), 404),
        (("GET", f"/download/{queued}", None), 409),  # no adapter yet
        (("DELETE", "/job/0123456789ab", None), 404),
        (("GET", "/jobs?status=bogus", None), 422),
        (("GET", "/jobs?limit=0", None), 422),
    ]
    for (method, path, body), expected in cases:
        status, got, _ = api.request(method, path, body)
        assert status == expected, (method, path, status, got)
        assert got["detail"], got
    assert (
        api.request("POST", "/upload", data=b"x", headers={"Content-Type": "text/plain"})[0] == 422
    )
    assert up["dataset_id"]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_generate_refuses_bad_settings_and_a_job_that_is_not_completed(api):
    ok(api.upload("train.jsonl", GOOD))
    queued = ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl"}))["job_id"]
    path = f"/jobs/{queued}/generate"
    status, body, _ = api.request("POST", path, {"prompt": "Who are you?"})
    assert status == 409 and f"job {queued} is queued: only a completed job" in body["detail"]
    assert api.request("POST", "/jobs/0123456789ab/generate", {"prompt": "hi"})[0] == 404
    for sent, field in [
        ({"prompt": "hi", "temperature": 2.5}, "temperature"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": 100_000}, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": "64"}, "max_new_tokens"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 8001}, "prompt"),
        ({"prompt": "hi", "top_k": 5}, "top_k"),
    ]:
        status, body, _ = api.request("POST", path, sent)
        assert status == 422 and body["detail"][0]["loc"] == ["body", field], (sent, body)
    status, body = raw_post(api, path, '{"prompt": "hi", "temperature": NaN}')
    assert status == 422 and body["detail"][0]["loc"] == ["body", "temperature"]


@pytest.mark.slow
def test_generate_answers_as_base_and_tuned_on_the_server_with_its_model_kept(pico_job, tmp_path):
    """The demo's job over HTTP, behind the token like every route: the tuned model answers what
    it was taught, the base model (the same model, adapter off) does not; one model stays loaded
    and concurrent requests take turns."""
    from concurrent.futures import ThreadPoolExecutor

    settings, job_id = pico_job
    server = serve_in_thread(settings, tmp_path / "api", token="chat-token")
    try:
        path, ask = f"/jobs/{job_id}/generate", {"prompt": "Who are you?", "max_new_tokens": 40}
        assert server.request("POST", path, ask, auth=False)[0] == 401
        got = ok(server.request("POST", path, ask, timeout=300))
        assert got["tuned"] == PICO and PICO not in got["base"], got
        assert got["rendered_prompt"] == (
            "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
        )
        assert got["settings"] == {"temperature": 0.0, "max_new_tokens": 40, "sampling": "greedy",
                                   "system": None, "device": got["settings"]["device"]}  # fmt: skip
        held = server.uvicorn_server.config.app.state.loaded_model
        assert held.job_id == job_id and held.model is not None  # kept for the next prompt
        loaded = held.model
        with ThreadPoolExecutor(3) as pool:  # greedy: the same answers, each request in turn
            again = list(pool.map(lambda _: ok(server.request("POST", path, ask)), range(3)))
        assert all((a["base"], a["tuned"]) == (got["base"], got["tuned"]) for a in again)
        assert held.model is loaded  # not loaded again
        sampled = ok(
            server.request("POST", path, {**ask, "temperature": 0.9, "system": "Be brief."})
        )
        assert sampled["settings"]["sampling"] == "sampled"
        assert sampled["rendered_prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>")
        status, body, _ = server.request("POST", path, {"prompt": "Who are you? " * 600})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "prompt"], body
        assert "context of 2048 tokens" in body["detail"][0]["msg"]
        held.wait_seconds = 0.5  # a prompt kept waiting (the model busy) is told to come back
        with held.lock:
            status, body, headers = server.request("POST", path, ask)
        assert status == 503 and "busy" in body["detail"] and headers["retry-after"] == "10"
        assert ok(server.request("POST", path, ask))["tuned"] == PICO
    finally:
        server.stop()


def test_jobs_are_listed_filtered_paginated_and_cancelled(api):
    ok(api.upload("train.jsonl", GOOD))
    ids = [
        ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl"}))["job_id"]
        for _ in range(3)
    ]
    page1 = ok(api.request("GET", "/jobs?limit=2"))
    page2 = ok(api.request("GET", "/jobs?limit=2&offset=2"))
    assert page1["total"] == 3 and [j["job_id"] for j in page1["jobs"] + page2["jobs"]] == ids[::-1]
    cancelled = ok(api.request("DELETE", f"/job/{ids[0]}"))
    assert cancelled == {"job_id": ids[0], "status": "cancelled", "message": "cancelled"}
    only = ok(api.request("GET", "/jobs?status=cancelled"))
    assert [j["job_id"] for j in only["jobs"]] == [ids[0]] and only["total"] == 1
    assert ok(api.request("GET", "/jobs?status=queued"))["total"] == 2
    assert ok(api.request("DELETE", f"/job/{ids[0]}"))["status"] == "cancelled"  # idempotent


def test_health_docs_and_schema(api):
    health = ok(api.request("GET", "/health"))
    assert health == {
        "status": "degraded",  # no worker
        "broker": health["broker"],
        "redis_connected": True,
        "workers": 0,
        "celery_workers": 0,
        "queue_depth": 0,
        "waiting_jobs": [],  # queued jobs no live worker can run: test_devices
    }
    schema = ok(api.request("GET", "/openapi.json"))
    assert {"/upload", "/train", "/status/{job_id}", "/jobs", "/job/{job_id}", "/download/{job_id}",
            "/report/{job_id}", "/metrics/{job_id}", "/logs/{job_id}", "/health", "/retry/{job_id}",
            "/delete/{job_id}", "/sweep", "/sweeps", "/sweep/{sweep_id}",
            "/dataset/{dataset_id}", "/jobs/{job_id}/generate"} == set(schema["paths"])  # fmt: skip
    docs = ok(api.request("GET", "/docs"))
    assert b"swagger-ui" in docs


# -- runs people manage: tags and notes, logs by cursor, retry, delete, sweeps ------------------------
def ids(reply) -> list[str]:
    return [j["job_id"] for j in ok(reply)["jobs"]]


def test_train_takes_tags_a_note_attempts_and_an_idempotency_key(api, client):
    ok(api.upload("train.jsonl", GOOD))
    body = {"dataset_filename": "train.jsonl", "tags": ["baseline", "lr-1e-4"], "note": "first <try>",
            "max_attempts": 2, "idempotency_key": "ci-run-41", "config": {"max_steps": 3}}  # fmt: skip
    first = ok(api.request("POST", "/train", body))
    again = ok(api.request("POST", "/train", body))  # a retried request: the same job, once
    assert again["job_id"] == first["job_id"] and client.count_jobs() == 1
    assert "queued:" in first["message"] and "submitted before" in again["message"]
    job = first["job_id"]
    status = ok(api.request("GET", f"/status/{job}"))
    assert (status["tags"], status["note"]) == (["baseline", "lr-1e-4"], "first <try>")
    assert status["max_attempts"] == 2 and status["config"]["max_steps"] == 3
    assert status["resume_from"] is None and "idempotency_key" not in status
    other = ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl", "tags": ["x"]}))

    # The per-tag index, alone or with a status; a tag's total is not counted.
    by_tag = ok(api.request("GET", "/jobs?tag=baseline"))
    assert [j["job_id"] for j in by_tag["jobs"]] == [job] and by_tag["total"] is None
    assert ids(api.request("GET", "/jobs?tag=baseline&status=cancelled")) == []
    ok(api.request("DELETE", f"/job/{job}"))
    assert ids(api.request("GET", "/jobs?tag=baseline&status=cancelled")) == [job]
    assert ids(api.request("GET", "/jobs?tag=x&status=queued")) == [other["job_id"]]
    status, got, _ = api.request("GET", "/jobs?tag=no%20spaces")
    assert status == 422 and got["detail"][0]["loc"] == ["query", "tag"], got

    # The same checks as submit: a 422 naming the field, and nothing queued.
    for extra, field, words in [
        ({"tags": "baseline"}, "tags", "valid list"),
        ({"tags": ["no spaces"]}, "tags", "a tag is 1-64"),
        ({"tags": [f"t{i}" for i in range(21)]}, "tags", "at most 20"),
        ({"note": "x" * 5000}, "note", "at most 4000"),
        ({"max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"max_attempts": "2"}, "max_attempts", "integer"),
        ({"resume_from": "nope"}, "resume_from", "pattern"),
        ({"resume_from": "0123456789ab"}, "resume_from", "no job 0123456789ab"),
        ({"resume_from": other["job_id"]}, "resume_from", "kept no checkpoint"),
        ({"idempotency_key": ""}, "idempotency_key", "at least 1 character"),
    ]:
        status, got, _ = api.request("POST", "/train", {"dataset_filename": "train.jsonl", **extra})
        assert status == 422, (extra, got)
        assert got["detail"][0]["loc"][:2] == ["body", field], (extra, got)
        assert words in got["detail"][0]["msg"], (extra, got)
    assert client.count_jobs() == 2


def test_a_garbled_record_reads_with_those_fields_unset(api, client):
    """Records are written by anyone with the queue's URL: a field of the wrong shape is not a 500."""
    ok(api.upload("train.jsonl", GOOD))
    job = ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl"}))["job_id"]
    client.store.update(job, tags="x", note=5, max_attempts="many", config=[1], resume_from=7)
    status = ok(api.request("GET", f"/status/{job}"))
    assert (status["tags"], status["note"], status["max_attempts"]) == ([], None, None)
    assert status["config"] is None and status["resume_from"] is None
    assert ids(api.request("GET", "/jobs")) == [job]


def test_a_script_reads_logs_by_cursor_each_line_once(api, client):
    ok(api.upload("train.jsonl", GOOD))
    job = ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl"}))["job_id"]
    client.store.add_logs(job, ["one", "two"])
    first = ok(api.request("GET", f"/logs/{job}?cursor=0"))
    assert first["lines"] == ["one", "two"] and first["status"] == "queued"
    assert first["ended"] is False
    quiet = ok(api.request("GET", f"/logs/{job}?cursor={first['cursor']}"))
    assert quiet["lines"] == [] and quiet["cursor"] == first["cursor"] and not quiet["ended"]
    client.store.add_logs(job, ["three"])
    new = ok(api.request("GET", f"/logs/{job}?cursor={first['cursor']}"))
    assert new["lines"] == ["three"]
    # Without a cursor: the tail, and the cursor to follow on from it.
    tail = ok(api.request("GET", f"/logs/{job}?n=2"))
    assert tail["lines"] == ["two", "three"] and tail["cursor"] == new["cursor"]

    ok(api.request("DELETE", f"/job/{job}"))  # its final event follows the final status
    last = ok(api.request("GET", f"/logs/{job}?cursor={new['cursor']}"))
    assert last["status"] == "cancelled" and "cancelled while queued" in last["lines"][-1]
    assert not last["ended"]  # lines came: ask again
    end = ok(api.request("GET", f"/logs/{job}?cursor={last['cursor']}"))
    assert end == {"job_id": job, "lines": [], "cursor": last["cursor"], "status": "cancelled",
                   "ended": True}  # fmt: skip
    for path, code in [
        ("/logs/0123456789ab?cursor=0", 404),
        (f"/logs/{job}?cursor=-1", 422),
        (f"/logs/{job}?cursor=x", 422),
    ]:
        assert api.request("GET", path)[0] == code, path


def test_retry_makes_a_new_job_and_delete_removes_one_for_good(api, client):
    ok(api.upload("train.jsonl", GOOD))
    body = {"dataset_filename": "train.jsonl", "tags": ["keep"], "note": "n",
            "config": {"max_steps": 4, "lora_r": 4}}  # fmt: skip
    job = ok(api.request("POST", "/train", body))["job_id"]
    status, got, _ = api.request("POST", f"/retry/{job}")
    assert status == 409 and "queued: only a failed or cancelled job is retried" in got["detail"]
    status, got, _ = api.request("POST", f"/delete/{job}")  # queued: refused without force
    assert status == 409 and "force" in got["detail"], got
    assert ok(api.request("GET", f"/status/{job}"))["status"] == "queued"  # refused: untouched

    ok(api.request("DELETE", f"/job/{job}"))  # cancels, as before
    retry = ok(api.request("POST", f"/retry/{job}"))
    assert retry["retry_of"] == job and retry["job_id"] != job and retry["status"] == "queued"
    assert retry["resume_from"] is None and "from step 1" in retry["message"]
    again = ok(api.request("GET", f"/status/{retry['job_id']}"))
    before = ok(api.request("GET", f"/status/{job}"))
    assert (again["tags"], again["note"], again["config"]) == (["keep"], "n", before["config"])

    gone = ok(api.request("POST", f"/delete/{retry['job_id']}?force=true"))  # cancels it first
    assert gone["status"] == "cancelled" and gone["tags"] == ["keep"]
    gone = ok(api.request("POST", f"/delete/{job}"))
    assert gone == {"job_id": job, "status": "cancelled", "finished_at": gone["finished_at"],
                    "tags": ["keep"], "bytes": 0}  # fmt: skip
    assert client.jobs() == [] and ok(api.request("GET", "/jobs?tag=keep"))["jobs"] == []
    for method, path, code in [
        ("GET", f"/status/{job}", 404),
        ("POST", f"/delete/{job}", 404),
        ("POST", f"/retry/{job}", 404),
        ("POST", "/retry/0123456789ab", 404),
        ("POST", "/delete/NOT-AN-ID", 422),
        ("POST", "/delete/0123456789ab?force=maybe", 422),
    ]:
        assert api.request(method, path)[0] == code, (method, path)


def sweep_values(reply) -> list[dict]:
    return [run["values"] for run in ok(reply)["runs"]]


def test_a_sweep_is_queued_listed_shown_and_cancelled_over_http(api, client):
    ok(api.upload("train.jsonl", GOOD))
    body = {"dataset_filename": "train.jsonl", "values": {"learning_rate": [1e-4, 2e-4],
            "lora_r": [8, 16]}, "config": {"max_steps": 3}, "tags": ["grid-a"], "note": "lr x r"}  # fmt: skip
    made = ok(api.request("POST", "/sweep", body))
    sweep = made["sweep_id"]
    assert [r["values"] for r in made["runs"]] == [
        {"learning_rate": lr, "lora_r": r} for lr in (1e-4, 2e-4) for r in (8, 16)
    ]
    assert made["swept"] == ["learning_rate", "lora_r"] and f"sweep:{sweep}" in made["message"]
    runs = ok(api.request("GET", f"/jobs?tag=sweep:{sweep}"))["jobs"]
    assert sorted(j["job_id"] for j in runs) == sorted(r["job_id"] for r in made["runs"])
    assert all(j["tags"] == ["grid-a", f"sweep:{sweep}"] and j["note"] == "lr x r" for j in runs)
    assert {(j["config"]["learning_rate"], j["config"]["lora_r"]) for j in runs} == {
        (lr, r) for lr in (1e-4, 2e-4) for r in (8, 16)
    }

    seeded = {"dataset_filename": "train.jsonl", "mode": "random", "n": 3, "sample_seed": 7,
              "ranges": {"learning_rate": [1e-5, 1e-3]}, "values": {"lora_r": [8, 16]}}  # fmt: skip
    drawn = sweep_values(api.request("POST", "/sweep", seeded))
    assert drawn == sweep_values(api.request("POST", "/sweep", seeded))  # the same draw again
    assert all(1e-5 <= d["learning_rate"] <= 1e-3 and d["lora_r"] in (8, 16) for d in drawn)

    listed = ok(api.request("GET", "/sweeps"))["sweeps"]
    assert len(listed) == 3 and listed[-1]["sweep_id"] == sweep
    assert listed[-1] == {"sweep_id": sweep, "created_at": listed[-1]["created_at"],
                          "mode": "grid", "swept": ["learning_rate", "lora_r"], "runs": 4,
                          "dataset": "train.jsonl", "tags": ["grid-a"], "note": "lr x r"}  # fmt: skip
    assert [s["sweep_id"] for s in ok(api.request("GET", "/sweeps?tag=grid-a"))["sweeps"]] == [
        sweep
    ]
    assert ok(api.request("GET", "/sweeps?tag=nothing"))["sweeps"] == []
    assert api.request("GET", "/sweeps?tag=a%20b")[0] == 422

    detail = ok(api.request("GET", f"/sweep/{sweep}"))
    assert detail["config"]["max_steps"] == 3 and "learning_rate" not in detail["config"]
    assert [(r["job_id"], r["values"], r["status"]) for r in detail["run_table"]] == [
        (r["job_id"], r["values"], "queued") for r in made["runs"]
    ]
    assert detail["best"] is None and detail["title"].startswith(f"sweep {sweep}: grid")

    cancelled = ok(api.request("DELETE", f"/sweep/{sweep}"))
    assert set(cancelled["runs"].values()) == {"cancelled"} and "4 of 4" in cancelled["message"]
    assert {r["status"] for r in ok(api.request("GET", f"/sweep/{sweep}"))["run_table"]} == {
        "cancelled"
    }
    assert "0 of 4" in ok(api.request("DELETE", f"/sweep/{sweep}"))["message"]
    for method, path, code in [
        ("GET", "/sweep/0123456789ab", 404),
        ("DELETE", "/sweep/0123456789ab", 404),
        ("GET", "/sweep/not-an-id", 422),
    ]:
        assert api.request(method, path)[0] == code, (method, path)


@pytest.mark.parametrize(
    "extra, loc, words",
    [
        ({"values": {"batch_size": [2, 0]}}, ["values", "batch_size"], "run 2 of 2"),
        ({"values": {"lerning_rate": [1e-4]}}, ["values", "lerning_rate"], "'learning_rate'"),
        ({"ranges": {"learning_rate": [1e-5, 1e-3]}}, ["ranges", "learning_rate"], "random"),
        ({"mode": "random", "values": {"lora_r": [8, 16]}}, ["n"], "number of runs"),
        ({"values": {}}, [], "at least one field with several values"),
        ({"values": {"lora_r": [8, 16]}, "config": {"lora_r": 4}}, ["values", "lora_r"], "fixed"),
        ({"values": {"lora_r": [8]}, "ranges": {"lora_r": [8, 9]}}, ["values", "lora_r"],
         "in values and in ranges"),
        ({"values": {"lora_r": [8, 16]}, "tags": ["a b"]}, ["tags"], "a tag is"),
        ({"values": {"lora_r": [8, 16]}, "config": {"batch_size": "2"}}, ["config", "batch_size"],
         "integer"),
        ({"mode": "random", "n": 2, "ranges": {"lora_r": [8.5, 16]}}, ["ranges", "lora_r"],
         "two whole numbers"),
        ({"values": {"lora_r": [8, 16]}, "mode": "grid", "n": 2}, ["n"], "mode='random'"),
        ({"values": {"lora_r": [8, 16]}, "max_attempts": 0}, ["max_attempts"], "1"),
        ({"values": {"lora_r": [8, 16]}, "dataset_filename": None}, ["dataset_filename"],
         "name the data set"),
    ],
)  # fmt: skip
def test_a_bad_sweep_is_a_422_naming_the_field_and_queues_nothing(api, client, extra, loc, words):
    ok(api.upload("train.jsonl", GOOD))
    body = {"dataset_filename": "train.jsonl", **extra}
    status, got, _ = api.request("POST", "/sweep", body)
    assert status == 422, got
    assert got["detail"][0]["loc"] == ["body", *loc], got
    assert words in got["detail"][0]["msg"], got
    assert client.count_jobs() == 0 and ok(api.request("GET", "/sweeps"))["sweeps"] == []


def test_the_dashboard_filters_jobs_by_tag_lists_sweeps_and_escapes_records(api, client):
    ok(api.upload("train.jsonl", GOOD))
    train = {"dataset_filename": "train.jsonl"}
    tagged = ok(api.request("POST", "/train", {**train, "tags": ["baseline"]}))["job_id"]
    other = ok(api.request("POST", "/train", {**train, "tags": ["other"]}))["job_id"]
    body = {**train, "values": {"lora_r": [8, 16]}, "tags": ["grid-a"], "note": "<b>r</b>"}
    sweep = ok(api.request("POST", "/sweep", body))
    runs = [r["job_id"] for r in sweep["runs"]]
    # Records are written by anyone with the queue's URL: what they hold is shown, never run.
    hostile = "<img src=x onerror=alert(1)>"
    client.store.update(other, note=hostile, tags=["other", hostile])
    client.store.create_sweep({"sweep_id": "0123456789ab", "created_at": time.time(),
                               "mode": hostile, "swept": {"lora_r": {"values": [8]}},
                               "dataset": {"name": hostile}, "tags": ["ok", hostile],
                               "note": hostile, "runs": [{"job_id": other, "values": {}}]})  # fmt: skip

    page = ok(api.request("GET", "/")).decode()
    assert all(job in page for job in (tagged, other, *runs))
    assert sweep["sweep_id"] in page and "0123456789ab" in page  # the recent sweeps
    assert "<img" not in page  # escaped: text, not markup
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;r&lt;/b&gt;" in page

    page = ok(api.request("GET", "/?tag=baseline")).decode()
    assert tagged in page and not any(job in page for job in (other, *runs))
    assert "tagged <b class='tag-shown'>baseline</b>" in page and "value='baseline'" in page
    assert "no sweeps tagged baseline" in page
    # A sweep's id links to its runs: the jobs tagged sweep:<id>.
    link = f"/?tag=sweep%3A{sweep['sweep_id']}"
    assert f"href='{link}'" in ok(api.request("GET", "/")).decode()
    page = ok(api.request("GET", link)).decode()
    assert all(job in page for job in runs) and tagged not in page and other not in page
    page = ok(api.request("GET", "/?tag=grid-a&status=queued")).decode()
    assert sweep["sweep_id"] in page and "0123456789ab" not in page
    assert "name='status' value='queued'" in page  # the form keeps the status filter
    # A job's page shows its tags (as links to the filter) and its note, escaped.
    page = ok(api.request("GET", f"/ui/job/{other}")).decode()
    assert (
        "<img" not in page
        and f"class='note'>{hostile.replace('<', '&lt;').replace('>', '&gt;')}" in page
    )
    assert "href='/?tag=other'" in page
    # Not a tag: said so, and every job shown.
    page = ok(api.request("GET", "/?tag=%3Cx%3E%20y")).decode()
    assert "&lt;x&gt; y is not a tag" in page and tagged in page and other in page


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_script_follows_deletes_and_sweeps_real_jobs_over_http(
    settings, api, client, start_worker, tiny_model
):
    start_worker()
    ok(api.upload("train.jsonl", GOOD))
    common = {"base_model": str(tiny_model), "batch_size": 2, "max_seq_length": 128}
    train = {"dataset_filename": "train.jsonl", "config": {**common, "max_steps": 2}}
    job = ok(api.request("POST", "/train", train))["job_id"]

    # The README's follow loop: each reply's cursor back, until a reply says ended.
    replies, lines, cursor = [], [], 0
    deadline = time.monotonic() + 600
    while True:
        got = ok(api.request("GET", f"/logs/{job}?cursor={cursor}"))
        replies.append(got)
        lines += got["lines"]
        cursor = got["cursor"]
        if got["ended"]:
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.2)
    assert replies[0]["status"] not in ("completed", "failed", "cancelled")  # followed live
    assert got["status"] == "completed", lines
    assert lines == client.get_job(job).logs(500)  # every kept line, once each, in order
    assert any("picked up by worker" in line for line in lines)  # an ftkit event
    assert any(line.startswith("step 2/2") for line in lines)  # printed by a cell
    assert lines[-1].endswith("completed")  # the final event, written after the final status
    status, body, _ = api.request("POST", f"/retry/{job}")
    assert status == 409 and "completed" in body["detail"]

    # A running job's delete is refused; with force it is cancelled first, then removed.
    long = {"dataset_filename": "train.jsonl", "config": {**common, "max_steps": 100_000}}
    busy = ok(api.request("POST", "/train", long))["job_id"]
    wait_for(
        lambda: ok(api.request("GET", f"/status/{busy}"))["status"] == "training",
        300,
        "the long job to train",
    )
    status, body, _ = api.request("POST", f"/delete/{busy}")
    assert status == 409 and "is training" in body["detail"] and "force" in body["detail"]
    assert ok(api.request("GET", f"/status/{busy}"))["status"] == "training"
    gone = ok(api.request("POST", f"/delete/{busy}?force=true", timeout=300))
    assert gone["status"] == "cancelled" and api.request("GET", f"/status/{busy}")[0] == 404

    # A two-run grid through the worker; the best run is the one compare names.
    sweep = ok(api.request("POST", "/sweep", {**train, "values": {"learning_rate": [1e-3, 3e-3]}}))
    sweep_id = sweep["sweep_id"]

    def ended() -> bool:
        table = ok(api.request("GET", f"/sweep/{sweep_id}"))["run_table"]
        return all(r["status"] in ("completed", "failed", "cancelled") for r in table)

    wait_for(ended, 600, "the sweep's runs to end")
    detail = ok(api.request("GET", f"/sweep/{sweep_id}"))
    table = detail["run_table"]
    assert [r["status"] for r in table] == ["completed", "completed"], table
    for row in table:
        status = ok(api.request("GET", f"/status/{row['job_id']}"))
        assert status["config"]["learning_rate"] == row["values"]["learning_rate"]
        assert row["step"] == row["total_steps"] == 2
        assert row["final_loss"] == status["result"]["final_loss"] is not None
    best = min(table, key=lambda r: r["final_loss"])
    assert detail["best"] == {"job_id": best["job_id"], "by": "final_loss",
                              "value": best["final_loss"]}  # fmt: skip
    from ftkit import sweeping

    assert sweeping.get(client, sweep_id).compare().best["job_id"] == best["job_id"]


# -- security and limits ---------------------------------------------------------------------------
@pytest.fixture
def locked(settings, tmp_path, monkeypatch):
    """A server with a token (from FTKIT_API_TOKEN, as `ftkit serve` reads it) and a 1 MiB upload
    limit."""
    monkeypatch.setenv("FTKIT_API_TOKEN", "s3cret-token-for-tests")
    server = serve_in_thread(settings, tmp_path / "locked", max_upload_bytes=1 << 20)
    server.token = "s3cret-token-for-tests"
    yield server
    server.stop()


def test_with_a_token_every_endpoint_needs_it(locked):
    up = ok(locked.upload("train.jsonl", GOOD))  # with the bearer token
    for method, path in [
        ("GET", "/health"), ("GET", "/jobs"), ("GET", f"/status/{up['job_id']}"),
        ("POST", "/train"), ("DELETE", f"/job/{up['job_id']}"), ("GET", f"/metrics/{up['job_id']}"),
        ("GET", f"/logs/{up['job_id']}"), ("GET", f"/report/{up['job_id']}"),
        ("GET", f"/download/{up['job_id']}"), ("GET", "/openapi.json"), ("POST", "/upload"),
        ("POST", f"/jobs/{up['job_id']}/generate"),
    ]:  # fmt: skip
        status, body, headers = locked.request(method, path, auth=False)
        assert status == 401, (method, path, status, body)
        assert headers.get("www-authenticate") == "Bearer"
        wrong = locked.request(method, path, auth=False, headers={"Authorization": "Bearer nope"})
        assert wrong[0] == 401
    assert ok(locked.request("GET", "/health"))["redis_connected"] is True
    # The page and the docs ask for the token once, then keep it in a cookie.
    status, page, _ = locked.request("GET", "/", auth=False)
    assert status == 401 and b"name='token'" in page
    assert locked.request("GET", "/docs", auth=False)[0] == 401
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert locked.request("POST", "/login", data=b"token=nope", headers=form, auth=False)[0] == 401
    cookie = login_cookie(locked)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    status, page, _ = locked.request("GET", "/", auth=False, headers=jar)
    assert status == 200 and b"live workers" in page
    assert locked.request("GET", "/jobs", auth=False, headers=jar)[0] == 200


def login_cookie(server: ApiServer) -> str:
    import http.client

    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=10)
    conn.request(
        "POST",
        "/login",
        body=f"token={server.token}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    resp = conn.getresponse()
    assert resp.status == 303, resp.read()
    return resp.getheader("set-cookie") or ""


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_without_a_token_serving_beyond_loopback_warns_loudly(settings, tmp_path):
    import sys

    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
        env={**__import__("os").environ, **settings.to_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = "".join(proc.stdout.readline() for _ in range(4))  # type: ignore[union-attr]
        assert (
            "WARNING" in first and "WITHOUT authentication" in first and "FTKIT_API_TOKEN" in first
        )
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_cors_is_off_by_default(api):
    status, _, headers = api.request(
        "OPTIONS",
        "/jobs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"},
    )
    assert status == 405 and "access-control-allow-origin" not in {k.lower() for k in headers}


def test_request_bodies_are_limited(locked, settings):
    # Declared too large: refused before a byte of the body is read (or even sent).
    status, body = declared_only(locked, "/upload", 2 << 20)
    assert status == 413 and b"limit of 1048576 bytes" in body
    # Chunked, without a length: cut off once past the limit, nothing stored.
    assert (
        chunked_upload(locked, "big.jsonl", (b'{"text": "%d"}\n' % i for i in range(200_000)))[0]
        == 413
    )
    assert not (Path(settings.storage) / "datasets").exists()
    scratch = Path(settings.scratch_dir) / "uploads"
    assert not scratch.exists() or not any(scratch.iterdir())  # the partial upload is gone
    # Any other body: 1 MiB, declared or not.
    assert declared_only(locked, "/train", (1 << 20) + 1)[0] == 413
    small = locked.request("POST", "/train", data=b"{" + b" " * 1000 + b"}",
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert small[0] == 422


def declared_only(server: ApiServer, path: str, length: int) -> tuple[int, bytes]:
    """Send only the headers of a POST declaring ``length`` bytes (Expect: 100-continue, as curl
    does for large bodies) and read the answer."""
    import http.client

    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    conn.putrequest("POST", path)
    for name, value in {
        "Content-Type": "multipart/form-data; boundary=x",
        "Content-Length": str(length),
        "Expect": "100-continue",
        "Authorization": f"Bearer {server.token}",
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, resp.read()


def chunked_upload(server: ApiServer, name: str, pieces) -> tuple[int, bytes]:
    """POST /upload with Transfer-Encoding: chunked, the body generated as it is sent."""
    import http.client

    boundary = "ftkit-chunked-3b9e"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        buf = bytearray()
        for piece in pieces:
            buf += piece
            if len(buf) >= 1 << 20:
                yield bytes(buf)
                buf.clear()
        yield bytes(buf) + f"\r\n--{boundary}--\r\n".encode()

    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=300)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if server.token:
        headers["Authorization"] = f"Bearer {server.token}"
    try:
        conn.request("POST", "/upload", body=body(), headers=headers, encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered 413 and closed while we were still sending
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_large_upload_streams_to_disk_without_sitting_in_memory(api_process, settings):
    api = api_process
    rows = 120_000  # ~105 MB of distinct chat examples
    pad = "x" * 760

    def pieces():
        for i in range(rows):
            yield (
                b'{"messages": [{"role": "user", "content": "question %d %s"}, '
                b'{"role": "assistant", "content": "answer %d"}]}\n' % (i, pad.encode(), i)
            )

    size = sum(len(p) for p in pieces())
    ok(api.upload("warm.jsonl", GOOD))  # every code path imported before we measure
    pid = api.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to now
    before = proc_kb(pid, "VmRSS")
    start = time.monotonic()
    status, body = chunked_upload(api, "large.jsonl", pieces())
    seconds = time.monotonic() - start
    assert status == 200, body
    up = json.loads(body)
    assert up["rows"] == rows and up["size_bytes"] == size
    peak_rise = proc_kb(pid, "VmHWM") - before
    print(
        f"\nupload of {size / 1e6:.0f} MB: server peak RSS rose {peak_rise / 1024:.1f} MB "
        f"({peak_rise * 1024 / size:.3f} of the size) in {seconds:.1f} s"
    )
    assert peak_rise * 1024 < size / 4  # held whole it would rise by at least the size


def proc_kb(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


# -- the schema as the contract ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_generated_requests_never_get_a_server_error(api):
    """Every operation of the served OpenAPI schema, with schemathesis' generated requests (valid
    and invalid): no 5xx. (schemathesis.pytest.from_fixture does not run under this pytest, so
    each operation's strategy runs under hypothesis here.)"""
    from schemathesis.generation import GenerationMode

    ok(api.upload("train.jsonl", GOOD))
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 18
    calls: list[str] = []
    for operation, mode in itertools.product(operations, GenerationMode):
        generated_calls(api, operation.as_strategy(mode), mode.value, calls)
    assert len(calls) >= 18 * 2 * 3, calls
    print("\n" + "\n".join(f"{n:4} x {c}" for c, n in sorted(Counter(calls).items())))


def generated_calls(api: ApiServer, strategy, mode: str, calls: list[str]) -> None:
    """Run a few generated cases of one operation; call_and_validate raises on a 5xx."""
    from schemathesis.checks import not_a_server_error

    @hypothesis.settings(
        max_examples=6,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def check(case):
        response = case.call_and_validate(base_url=api.url, checks=[not_a_server_error], timeout=30)
        calls.append(f"{case.method} {case.path} {mode} {response.status_code}")

    check()


def test_submit_takes_a_chosen_job_id_once(client):
    from ftkit.errors import ConfigError, JobExists

    ds = client.upload_dataset(EXAMPLE_DATA)
    reserved = client.reserve_job_id(ds)
    assert client.reserved_dataset(reserved) == ds
    job = client.submit(ds, job_id=reserved, max_steps=2)
    assert job.id == reserved and job.status()["status"] == "queued"
    with pytest.raises(JobExists):
        client.submit(ds, job_id=reserved, max_steps=2)
    for bad in ("ABCDEF012345", "12345", "../../etc/x", 7):
        with pytest.raises(ConfigError) as info:
            client.submit(ds, job_id=bad)
        assert info.value.field == "job_id"
    assert client.count_jobs() == 1 and client.huey.pending_count() == 1  # queued once


def test_over_s3_storage_a_data_set_is_found_by_its_file_name(redis_server, s3_server, tmp_path):
    """The reservation and the lookup by name live in storage: the same over S3 (moto)."""
    import uuid

    from ftkit.config import Settings

    redis_server.flush()
    bucket = f"ftkit-{uuid.uuid4().hex[:10]}"
    s3_server.make_bucket(bucket)
    settings = Settings.from_env(
        {},
        redis_url=redis_server.url,
        storage=f"s3://{bucket}/team",
        s3_endpoint_url=s3_server.endpoint,
        scratch_dir=str(tmp_path / "scratch"),
    )
    api = serve_in_thread(settings, tmp_path / "api")
    try:
        up = ok(api.upload("train.jsonl", GOOD))
        other = ok(api.upload("other.jsonl", b'{"text": "one"}\n'))
        body = {"dataset_filename": "train.jsonl", "job_id": up["job_id"]}
        assert ok(api.request("POST", "/train", body))["job_id"] == up["job_id"]
        fresh = ok(api.request("POST", "/train", {"dataset_filename": "other.jsonl"}))
        status = ok(api.request("GET", f"/status/{fresh['job_id']}"))
        assert status["dataset"]["id"] == other["dataset_id"]
    finally:
        api.stop()


def test_an_unreachable_broker_is_a_503(tmp_path):
    from conftest import free_port
    from ftkit.config import Settings

    settings = Settings.from_env(
        {}, redis_url=f"redis://127.0.0.1:{free_port()}/0", storage=str(tmp_path / "storage")
    )
    api = serve_in_thread(settings, tmp_path / "api")
    try:
        status, health, _ = api.request("GET", "/health")
        assert status == 503 and health["status"] == "unhealthy"
        assert health["redis_connected"] is False
        status, body, _ = api.request("GET", "/jobs")
        assert status == 503 and "cannot reach Redis" in body["detail"]
    finally:
        api.stop()


# -- the web face under attack (issue 29) ---------------------------------------------------------
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_a_forged_state_change_is_refused_and_scripts_are_not(locked):
    up = ok(locked.upload("train.jsonl", GOOD))
    job = ok(locked.request("POST", "/train", {"job_id": up["job_id"]}))["job_id"]
    session = login_cookie(locked).split(";")[0]
    own = locked.url
    cancel = f"/job/{job}"

    def by_cookie(headers: dict[str, str]) -> int:
        return locked.request("DELETE", cancel, auth=False, headers={"Cookie": session, **headers})[
            0
        ]

    # Another origin (another port of this host is the same *site*), a sandboxed frame, no browser
    # signs at all, or a wrong CSRF token: refused before anything happens.
    for headers in [
        {"Origin": "http://127.0.0.1:41777"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": own},
        {},
        {"X-CSRF-Token": "guessed"},
    ]:
        assert by_cookie(headers) == 403, headers
    assert ok(locked.request("GET", f"/status/{job}"))["status"] == "queued"
    # A forged upload is refused before its body is read: nothing stored.
    status, body, _ = locked.request(
        "POST", "/upload", data=b"--x\r\n", auth=False,
        headers={"Cookie": session, "Origin": "http://127.0.0.1:41777",
                 "Content-Type": "multipart/form-data; boundary=x"},
    )  # fmt: skip
    assert status == 403 and "cross-origin" in body["detail"]
    # Bearer clients are unaffected, whatever they send; the dashboard's own origin passes.
    assert locked.request("GET", "/jobs", headers={"Origin": "http://evil.example"})[0] == 200
    assert by_cookie({"Origin": own}) == 200
    assert by_cookie({"Sec-Fetch-Site": "same-origin"}) == 200
    # ...and so does the page's CSRF token, which the signed-in page holds.
    page = locked.request("GET", "/", auth=False, headers={"Cookie": session})[1].decode()
    token = re.search(r"name='csrf-token' content='([^']+)'", page).group(1)  # type: ignore[union-attr]
    assert by_cookie({"X-CSRF-Token": token}) == 200


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_without_a_token_other_origins_still_cannot_change_anything(api):
    """An open server on loopback is reachable from any page the browser opens."""
    up = ok(api.upload("train.jsonl", GOOD))
    forged = api.request("POST", "/train", {"job_id": up["job_id"]},
                         headers={"Origin": "https://evil.example"})  # fmt: skip
    assert forged[0] == 403
    forged = api.request("POST", "/train", {"job_id": up["job_id"]},
                         headers={"Sec-Fetch-Site": "cross-site"})  # fmt: skip
    assert forged[0] == 403
    ok(api.request("POST", "/train", {"job_id": up["job_id"]}))  # curl: no browser signs


def test_every_html_answer_refuses_framing(locked):
    session = {"Cookie": login_cookie(locked).split(";")[0]}
    for path, headers in [("/", {}), ("/", session), ("/ui/job/0123456789ab", session),
                          ("/docs", session), ("/docs", {})]:  # fmt: skip
        status, _, got = locked.request("GET", path, auth=False, headers=headers)
        assert got["x-frame-options"] == "DENY", (path, status, got)
        policy = got["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, policy


def test_sessions_hold_no_token_end_at_sign_out_and_expire(locked):
    cookie = login_cookie(locked)
    name, value = cookie.split(";")[0].split("=", 1)
    assert name == "ftkit_session" and locked.token not in cookie
    assert re.search(r"Max-Age=43200\b", cookie), cookie  # 12 hours, not 30 days
    jar = {"Cookie": f"{name}={value}"}
    assert locked.request("GET", "/jobs", auth=False, headers=jar)[0] == 200
    assert (
        locked.request("GET", "/jobs", auth=False, headers={"Cookie": f"{name}={locked.token}"})[0]
        == 401
    )
    # Sign-out (from the page: same origin) ends the session on the server, not just the cookie.
    import http.client

    conn = http.client.HTTPConnection(locked.url.removeprefix("http://"), timeout=10)
    conn.request("POST", "/logout", headers={**jar, "Origin": locked.url})
    resp = conn.getresponse()
    assert resp.status == 303 and 'ftkit_session=""' in (resp.getheader("set-cookie") or "")
    assert locked.request("GET", "/jobs", auth=False, headers=jar)[0] == 401
    status, page, _ = locked.request("GET", "/", auth=False, headers=jar)
    assert status == 401 and b"name='token'" in page


def test_session_expiry_and_the_login_throttle_follow_their_clocks():
    from ftkit.server.sessions import FIRST_WAIT, SESSION_SECONDS, LoginThrottle, Sessions

    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    s = sessions.start()
    assert sessions.get(s.id) == s and s.id != s.csrf
    now[0] += SESSION_SECONDS + 1
    assert sessions.get(s.id) is None
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(4):
        throttle.failed("a")
        assert throttle.wait("a") == 0
    throttle.failed("a")
    assert throttle.wait("a") == FIRST_WAIT and throttle.wait("b") == 0
    now[0] += FIRST_WAIT
    throttle.failed("a")
    assert throttle.wait("a") == 2 * FIRST_WAIT
    throttle.succeeded("a")
    assert throttle.wait("a") == 0
    for _ in range(200):
        throttle.failed("c")
    assert throttle.wait("c") == 900


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_sign_in_is_throttled_after_wrong_tokens(settings, tmp_path):
    from ftkit.server.sessions import LoginThrottle

    now = [0.0]
    server = serve_in_thread(settings, tmp_path / "api", token="right-token-for-tests",
                             login_throttle=LoginThrottle(clock=lambda: now[0]))  # fmt: skip
    server.token = "right-token-for-tests"
    try:
        for _ in range(5):
            assert (
                server.request("POST", "/login", data=b"token=nope", headers=FORM, auth=False)[0]
                == 401
            )
        status, page, got = server.request(
            "POST", "/login", data=b"token=right-token-for-tests", headers=FORM, auth=False
        )
        assert status == 429 and got["retry-after"] == "30" and b"try again in 30 s" in page
        now[0] += 30
        assert login_cookie(server).startswith("ftkit_session=")
    finally:
        server.stop()


def test_the_token_is_checked_before_the_body_is_read(locked):
    for path, data, kind in [
        ("/train", b"{not json", "application/json"),
        ("/sweep", b'{"n": NaN', "application/json"),
        ("/upload", b"garbage", "multipart/form-data; boundary=x"),
    ]:
        status, body, _ = locked.request("POST", path, data=data, auth=False,
                                         headers={"Content-Type": kind})  # fmt: skip
        assert status == 401, (path, status, body)


def raw_post(api: ApiServer, path: str, text: str) -> tuple[int, Any]:
    status, body, _ = api.request(
        "POST", path, data=text.encode(), headers={"Content-Type": "application/json"}
    )
    return status, body


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_non_finite_numbers_are_a_422_naming_the_field(api, client):
    ok(api.upload("train.jsonl", GOOD))
    base = '"dataset_filename": "train.jsonl"'
    for path, text, loc in [
        ("/train", f'{{{base}, "priority": NaN}}', ["body", "priority"]),
        ("/train", f'{{{base}, "max_attempts": Infinity}}', ["body", "max_attempts"]),
        ("/train", f'{{{base}, "config": {{"max_steps": NaN}}}}', ["body", "config", "max_steps"]),
        ("/train", f'{{{base}, "config": {{"max_seq_length": 1e400}}}}',
         ["body", "config", "max_seq_length"]),
        ("/train", f'{{{base}, "config": {{"learning_rate": NaN}}}}',
         ["body", "config", "learning_rate"]),
        ("/train", f'{{{base}, "config": {{"learning_rate": -Infinity}}}}',
         ["body", "config", "learning_rate"]),
        ("/sweep", f'{{{base}, "mode": "random", "n": NaN}}', ["body", "n"]),
        ("/sweep", f'{{{base}, "values": {{"learning_rate": [NaN]}}}}', ["body", "values"]),
        ("/sweep", f'{{{base}, "mode": "random", "n": 2, "ranges": {{"lora_dropout": [0, 1e400]}}}}',
         ["body", "ranges", "lora_dropout"]),
    ]:  # fmt: skip
        status, body = raw_post(api, path, text)
        assert status == 422, (text, status, body)
        assert body["detail"][0]["loc"][: len(loc)] == loc, (text, body)
    assert client.count_jobs() == 0


def multipart(name: str, content: bytes, *, close: bool = True, extra: bytes = b"") -> bytes:
    head = (
        f'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + content + extra + (b"\r\n--b0undary--\r\n" if close else b"")


def send_multipart(api: ApiServer, body: bytes) -> tuple[int, Any]:
    status, got, _ = api.request(
        "POST", "/upload", data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )  # fmt: skip
    return status, got


def nothing_left(settings) -> None:
    datasets = Path(settings.storage) / "datasets"
    assert not datasets.exists() or not any(datasets.iterdir()), list(datasets.iterdir())
    scratch = Path(settings.scratch_dir) / "uploads"
    assert not scratch.exists() or not any(scratch.iterdir())


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_cut_off_upload_is_refused_and_leaves_nothing(api, settings):
    for name, content in [
        ("cut.csv", b"prompt,completion\nhi,there\nhow,are\n"),
        ("cut.txt", b"one line\nanother line\n"),
        ("cut.jsonl", b'{"text": "one"}\n{"text": "two"}\n'),
    ]:
        status, body = send_multipart(api, multipart(name, content, close=False))
        assert status == 422, (name, body)
        assert body["detail"][0]["loc"] == ["body", "file"] and "cut off" in body["summary"]
    nothing_left(settings)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_an_over_long_file_name_or_a_second_file_is_a_422_leaving_nothing(api, settings):
    for name in ["日" * 90 + ".jsonl", "a" * 250 + ".jsonl"]:  # 276 and 256 bytes
        status, body = send_multipart(api, multipart(name, GOOD))
        assert status == 422, body
        assert body["detail"][0]["loc"] == ["body", "file"] and "too long" in body["summary"]
        assert str(settings.storage) not in json.dumps(body)
    second = (
        b'\r\n--b0undary\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n'
        b"\r\n" + GOOD
    )
    status, body = send_multipart(api, multipart("a.jsonl", GOOD, extra=second))
    assert status == 422 and "more than one file" in body["summary"], body
    nothing_left(settings)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_base_model_errors_do_not_map_the_server_disk(api, tmp_path):
    ok(api.upload("train.jsonl", GOOD))
    (tmp_path / "no-config").mkdir()
    answers = []
    for base_model in ["/etc", "/root/.ssh", "/nonexistent/model", "~", "/etc/passwd",
                       str(tmp_path / "no-config"), str(tmp_path / "missing")]:  # fmt: skip
        body = {"dataset_filename": "train.jsonl", "config": {"base_model": base_model}}
        status, got, _ = api.request("POST", "/train", body)
        assert status == 422, (base_model, got)
        (detail,) = got["detail"]
        assert detail["loc"] == ["body", "config", "base_model"], got
        answers.append(detail["msg"])
        sweep = {"dataset_filename": "train.jsonl", "values": {"base_model": [base_model]}}
        status, got, _ = api.request("POST", "/sweep", sweep)
        assert status == 422 and got["detail"][0]["msg"].endswith(answers[0]), got
        assert got["detail"][0]["loc"] == ["body", "values", "base_model"], got
    assert len(set(answers)) == 1 and "/" not in answers[0].split("org/name")[0], answers


def test_errors_and_logs_reach_clients_without_ansi_codes_or_server_paths(api, client, settings):
    ok(api.upload("train.jsonl", GOOD))
    job = ok(api.request("POST", "/train", {"dataset_filename": "train.jsonl"}))["job_id"]
    where = str(Path(settings.storage).resolve())
    client.store.update(
        job,
        error=f"\x1b[31mRuntimeError\x1b[0m: cannot write {where}/runs/{job}/x",
        error_traceback=f'  File "{where}/runs/{job}/notebook.py", line 3\n\x1b[1;32mboom\x1b[0m',
    )
    client.store.add_logs(job, [f"\x1b[33mwarning\x1b[0m in {where}/runs"])
    seen = json.dumps(ok(api.request("GET", f"/status/{job}")))
    seen += json.dumps(ok(api.request("GET", "/jobs")))
    seen += json.dumps(ok(api.request("GET", f"/logs/{job}")))
    page = api.request("GET", f"/ui/job/{job}")[1].decode()
    for text in (seen, page):
        assert "\x1b" not in text and "\\u001b" not in text and where not in text
        assert "<storage>/runs" in text or "&lt;storage&gt;/runs" in text
    assert "RuntimeError: cannot write" in page and "boom" in page


def test_job_ids_are_checked_whole(api):
    for path in ["/status/abcdefabcdef%0A", "/ui/job/abcdefabcdef%0A", "/logs/abcdefabcdef%0A"]:
        status, _, _ = api.request("GET", path)
        assert status in (404, 422), (path, status)
    status, page, _ = api.request("GET", "/ui/job/abcdefabcdef%0A")
    assert status == 404 and b"no such job" in page


def test_the_docs_load_nothing_from_outside(api):
    html = ok(api.request("GET", "/docs")).decode()
    sources = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", html)
    assert sources and all(s.startswith("/") for s in sources), sources
    assert "cdn" not in html.lower()
    for name, kind in [("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")]:
        status, body, got = api.request("GET", f"/docs/assets/{name}")
        assert status == 200 and kind in got["content-type"] and len(body) > 10_000
    assert api.request("GET", "/docs/assets/..%2Fcore.py")[0] == 404


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_known_content_under_a_new_name_answers_a_name_train_finds(api):
    first = ok(api.upload("train.jsonl", GOOD))
    again = ok(api.upload("renamed.jsonl", GOOD))
    assert again["dataset_id"] == first["dataset_id"] and again["filename"] == "train.jsonl"
    assert "uploaded before as 'train.jsonl'" in again["warnings"][0]
    for body in [{"dataset_filename": again["filename"]}, {"dataset_id": again["dataset_id"]},
                 {"job_id": again["job_id"]}]:  # fmt: skip
        ok(api.request("POST", "/train", body))


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_data_set_is_deleted_over_http_unless_a_live_job_uses_it(api, client, settings):
    up = ok(api.upload("train.jsonl", GOOD))
    spare = ok(api.upload("train.jsonl", GOOD))["job_id"]  # a second reservation
    job = ok(api.request("POST", "/train", {"job_id": up["job_id"]}))["job_id"]
    status, body, _ = api.request("DELETE", f"/dataset/{up['dataset_id'][:12]}")
    assert status == 409 and job in body["detail"] and "cancel them first" in body["detail"]
    assert (Path(settings.storage) / "datasets" / up["dataset_id"]).is_dir()
    ok(api.request("DELETE", f"/job/{job}"))
    gone = ok(api.request("DELETE", f"/dataset/{up['dataset_id']}"))
    assert gone["dataset_id"] == up["dataset_id"] and gone["bytes"] >= len(GOOD)
    assert gone["reservations_removed"] == 2
    assert not (Path(settings.storage) / "datasets" / up["dataset_id"]).exists()
    assert api.request("DELETE", f"/dataset/{up['dataset_id']}")[0] == 404
    assert api.request("POST", "/train", {"dataset_filename": "train.jsonl"})[0] == 404
    status, body, _ = api.request("POST", "/train", {"job_id": spare})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "job_id"]
    assert api.request("DELETE", "/dataset/not-hex")[0] == 422


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_reservations_expire(api, client):
    old = {
        "job_id": "0123456789ab",
        "dataset_id": "f" * 64,
        "reserved_at": "2020-01-01T00:00:00+00:00",
    }
    client.storage.save_reservation(old)
    ok(api.upload("train.jsonl", GOOD))  # the first upload of a server sweeps expired ones
    assert not client.storage.exists("reservations", "0123456789ab.json")
    up = ok(api.upload("other.jsonl", b'{"text": "x"}\n'))
    client.storage.save_reservation({**old, "job_id": up["job_id"], "dataset_id": up["dataset_id"]})
    status, body, _ = api.request("POST", "/train", {"job_id": up["job_id"]})
    assert status == 422 and "expired" in body["detail"][0]["msg"], body
    assert body["detail"][0]["loc"] == ["body", "job_id"]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_generated_bodies_with_non_finite_numbers_never_get_a_server_error(api):
    """schemathesis' bodies for /train and /sweep, with their numbers made NaN or infinite (what
    Python's and many clients' JSON writers send): a 4xx, never a 5xx."""
    from schemathesis.generation import GenerationMode

    ok(api.upload("train.jsonl", GOOD))
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    seen: list[int] = []
    for path in ("/train", "/sweep"):
        operation = schema[path]["POST"]
        strategy = operation.as_strategy(GenerationMode.POSITIVE)

        @hypothesis.settings(max_examples=15, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
        @hypothesis.given(case=strategy, bad=hypothesis.strategies.sampled_from(
            [float("nan"), float("inf"), float("-inf")]))  # fmt: skip
        def check(case, bad):
            body = poisoned(case.body, bad)
            status, got = raw_post(api, case.path, json.dumps(body, allow_nan=True))
            assert status < 500, (body, status, got)
            seen.append(status)

        check()
    assert len(seen) >= 20 and 422 in seen


def poisoned(value: Any, bad: float) -> Any:
    """Every number in a JSON value replaced by ``bad`` (and one added when there is none)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bad
    if isinstance(value, list):
        return [poisoned(v, bad) for v in value] or [bad]
    if isinstance(value, dict):
        return {k: poisoned(v, bad) for k, v in value.items()} or {"priority": bad}
    return value


def test_a_report_page_loads_nothing_from_outside():
    """The report's HTML (served at /report/{id}) names no CDN script: JupyterLab's template
    without require.js, MathJax, Mermaid or the widget manager."""
    import nbformat

    from ftkit.report import render_html

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Loss $x^2$"), nbformat.v4.new_code_cell("1 + 1")]
    )
    html = render_html(nb)
    assert "jp-Notebook" in html and "Loss" in html
    assert not re.findall(r"""<(?:script|link)[^>]*(?:src|href)=["']?https?:""", html), html[:2000]
