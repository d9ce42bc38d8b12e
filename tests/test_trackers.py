"""Experiment trackers (TrainConfig.report_to): the setting."""

from __future__ import annotations

import pytest

from ftkit.config import TrainConfig
from ftkit.errors import ConfigError


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
