"""Tuning on preferences (DPO, ORPO, KTO) with TRL's trainers on the tiny model: only the answers
are scored, the preference is really learned (measured here with plain transformers and peft, not
ftkit's code), the reference is the SFT parent when a job continues one, and whole jobs of each
method run through a real worker and its kernel."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_DATA
from ftkit import training
from ftkit.config import TrainConfig

GOOD, BAD = "the sky is blue", "the grass is red"
TOPICS = ["sky", "sea", "tree", "road", "cat", "rain", "light", "stone"]


def pairs(n: int, start: int = 0) -> list[dict]:
    """Pairs that always prefer one answer, in TRL's conversational shape (the data contract)."""
    return [
        {
            "prompt": [
                {"role": "user", "content": f"tell me about the {TOPICS[i % 8]} number {i}"}
            ],
            "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}],
        }
        for i in range(start, start + n)
    ]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def preference_config(tiny_model, **overrides) -> TrainConfig:
    settings = dict(method="dpo", max_steps=3, batch_size=4, max_seq_length=128, learning_rate=1e-3)
    return TrainConfig(base_model=str(tiny_model), **{**settings, **overrides})


def answer_logp(model, tokenizer, prompt, answer) -> float:
    """log p(answer | prompt) under the chat template, summed over the answer's tokens: written
    here with plain torch, apart from ftkit's margins.py."""
    import torch

    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)
    whole = tokenizer.apply_chat_template(prompt + answer, return_dict=True)
    ids, n = whole["input_ids"], len(head["input_ids"])
    assert ids[:n] == head["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logps = torch.log_softmax(logits.float(), dim=-1)
    return float(sum(logps[i - 1, ids[i]] for i in range(n, len(ids))))


def margin(model, tokenizer, rows) -> float:
    """The mean margin of chosen over rejected."""
    model.eval()
    values = [
        answer_logp(model, tokenizer, r["prompt"], r["chosen"])
        - answer_logp(model, tokenizer, r["prompt"], r["rejected"])
        for r in rows
    ]
    return sum(values) / len(values)


def plain_model(tiny_model, adapter=None):
    """The base model (and an adapter on it) loaded with transformers and peft alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    return PeftModel.from_pretrained(model, adapter) if adapter else model


@pytest.mark.slow
def test_only_the_answers_are_scored(tiny_model, tmp_path):
    config = preference_config(tiny_model)
    model, tokenizer, _ = training.load_model(config)
    trainer = training.make_trainer(
        model, tokenizer, dataset(pairs(8)), None, config, str(tmp_path), training.Reporter(None)
    )
    batch = next(iter(trainer.get_train_dataloader()))
    scored = batch["input_ids"][batch["completion_mask"].bool()]
    assert 0 < len(scored) < batch["attention_mask"].sum()
    rows = batch["input_ids"].shape[0]  # chosen rows, then rejected rows
    for row in range(rows):
        answer = tokenizer.decode(batch["input_ids"][row][batch["completion_mask"][row].bool()])
        assert answer.startswith(GOOD if row < rows // 2 else BAD), answer
        assert "tell me about" not in answer and "user" not in answer


@pytest.mark.slow
def test_dpo_learns_to_prefer_the_chosen_answer(tiny_model, tmp_path):
    config = preference_config(
        tiny_model, max_steps=30, learning_rate=5e-3, beta=0.1, logging_steps=5
    )
    model, tokenizer, _ = training.load_model(config)
    reporter = training.Reporter(None)
    trainer, result = training.fit(
        model, tokenizer, dataset(pairs(32)), None, config, str(tmp_path), reporter
    )
    assert result["global_step"] == 30 and result["stopped"] is None
    logged = [row for row in trainer.state.log_history if "rewards/margins" in row]
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"]
    assert logged[-1]["rewards/accuracies"] == 1.0
    adapter = training.save_adapter(model, tokenizer, str(tmp_path))
    assert not (adapter / "ref").exists(), "the reference copy is not part of the adapter"

    held_out = pairs(8, start=100)  # prompts never trained on
    base = margin(plain_model(tiny_model), tokenizer, held_out)
    tuned = margin(plain_model(tiny_model, adapter), tokenizer, held_out)
    assert tuned > base + 5.0, (base, tuned)


def sft_adapter(tiny_model, tmp_path) -> str:
    """A few SFT steps on the example conversations, saved as a job's adapter is."""
    config = TrainConfig(
        base_model=str(tiny_model),
        max_steps=8,
        batch_size=4,
        max_seq_length=128,
        learning_rate=1e-2,
    )
    model, tokenizer, _ = training.load_model(config)
    data, _, _ = training.prepare_data(str(EXAMPLE_DATA), "chat", tokenizer, config)
    training.fit(
        model, tokenizer, data, None, config, str(tmp_path / "sft"), training.Reporter(None)
    )
    return str(training.save_adapter(model, tokenizer, str(tmp_path / "sft")))


@pytest.mark.slow
def test_after_sft_the_reference_is_the_sft_model_and_training_starts_from_it(tiny_model, tmp_path):
    from trl.trainer.utils import use_adapter

    adapter = sft_adapter(tiny_model, tmp_path)
    config = preference_config(tiny_model, max_steps=2, logging_steps=1)
    model, tokenizer, _ = training.load_model(config, adapter=adapter)
    trainer = training.make_trainer(
        model, tokenizer, dataset(pairs(8)), None, config, str(tmp_path), training.Reporter(None)
    )
    probe = pairs(2, start=50)
    sft = margin(plain_model(tiny_model, adapter), tokenizer, probe)
    base = margin(plain_model(tiny_model), tokenizer, probe)
    assert abs(sft - base) > 0.05, "the SFT steps changed nothing to tell the two apart"
    with use_adapter(model, "ref"):  # how TRL scores the reference
        assert margin(model, tokenizer, probe) == pytest.approx(sft, abs=1e-4)
    assert margin(model, tokenizer, probe) == pytest.approx(sft, abs=1e-4)  # the policy, too

    trainer.train()
    first = next(row for row in trainer.state.log_history if "rewards/chosen" in row)
    # the first step scores the policy before any update: equal to its reference, rewards zero
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-4)
    assert first["rewards/rejected"] == pytest.approx(0, abs=1e-4)
    with use_adapter(model, "ref"):  # the reference stays the SFT model while the policy moves
        assert margin(model, tokenizer, probe) == pytest.approx(sft, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_orpo_and_kto_train_and_log_rewards(method, tiny_model, tmp_path):
    config = preference_config(tiny_model, method=method, max_steps=4, beta=0.2)
    model, tokenizer, _ = training.load_model(config)
    data = dataset(pairs(16))
    if method == "kto":
        from ftkit.training.preference import unpaired

        data = unpaired(data).shuffle(seed=0)
    trainer, result = training.fit(
        model, tokenizer, data, None, config, str(tmp_path), training.Reporter(None)
    )
    assert result["global_step"] == 4 and trainer.args.beta == 0.2
    assert any("rewards/chosen" in row for row in trainer.state.log_history)
    assert ("ref" in model.peft_config) == (method == "kto")  # ORPO has no reference


def test_each_method_gets_its_own_settings_under_trls_names(tiny_model):
    from ftkit.training.trainer import trainer_args

    dpo = trainer_args(
        preference_config(tiny_model, beta=0.3, dpo_loss_type="ipo"), "/tmp/x", with_eval=False
    )
    assert type(dpo).__name__ == "DPOConfig" and dpo.beta == 0.3 and list(dpo.loss_type) == ["ipo"]
    kto = trainer_args(
        preference_config(tiny_model, method="kto", kto_desirable_weight=2.0),
        "/tmp/x",
        with_eval=False,
    )
    assert type(kto).__name__ == "KTOConfig" and kto.desirable_weight == 2.0
    assert kto.undesirable_weight == 1.0  # None: TRL's default
    orpo = trainer_args(preference_config(tiny_model, method="orpo"), "/tmp/x", with_eval=False)
    assert type(orpo).__name__ == "ORPOConfig" and orpo.max_length == 128


def run_parts(client, job, *parts):
    return json.loads(client.storage.read_text("runs", job.id, *parts))


def finished(job) -> dict:
    record = job.wait(timeout=300, progress=False)
    assert record["status"] == "completed", record["error"]
    return record


@pytest.mark.slow
def test_dpo_after_sft_through_resume_from_scores_against_the_sft_model(
    client, start_worker, tiny_model, tmp_path
):
    from ftkit.lineage import ADAPTER_FILES
    from ftkit.storage import Storage

    start_worker()
    common = dict(base_model=str(tiny_model), batch_size=4, max_seq_length=128)
    parent = client.submit(EXAMPLE_DATA, max_steps=8, learning_rate=1e-2, **common)
    finished(parent)
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(24))
    child = client.submit(
        data, method="dpo", resume_from=parent, max_steps=3, validation_split=0.2, **common
    )
    record = finished(child)
    assert record["started_from"] == "adapter"
    rows = child.metrics()
    first = next(row for row in rows if "rewards/chosen" in row)
    # Step 1 scores the policy before any update against the reference: the same model (the
    # SFT parent's adapter, as training starts), so both rewards are zero.
    assert first["step"] == 1
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-4)
    assert first["rewards/rejected"] == pytest.approx(0, abs=1e-4)
    trained = [row for row in rows if "loss" in row]  # the evaluation at the end has its own row
    assert trained[-1]["step"] == 3
    assert all(name in trained[-1] for name in ("rewards/margins", "rewards/accuracies"))
    assert any("eval_rewards/margins" in row for row in rows if row["step"] == 3)

    # The report's "before" margins are the SFT model's, measured here with plain peft on the
    # parent's adapter; its sample answers show the parent between base and tuned.
    local = tmp_path / "parent-adapter"
    for file in ADAPTER_FILES:
        client.storage.get_file(Storage.run_parts(parent.id, "adapter", file), local / file)
    result = run_parts(client, child, "result.json")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    sft_model = plain_model(tiny_model, str(local))
    for row in result["margins"]:
        prompt = next(p for p in pairs(24) if p["prompt"][0]["content"] == row["prompt"])
        assert row["before"] == pytest.approx(margin(sft_model, tokenizer, [prompt]), abs=1e-2)
        assert row["source"] == "held out"
    assert result["samples"] and all("parent job" in s for s in result["samples"])
    assert "rewards/margins" in result["result"]


@pytest.mark.slow
@pytest.mark.parametrize(  # one backend each: the store contract runs on both in test_jobs.py
    "method,settings", [("orpo", "sqlite"), ("kto", "redis")], indirect=["settings"]
)
def test_orpo_and_kto_jobs_train_and_report_their_rewards(
    method, client, start_worker, tiny_model, tmp_path
):
    start_worker()
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(16))
    job = client.submit(
        data,
        method=method,
        base_model=str(tiny_model),
        batch_size=4,
        max_seq_length=128,
        max_steps=3,
    )
    record = finished(job)
    assert record["result"]["global_step"] == 3
    rows = job.metrics()
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all("loss" in row for row in rows)
    assert any("rewards/chosen" in row for row in rows)
    report = json.loads(client.storage.read_text("runs", job.id, "report.ipynb"))
    assert report["metadata"]["papermill"]["exception"] is None
