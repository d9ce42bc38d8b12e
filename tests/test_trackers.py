"""Experiment trackers (TrainConfig.report_to), with no network: one real job logs to TensorBoard
(event files in storage, read back with tensorboard's reader), an MLflow file store (read with
MLflow's client) and an offline W&B run (its .wandb file read with W&B's own record messages); a job
whose trackers cannot work completes with warnings in its log, record and report; a tracker that
raises mid-training stops logging and the training goes on; no credential lands anywhere."""

from __future__ import annotations

import json
import secrets
import shutil
import struct
from pathlib import Path

import pytest

from conftest import EXAMPLE_DATA, free_port, sqlite_only
from ftkit.config import TrainConfig
from ftkit.errors import ConfigError
from ftkit.trackers import TRACKERS
from tracker_reads import mlflow_losses, mlflow_run, tensorboard_losses

JOB = dict(max_steps=6, batch_size=2, max_seq_length=128, learning_rate=3e-3)
NOTE = 'tracked "twice"\nsecond line \\ end'  # a value, whatever it holds, never code


# -- the setting ----------------------------------------------------------------------------------
def test_report_to_takes_each_known_tracker_once_and_defaults_to_none():
    assert TrainConfig().report_to == []
    config = TrainConfig(report_to=["tensorboard", "mlflow", "wandb"])
    assert config.to_dict()["report_to"] == ["tensorboard", "mlflow", "wandb"]
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "value,says",
    [
        ("mlflow", r"give a list of trackers, e\.g\. report_to=\['mlflow'\]"),
        (["tensorbord"], r"'tensorbord' is not a tracker.*did you mean 'tensorboard'"),
        (["comet"], r"'comet' is not a tracker ftkit knows; use any of tensorboard, mlflow, wandb"),
        (["mlflow", "mlflow"], "names 'mlflow' twice"),
        ([None], "None is not a tracker"),
    ],
)
def test_a_bad_report_to_is_refused_naming_the_field(value, says):
    with pytest.raises(ConfigError, match=says) as caught:
        TrainConfig(report_to=value)
    assert caught.value.field == "report_to" and "TrainConfig.report_to=" in str(caught.value)


def test_a_multi_device_jobs_kernel_leaves_its_trackers_to_rank_0(tmp_path):
    """Its kernel starts nothing: no callbacks, no state file, nothing to finish; the tags and
    note wait for the plan (rank 0's trackers in a real job: test_multi_device.py)."""
    from ftkit.training.trackers import start_trackers

    config = TrainConfig(devices=2, backend="hf", report_to=["tensorboard", "mlflow"])
    trackers = start_trackers(config, "0123456789ab", str(tmp_path), ["a", 3], "why")
    trackers.finish({"adapter_dir": str(tmp_path)})
    assert trackers.callbacks == [] and list(tmp_path.iterdir()) == []
    assert (trackers.tags, trackers.note) == (["a"], "why")


def test_report_to_is_one_value_to_a_sweep_and_a_comma_list_to_the_cli():
    from ftkit import sweep_plan
    from ftkit.cli import build_parser

    runs, _, fixed, _ = sweep_plan.plan(
        "grid", {"report_to": ["mlflow"], "lora_r": [4, 8]}, None, None
    )
    assert fixed == {"report_to": ["mlflow"]} and len(runs) == 2
    args = build_parser().parse_args(["submit", "data.jsonl", "--report-to", "tensorboard,wandb"])
    assert args.report_to == ["tensorboard", "wandb"]


def test_warnings_are_scrubbed_of_credentials_and_the_state_is_checked(tmp_path):
    from ftkit.trackers import read_state, scrub, write_state

    env = {"WANDB_API_KEY": "wk-123456789", "MLFLOW_TRACKING_PASSWORD": "pw-987654"}
    said = "401 for https://bob:pw-987654@mlflow.example/api key=wk-123456789 at http://a:b@c/"
    assert (
        scrub(said, env) == "401 for https://bob:***@mlflow.example/api key=*** at http://a:***@c/"
    )
    write_state(
        tmp_path,
        {"used": ["mlflow", "os"], "warnings": ["x", 3], "mlflow": {"run_id": "../../etc"}},
    )
    assert read_state(tmp_path) == {
        "used": ["mlflow"],
        "warnings": ["x"],
        "mlflow_run_id": None,
        "wandb_offline": False,
    }
    (tmp_path / "trackers.json").write_text("[not an object")
    assert read_state(tmp_path) == {}


