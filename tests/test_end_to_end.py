"""One real job, end to end, on SQLite and on a real redis-server: upload -> submit -> `ftkit worker`
subprocess -> papermill kernel -> real training steps on a tiny Llama -> report + adapter in storage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import EXAMPLE_DATA, redis_only, sqlite_only, wait_for

STATUS_FIELDS = {
    "job_id",
    "status",
    "progress",
    "current_step",
    "total_steps",
    "loss",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "attempt",
    "worker",
    "result",
}


@pytest.mark.slow
@sqlite_only  # every job on Redis trains the same way: the fault tests run there
def test_a_job_trains_and_leaves_a_report_and_a_loadable_adapter(
    client, start_worker, tiny_model, tmp_path
):
    # The production path: a warm kernel (torch and ftkit imported) waits for the job, and a new
    # one warms after it. Other tests start their workers cold, which costs the same per job.
    worker = start_worker(env={"FTKIT_WARM_KERNEL": "1"})
    wait_for(lambda: client.workers()[0]["warm_kernel"], 300, "the warm kernel")
    health = client.health()
    assert health["workers"] == 1 and health["broker_connected"] and health["status"] == "healthy"

    ds = client.upload_dataset(EXAMPLE_DATA)
    assert (ds.format, ds.rows, len(ds.sha256)) == ("chat", 120, 64)
    job = client.submit(
        ds,
        base_model=str(tiny_model),
        max_steps=30,
        batch_size=4,
        learning_rate=3e-3,
        max_seq_length=256,
    )
    assert job.status()["status"] in ("queued", "preparing", "training")
    final = job.wait(timeout=300, progress=False)

    assert final["status"] == "completed", final["error"]
    wait_for(lambda: client.workers()[0]["warm_kernel"], 300, "the next warm kernel")
    assert "warming a kernel failed" not in worker.output()
    assert STATUS_FIELDS <= final.keys()
    assert final["progress"] == 100.0 and final["current_step"] == final["total_steps"] == 30
    assert final["attempt"] == 1 and final["worker"] and final["error"] is None
    result = final["result"]
    assert {
        "output_dir",
        "adapter_dir",
        "report",
        "training_duration_seconds",
        "dataset_size",
    } <= result.keys()
    assert result["dataset_size"] == 120 and result["training_duration_seconds"] > 0

    metrics = job.metrics()
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert {"step", "loss", "learning_rate", "epoch"} <= metrics[0].keys()
    assert metrics[-1]["loss"] < metrics[0]["loss"]

    report = json.loads(open(result["report"]).read())
    code_cells = [c for c in report["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code_cells), "every code cell ran"
    assert not any(o.get("output_type") == "error" for c in code_cells for o in c["outputs"])
    assert report["metadata"]["papermill"]["exception"] is None

    adapter = job.download(tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file() and (
        adapter / "adapter_model.safetensors"
    ).is_file()
    check = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, str(tiny_model), str(adapter)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert int(check.stdout.split()[-1]) > 0, "generated new tokens"


LOAD_AND_GENERATE = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(adapter)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
ids = tok.apply_chat_template([{"role": "user", "content": "Name a color."}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(out.shape[1] - ids["input_ids"].shape[1])
"""


