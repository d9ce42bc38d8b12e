"""Real training steps on each conversational format, with packing and an eval split, in-process
(the same functions the template notebook calls)."""

from __future__ import annotations

import pytest

from conftest import SHARED_DATA
from ftkit import train
from ftkit.config import TrainConfig


def run(tiny_model, tmp_path, path, fmt, **overrides):
    config = TrainConfig(
        base_model=str(tiny_model),
        max_steps=3,
        batch_size=2,
        max_seq_length=128,
        learning_rate=1e-3,
        **overrides,
    )
    model, tokenizer, info = train.load_model(config)
    data, eval_data, summary = train.prepare_data(str(path), fmt, tokenizer, config)
    trainer = train.make_trainer(
        model, tokenizer, data, eval_data, config, str(tmp_path), train.Reporter(None)
    )
    result = train.train(trainer, train.Reporter(None))
    return trainer, result, summary, info


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("alpaca_en_demo.json", "alpaca"),
        ("glaive_toolcall_en_demo.json", "sharegpt"),
        ("v1_sft_demo.jsonl", "chat"),
        ("c4_demo.jsonl", "text"),
    ],
)
def test_a_few_steps_train_on_each_format(name, fmt, tiny_model, tmp_path):
    trainer, result, summary, info = run(tiny_model, tmp_path, SHARED_DATA / name, fmt)
    assert result["global_step"] == 3 and result["stopped"] is None
    assert (
        summary["trained_tokens"] > 0
        and info["backend"] == "hf"
        and info["trainable_parameters"] > 0
    )
    assert all("loss" in row for row in trainer.state.log_history[:3])


def test_packing_trains_padding_free(tiny_model, tmp_path):
    trainer, result, summary, _ = run(
        tiny_model, tmp_path, SHARED_DATA / "alpaca_en_demo.json", "alpaca", packing=True
    )
    assert result["global_step"] == 3 and trainer.args.padding_free


def test_validation_split_logs_eval_loss(tiny_model, tmp_path):
    trainer, _, summary, _ = run(
        tiny_model,
        tmp_path,
        SHARED_DATA / "identity.json",
        "alpaca",
        validation_split=0.2,
        eval_steps=1,
    )
    assert summary["eval_examples"] == 19
    assert any("eval_loss" in row for row in trainer.state.log_history)