# -- in the kernel ----------------------------------------------------------------------------------
def test_a_later_attempt_continues_the_jobs_mlflow_run(tmp_path, monkeypatch):
    """Found by its ftkit.job_id tag; the params it holds are kept (a param never changes in
    MLflow, and the next worker stages the base model at a path of its own)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from ftkit.trackers import mlflow_client
    from ftkit.training.trackers import MLflowRun

    client = mlflow_client(f"file://{tmp_path / 'mlruns'}")
    config = TrainConfig(base_model="/worker1/model", report_to=["mlflow"])
    first = MLflowRun.open(client, "0123456789ab", config, ["a"], "")
    again = MLflowRun.open(
        client, "0123456789ab", config.replace(base_model="/worker2/model"), ["a"], ""
    )
    other = MLflowRun.open(client, "ba9876543210", config, [], "")
    assert (first.continued, again.continued, again.run_id) == (False, True, first.run_id)
    assert other.run_id != first.run_id
    run = client.get_run(first.run_id)
    assert run.info.run_name == "0123456789ab" and run.data.params["base_model"] == "/worker1/model"


class Failing:
    """A tracker whose server goes away at step 2."""

    def __init__(self):
        self.steps: list[int] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 2:
            raise ConnectionError("tracking server went away")
        self.steps.append(state.global_step)


@pytest.mark.slow
def test_a_tracker_failing_mid_training_stops_logging_and_the_training_goes_on(
    tiny_model, tmp_path, capsys
):
    from ftkit import training
    from ftkit.training.trackers import Trackers

    config = TrainConfig(base_model=str(tiny_model), **{**JOB, "max_steps": 4})
    model, tokenizer, _ = training.load_model(config)
    data, _, _ = training.prepare_data(str(EXAMPLE_DATA), "chat", tokenizer, config)
    trackers, failing = Trackers("", str(tmp_path)), Failing()
    trackers.add("mlflow", failing)
    trainer, result = training.fit(
        model, tokenizer, data, None, config, str(tmp_path), training.Reporter(None),
        callbacks=trackers.callbacks,
    )  # fmt: skip
    assert result["global_step"] == 4 and failing.steps == [1]
    said = "mlflow: stopped logging at step 2 (on_log: ConnectionError: tracking server went away)"
    assert trackers.state["warnings"] == [f"{said}; the training goes on"]
    assert f"tracker warning: {said}" in capsys.readouterr().out
    assert json.loads((tmp_path / "trackers.json").read_text())["warnings"] == [
        f"{said}; the training goes on"
    ]


# -- real jobs ------------------------------------------------------------------------------------
def wandb_records(path: Path) -> list:
    """The records of a .wandb file, as W&B's own protobuf messages. The file is a LevelDB-style
    log (32 KiB blocks of chunks: crc32, length, type) after a 7-byte W&B header; wandb ships no
    reader of its own any more."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, records, pieces, pos = path.read_bytes(), [], b"", 7
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:  # zeroes to the block's end
            pos += left
            continue
        pieces += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last chunk
            record = pb.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def tracker_env(tmp_path: Path) -> dict[str, str]:
    """A worker's environment for the trackers, all local; with credentials that must not leak."""
    return {
        "WANDB_API_KEY": f"wandb-{secrets.token_hex(16)}",
        "MLFLOW_TRACKING_USERNAME": "ftkit-test",
        "MLFLOW_TRACKING_PASSWORD": f"mlflow-{secrets.token_hex(16)}",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "NETRC": str(tmp_path / "no-netrc"),  # no `wandb login` of this machine's user
    }


def assert_nothing_holds(secrets_: list[str], client, job, worker, *folders: Path) -> None:
    """No credential in the job's record, logs or report, the worker's log, or any file the
    trackers wrote."""
    texts = [json.dumps(client.store.get(job.id)), "\n".join(job.logs(500)), worker.output()]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    assert files, "the trackers wrote files"
    for secret in secrets_:
        assert not any(secret in text for text in texts)
        assert not any(secret.encode() in p.read_bytes() for p in files), secret