@pytest.mark.slow
@redis_only
def test_a_missing_base_model_fails_clearly_and_keeps_its_report(client, start_worker, tmp_path):
    gone = tmp_path / "no-such-model"
    gone.mkdir()
    (gone / "config.json").write_text("{}")
    job = client.submit(EXAMPLE_DATA, base_model=str(gone), max_steps=2)
    shutil.rmtree(gone)  # moved after submitting: only the worker can notice
    start_worker()
    final = job.wait(timeout=180, progress=False)
    assert final["status"] == "failed"
    assert "no-such-model" in final["error"] and "not found" in final["error"]
    report = json.loads(open(final["report"]).read())
    failing = [
        c
        for c in report["cells"]
        if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert len(failing) == 1 and "load_model" in "".join(failing[0]["source"])
    assert final["error_cell"] == failing[0]["execution_count"]


def test_bad_config_is_refused_before_anything_is_queued(client):
    from ftkit.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        client.submit(EXAMPLE_DATA, max_step=10)
    with pytest.raises(ConfigError, match="learning_rate"):
        client.submit(EXAMPLE_DATA, learning_rate=0)
    assert client.store.count() == 0 and client.huey.pending_count() == 0


def test_health_counts_live_workers_only(client, start_worker):
    assert client.health()["workers"] == 0 and client.health()["status"] == "degraded"
    worker = start_worker()
    assert client.health()["workers"] == 1
    worker.stop()
    wait_for(lambda: client.health()["workers"] == 0, 10, "the stopped worker to disappear")


def cli(settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **settings.to_env()}
    out = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_the_cli_submit_takes_the_method_its_settings_and_the_job_to_continue(capsys):
    from ftkit.cli.jobs import config_fields
    from ftkit.cli.parser import build_parser
    from ftkit.config import TrainConfig

    args = build_parser().parse_args(
        [
            "submit",
            "pairs.jsonl",
            "--method",
            "dpo",
            "--beta",
            "0.2",
            "--dpo-loss-type",
            "ipo",
            "--resume-from",
            "0123456789ab",
            "--max-steps",
            "5",
        ]  # fmt: skip
    )
    assert args.resume_from == "0123456789ab"
    fields = config_fields(args)
    assert fields == {"method": "dpo", "beta": 0.2, "dpo_loss_type": "ipo", "max_steps": 5}
    assert TrainConfig.from_dict(fields).preference
    kto = build_parser().parse_args(
        [
            "submit",
            "x.jsonl",
            "--method",
            "kto",
            "--kto-desirable-weight",
            "1.33",
            "--kto-undesirable-weight",
            "1",
        ]  # fmt: skip
    )
    assert config_fields(kto) == {
        "method": "kto", "kto_desirable_weight": 1.33, "kto_undesirable_weight": 1.0
    }  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--help"])
    shown = capsys.readouterr().out
    assert "--method {sft,dpo,orpo,kto}" in shown and "--resume-from JOB" in shown


def test_the_cli_takes_a_method_and_refuses_a_setting_it_does_not_take(settings, client):
    out = cli(settings, "submit", str(EXAMPLE_DATA), "--beta", "0.1", check=False)
    assert out.returncode == 2, out.stdout
    assert (
        "TrainConfig.beta=0.1: applies to method='dpo' or 'orpo' or 'kto', not method='sft'"
        in out.stderr
    )
    out = cli(settings, "submit", str(EXAMPLE_DATA), "--method", "orpo", "--dpo-loss-type",
              "ipo", check=False)  # fmt: skip
    assert out.returncode == 2 and "not method='orpo'" in out.stderr, out.stderr
    out = cli(settings, "submit", str(EXAMPLE_DATA), "--method", "ppo", check=False)
    assert out.returncode == 2 and "invalid choice: 'ppo'" in out.stderr, out.stderr
    assert client.count_jobs() == 0

    pairs = EXAMPLE_DATA.parent / "preference_data.jsonl"
    job_id = cli(settings, "submit", str(pairs), "--method", "dpo", "--beta", "0.2",
                 "--dpo-loss-type", "hinge", "--base-model", "org/model").stdout.strip()  # fmt: skip
    config = client.get_job(job_id).status()["config"]
    assert (config["method"], config["beta"], config["dpo_loss_type"]) == ("dpo", 0.2, "hinge")


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["redis"], indirect=True)
def test_the_cli_verbs_drive_a_whole_job(settings, start_worker, tiny_model, tmp_path):
    start_worker()
    assert json.loads(cli(settings, "--json", "health").stdout)["workers"] == 1
    assert "healthy" in cli(settings, "health").stdout
    assert "120 rows" in cli(settings, "validate", str(EXAMPLE_DATA)).stdout
    final = json.loads(
        cli(
            settings,
            "--json",
            "submit",
            str(EXAMPLE_DATA),
            "--base-model",
            str(tiny_model),
            "--max-steps",
            "3",
            "--max-seq-length",
            "128",
            "--sample-prompts",
            "Hi|Bye",
            "--wait",
        ).stdout
    )
    assert final["status"] == "completed" and final["config"]["sample_prompts"] == ["Hi", "Bye"]
    job_id = final["job_id"]
    assert json.loads(cli(settings, "--json", "status", job_id).stdout)["status"] == "completed"
    assert job_id in cli(settings, "jobs").stdout
    cli(settings, "download", job_id, str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert cli(settings, "cancel", job_id).stdout.strip() == "completed"
    missing = cli(settings, "status", "nope", check=False)
    assert missing.returncode == 2 and "no job with id 'nope'" in missing.stderr


@pytest.mark.slow  # two workers start
@pytest.mark.parametrize(
    ("settings", "gpus", "seen"),
    [
        ("sqlite", ("--gpus", "0,1"), ["0", "1"]),  # one worker per GPU
        ("redis", ("--gpus", "0,1,2,3", "--gpus-per-worker", "2"), ["0,1", "2,3"]),  # per pair
    ],
    indirect=["settings"],
    ids=["per-gpu", "per-pair"],
)
def test_one_worker_per_gpu_or_group(settings, start_worker, client, gpus, seen):
    from conftest import wait_for

    start_worker(args=gpus, wait=False)
    workers = wait_for(lambda: len(client.workers()) == 2 and client.workers(), 60, "two workers")
    assert len({w["worker_id"] for w in workers}) == 2 and len({w["pid"] for w in workers}) == 2
    # each child process sees only its own devices
    assert sorted(w["cuda_visible_devices"] for w in workers) == seen


def test_a_job_shown_in_a_cell_is_its_live_monitor(client, tiny_model):
    job = client.submit(EXAMPLE_DATA, base_model=str(tiny_model), max_steps=1)
    bundle = job._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    job.cancel()
