"""Preference jobs (DPO, ORPO, KTO) behave as SFT jobs do where things go wrong: a DPO job after
SFT resumes from its own checkpoint after its worker is killed and still scores against the SFT
parent, a job killed after training ended trains no step again, auto_batch_size halves the batch
(KTO's no lower than 2), and a running preference job stops when cancelled or past its timeout.
Real workers, kernels and TRL trainers on the tiny model, with the shipped example pairs."""

from __future__ import annotations

import json
import signal
import time

import pytest

from capped_llama import register_capped_llama
from conftest import EXAMPLE_DATA, REPO, redis_only, sqlite_only, wait_for
from ftkit.lineage import ADAPTER_FILES, newest_checkpoint
from ftkit.storage import Storage
from slow_jobs import (
    FAST,
    assert_history_continues,
    cancel_mid_training,
    measured_seconds_per_step,
    step_of,
    steps_past,
)

PAIRS = REPO / "examples" / "preference_data.jsonl"  # 46 pairs, shipped in the package too
DPO_JOB = dict(
    method="dpo",
    batch_size=4,
    gradient_accumulation_steps=2,
    max_seq_length=256,
    learning_rate=1e-3,
    save_steps=2,
)

pytestmark = pytest.mark.timeout(1800)


def preference_job(client, tiny_model, **overrides):
    return client.submit(PAIRS, **{"base_model": str(tiny_model), **DPO_JOB, **overrides})


@pytest.fixture(scope="module")
def dpo_seconds_per_step(tiny_model, tmp_path_factory) -> float:
    """One step of DPO_JOB on this machine."""
    folder = tmp_path_factory.mktemp("dpo-step-time")
    return measured_seconds_per_step(tiny_model, folder, DPO_JOB, PAIRS, "preference")


# -- the reference, measured outside ftkit ---------------------------------------------------------
def staged_adapter(client, job_id: str, dest) -> str:
    """A job's saved adapter, fetched from storage into ``dest``."""
    for file in ADAPTER_FILES:
        client.storage.get_file(Storage.run_parts(job_id, "adapter", file), dest / file)
    return str(dest)


def mean_chosen_logp(tiny_model, tokenizer, rows, adapter=None) -> float:
    """The mean over ``rows`` of log p(chosen | prompt) under the chat template, summed over the
    answer's tokens, with plain transformers, peft and torch: apart from ftkit's code."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(model, adapter) if adapter else model
    model.eval()
    total = 0.0
    for row in rows:
        head = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        ids = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], return_dict=True)[
            "input_ids"
        ]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logps = torch.log_softmax(logits.float(), dim=-1)
        total += float(sum(logps[i - 1, ids[i]] for i in range(len(head), len(ids))))
    return total / len(rows)


def held_out_pairs(validation_split: float, seed: int) -> list[dict]:
    """The pairs a job with this split holds out for its evaluation (datasets' own split, as the
    job makes it), in TRL's conversational shape."""
    from datasets import Dataset

    from ftkit.data import read_examples

    examples = list(read_examples(str(PAIRS), format="preference"))
    return list(
        Dataset.from_list(examples).train_test_split(test_size=validation_split, seed=seed)["test"]
    )


def saved_step(client, job) -> int:
    """The step of the job's newest complete checkpoint in storage (0: none yet)."""
    name = newest_checkpoint(client.storage, job.id)
    return int(name.split("-")[1]) if name else 0


