"""Experiment trackers (TrainConfig.report_to), with no network: the setting, the kernel's MLflow
run continued by a later attempt, and a tracker that raises mid-training, which stops logging while
the training goes on."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_DATA
from ftkit.config import TrainConfig
from ftkit.errors import ConfigError

JOB = dict(max_steps=6, batch_size=2, max_seq_length=128, learning_rate=3e-3)


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