@sqlite_only
@pytest.mark.slow
def test_one_job_logs_to_tensorboard_mlflow_and_wandb(
    settings, client, start_worker, tiny_model, tmp_path
):
    env = {
        **tracker_env(tmp_path),
        "MLFLOW_TRACKING_URI": f"file://{tmp_path / 'mlruns'}",
        "WANDB_MODE": "offline",
    }
    worker = start_worker(env=env)
    job = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), **JOB, save_steps=3,
        report_to=["tensorboard", "mlflow", "wandb"], tags=["lr-sweep"], note=NOTE,
    )  # fmt: skip
    final = job.wait(timeout=600, progress=False)
    assert final["status"] == "completed", final["error"]
    said = [w for w in final.get("warnings") or [] if w.split(":")[0] in TRACKERS]
    assert not said, said
    losses = {m["step"]: m["loss"] for m in job.metrics()}
    assert sorted(losses) == list(range(1, 7))
    run_folder = Path(settings.storage) / "runs" / job.id
    assert tensorboard_losses(run_folder / "tensorboard") == pytest.approx(losses)

    mlflow, run = mlflow_run(env["MLFLOW_TRACKING_URI"], job.id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ftkit.job_id"] == job.id and run.data.tags["ftkit.tags"] == "lr-sweep"
    assert run.data.tags["mlflow.note.content"] == NOTE
    assert run.data.params["learning_rate"] == "0.003" and run.data.params["max_steps"] == "6"
    assert mlflow_losses(mlflow, run.info.run_id) == pytest.approx(losses)
    artifacts = {a.path for a in mlflow.list_artifacts(run.info.run_id)}
    adapter = {a.path for a in mlflow.list_artifacts(run.info.run_id, "adapter")}
    assert {"report.ipynb", "adapter"} <= artifacts
    assert "adapter/adapter_model.safetensors" in adapter

    (wandb_file,) = (run_folder / "wandb").glob(f"offline-run-*-{job.id}/run-{job.id}.wandb")
    records = wandb_records(wandb_file)
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.notes == NOTE
    assert (started.run_id, started.display_name, list(started.tags)) == (
        job.id,
        job.id,
        ["lr-sweep"],
    )
    rows = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    logged = {r["train/global_step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert logged == pytest.approx(losses)

    report = (run_folder / "report.ipynb").read_text()
    assert "Experiment trackers" in report and "runs/" + job.id + "/tensorboard" in report
    secrets_ = [env["WANDB_API_KEY"], env["MLFLOW_TRACKING_PASSWORD"]]
    assert_nothing_holds(secrets_, client, job, worker, run_folder, tmp_path / "mlruns")


@sqlite_only
@pytest.mark.slow
def test_a_job_whose_trackers_cannot_work_completes_and_says_why(
    settings, client, start_worker, tiny_model, tmp_path
):
    """And a job that fails still leaves its TensorBoard files in storage."""
    env = {**tracker_env(tmp_path), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    env.pop("WANDB_API_KEY")  # online W&B, and no key
    job = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), **{**JOB, "max_steps": 2},
        report_to=["mlflow", "wandb"],
    )  # fmt: skip
    gone = tmp_path / "gone-model"
    gone.mkdir()
    (gone / "config.json").write_text("{}")
    failing = client.submit(EXAMPLE_DATA, base_model=str(gone), report_to=["tensorboard"])
    shutil.rmtree(gone)  # only the worker notices: the job fails loading it, trackers started
    worker = start_worker(env=env)
    final = job.wait(timeout=600, progress=False)
    assert final["status"] == "completed", final["error"]
    unreachable = (
        f"mlflow: not used: the tracking server {env['MLFLOW_TRACKING_URI']} is unreachable"
    )
    no_key = "wandb: not used: WANDB_API_KEY is not set in the worker's environment"
    said = [w for w in final["warnings"] if w.split(":")[0] in TRACKERS]  # after the data set's
    assert [w[: len(s)] for w, s in zip(said, (unreachable, no_key))] == [unreachable, no_key]
    logs = "\n".join(job.logs(500))
    assert f"tracker warning: {unreachable}" in logs and f"tracker warning: {no_key}" in logs
    runs = Path(settings.storage) / "runs"
    report = (runs / job.id / "report.ipynb").read_text()
    assert unreachable in report and no_key in report

    assert failing.wait(timeout=600, progress=False)["status"] == "failed"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / failing.id / "tensorboard"))
    events.Reload()
    assert "ftkit/config/text_summary" in events.Tags()["tensors"]
    assert_nothing_holds([env["MLFLOW_TRACKING_PASSWORD"]], client, job, worker, runs)