@pytest.mark.slow
@redis_only
def test_a_dpo_job_after_sft_resumes_after_its_worker_is_killed_and_keeps_the_sft_reference(
    client, start_worker, tiny_model, dpo_seconds_per_step, tmp_path
):
    from transformers import AutoTokenizer

    doomed = start_worker(**FAST)
    common = dict(base_model=str(tiny_model), batch_size=4, max_seq_length=256)
    parent = client.submit(EXAMPLE_DATA, max_steps=6, learning_rate=1e-2, **common)
    assert parent.wait(timeout=600, progress=False)["status"] == "completed"
    total = steps_past(4, dpo_seconds_per_step)
    # 4 of the 46 pairs held out: one evaluation batch, at training's end (eval_steps=0)
    job = preference_job(
        client, tiny_model, resume_from=parent, beta=0.1, max_steps=total, validation_split=0.08
    )
    wait_for(lambda: saved_step(client, job) >= 4, 600, "a checkpoint at step 4 or later", 0.05)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    seen = step_of(job)
    assert seen < total, "the kill came after training had ended"
    start_worker(**FAST)
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed" and final["attempt"] == 2, final["error"]
    assert final["started_from"] == "adapter"  # the parent's adapter, as it first started
    logs = "\n".join(job.logs(1000))
    assert "resuming from checkpoint-" in logs and "starting from job" in logs, logs
    assert client.storage.trained_markers(job.id) == ["2.trained"]
    trained = [m["step"] for m in job.metrics() if "loss" in m]  # apart from the eval's row
    assert trained == list(range(1, total + 1)), trained

    # The evaluation at training's end (attempt 2, after the resume) scored the final policy
    # against its reference: rewards/chosen = beta * (log p_policy - log p_ref) of the chosen
    # answers, averaged over the held-out pairs. Measured here, that reference is the SFT parent.
    evaluated = [m for m in job.metrics() if "eval_rewards/chosen" in m]
    assert evaluated and evaluated[-1]["step"] == total, evaluated
    reward = evaluated[-1]["eval_rewards/chosen"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = held_out_pairs(0.08, seed=3407)
    assert len(rows) == 4
    tuned = mean_chosen_logp(
        tiny_model, tokenizer, rows, staged_adapter(client, job.id, tmp_path / "tuned")
    )
    sft = mean_chosen_logp(
        tiny_model, tokenizer, rows, staged_adapter(client, parent.id, tmp_path / "sft")
    )
    base = mean_chosen_logp(tiny_model, tokenizer, rows)
    against_sft, against_base = 0.1 * (tuned - sft), 0.1 * (tuned - base)
    assert abs(against_sft - against_base) > 0.05, "the SFT steps changed too little to tell"
    assert reward == pytest.approx(against_sft, abs=0.01), (reward, against_sft, against_base)


@pytest.mark.slow
@sqlite_only
def test_a_dpo_job_killed_after_training_ended_trains_no_step_again(
    client, start_worker, tiny_model
):
    # Training's end leaves a marker; the report's sample answers (twenty prompts, before and
    # after) and its margins table keep the job running after it: the kill lands between.
    doomed = start_worker(**FAST)
    prompts = [f"Question {i}: who are you?" for i in range(20)]
    job = preference_job(client, tiny_model, max_steps=6, save_steps=0, sample_prompts=prompts)
    last = Storage.run_parts(job.id, "checkpoints", "checkpoint-6", "complete")
    wait_for(lambda: client.storage.exists(*last), 600, "training's end", interval=0.05)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    assert job.status()["status"] != "completed", "the kill came after the job had ended"
    start_worker(**FAST)
    final = job.wait(timeout=600, progress=False)
    assert final["status"] == "completed" and final["attempt"] == 2, final["error"]
    logs = "\n".join(job.logs(1000))
    assert "resuming from checkpoint-6" in logs
    assert "checkpoint-6 is training's end: no step left" in logs and "step 7" not in logs
    assert client.storage.trained_markers(job.id) == ["1.trained"]  # trained to its end once
    assert final["result"]["global_step"] == 6
    assert_history_continues(job, 6)
    # the run resumed at the end still reports the rewards the first run logged
    saved = json.loads(client.storage.read_text("runs", job.id, "result.json"))["result"]
    assert "rewards/margins" in saved and "rewards/accuracies" in saved, saved


# -- out of memory ---------------------------------------------------------------------------------
def capped_copy(tiny_model, dest, max_rows: int):
    """The tiny model's weights and tokenizer as a model with room for ``max_rows`` sequences."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    config_cls, model_cls = register_capped_llama()
    tiny = LlamaForCausalLM.from_pretrained(tiny_model)
    capped = model_cls(config_cls(max_rows=max_rows, **tiny.config.to_diff_dict()))
    capped.load_state_dict(tiny.state_dict())
    capped.save_pretrained(dest)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(dest)
    return dest, model_cls


def fit_pairs(model_dir, tmp_path, **overrides):
    from ftkit import training
    from ftkit.config import TrainConfig

    settings = dict(method="dpo", max_steps=2, max_seq_length=128, learning_rate=1e-3)
    config = TrainConfig(base_model=str(model_dir), **{**settings, **overrides})
    model, tokenizer, _ = training.load_model(config)
    data, _, _ = training.prepare_data(str(PAIRS), "preference", tokenizer, config)
    return training.fit(
        model, tokenizer, data, None, config, str(tmp_path), training.Reporter(None)
    )


@pytest.mark.slow
def test_auto_batch_size_retries_a_dpo_job_at_half_the_batch_keeping_the_effective_batch(
    tiny_model, tmp_path
):
    # DPO runs a pair's chosen and rejected answers in one forward pass: a batch of n pairs is
    # 2n rows. Room for 4 rows: 8 pairs do not fit, nor 4; 2 do, accumulated 12 times.
    model_dir, model_cls = capped_copy(tiny_model, tmp_path / "capped", max_rows=4)
    model_cls.batches.clear()
    trainer, result = fit_pairs(
        model_dir,
        tmp_path / "run",
        batch_size=8,
        gradient_accumulation_steps=3,
        auto_batch_size=True,
    )
    assert model_cls.batches[:2] == [16, 8] and set(model_cls.batches[2:]) <= {4}
    assert (result["batch_size"], result["gradient_accumulation_steps"]) == (2, 12)
    args = trainer.args
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8 * 3
    assert result["global_step"] == 2 and "ref" in trainer.model.peft_config
    rewarded = [row for row in trainer.state.log_history if "rewards/chosen" in row]
    # the retry started again from the fresh adapter: the first step's policy is its reference
    assert rewarded and rewarded[0]["rewards/chosen"] == pytest.approx(0, abs=1e-4)


@pytest.mark.slow
def test_auto_batch_size_stops_halving_a_kto_batch_at_two(tiny_model, tmp_path):
    from ftkit.errors import OutOfMemory

    # KTO's KL term compares answers within a batch: below 2 it is no KTO. Room for 1 row.
    model_dir, model_cls = capped_copy(tiny_model, tmp_path / "capped", max_rows=1)
    model_cls.batches.clear()
    with pytest.raises(OutOfMemory, match="even after retrying.*batch_size=2 and max_seq"):
        fit_pairs(model_dir, tmp_path / "run", method="kto", batch_size=4, auto_batch_size=True)
    assert model_cls.batches and min(model_cls.batches) == 2, model_cls.batches


# -- cancel and timeout ----------------------------------------------------------------------------
@pytest.mark.slow
@sqlite_only
def test_a_running_kto_job_stops_within_seconds_when_cancelled_and_keeps_its_report(
    client, start_worker, tiny_model
):
    start_worker()
    job = preference_job(client, tiny_model, method="kto", max_steps=100_000, save_steps=0)
    cancel_mid_training(job, from_step=2)  # as for SFT
    after = preference_job(client, tiny_model, method="kto", max_steps=2)
    assert after.wait(timeout=300, progress=False)["status"] == "completed", (
        "the worker takes the next job"
    )


@pytest.mark.slow
@redis_only
def test_a_running_orpo_job_past_its_timeout_fails_as_timed_out(
    client, start_worker, tiny_model, dpo_seconds_per_step
):
    start_worker(**FAST)
    # How long this machine takes from submit to a job's first step (kernel start, loading,
    # tokenizing), measured on a short job: the timeout is that twice over plus ten steps, so it
    # lands while the job trains.
    submitted = time.monotonic()
    probe = preference_job(client, tiny_model, method="orpo", max_steps=1, save_steps=0)
    wait_for(lambda: step_of(probe) >= 1, 600, "the short job's first step", interval=0.05)
    ready = time.monotonic() - submitted
    assert probe.wait(timeout=300, progress=False)["status"] == "completed"
    minutes = round((2 * ready + 10 * dpo_seconds_per_step) / 60, 2) + 0.01
    max_steps = 100_000
    job = preference_job(
        client,
        tiny_model,
        method="orpo",
        max_steps=max_steps,
        save_steps=0,
        timeout_minutes=minutes,
    )
    final = job.wait(timeout=120 + 2 * minutes * 60, progress=False)
    assert final["status"] == "failed" and final["error"] == f"timed out after {minutes:g} minutes"
    steps = [m["step"] for m in job.metrics() if m.get("step")]
    assert steps and max(steps) < max_steps, "it timed out while training"
    assert final["report"]
