"""The CUDA worker's decisions, checked where a CPU can check them.

Backend, dtype and 4-bit choices are pure functions of a ``Machine``: each is tested on this real
machine (``probe()``) and on machines described by hand (an H200, a T4, a CUDA box without
unsloth or bitsandbytes). Out-of-memory is tested with a real ``torch.OutOfMemoryError`` raised
inside a real training step, by a model that holds only so many sequences at once."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from capped_llama import register_capped_llama
from conftest import EXAMPLE_DATA
from ftkit import training
from ftkit.config import TrainConfig
from ftkit.errors import ConfigError, OutOfMemory
from ftkit.training.device import (
    BITSANDBYTES_FLOOR,
    Machine,
    choose_4bit,
    choose_backend,
    choose_dtype,
    installed_version,
    probe,
    usable,
)

H200 = Machine(cuda=True, capability=(9, 0), name="NVIDIA H200", unsloth=True, bitsandbytes=True)
A100_PLAIN = Machine(cuda=True, capability=(8, 0), name="NVIDIA A100-SXM4-80GB")
T4 = Machine(cuda=True, capability=(7, 5), name="Tesla T4", unsloth=True, bitsandbytes=True)
CPU = Machine(cuda=False)


# -- the decisions, on this machine ---------------------------------------------------------------
def test_probe_reads_this_machine():
    machine = probe()
    assert machine.cuda == torch.cuda.is_available()
    assert machine.bitsandbytes == usable(installed_version("bitsandbytes"), BITSANDBYTES_FLOOR)
    if not machine.cuda:
        assert machine.name == "CPU" and machine.capability is None and not machine.unsloth


def test_auto_on_this_machine_matches_what_it_offers():
    machine = probe()
    expected = "unsloth" if machine.cuda and machine.unsloth else "hf"
    assert choose_backend("auto", machine) == expected == training.pick_backend("auto")
    if not machine.cuda:
        assert choose_dtype(machine) == "float32"
        assert choose_4bit(None, machine) is False


# -- the decisions, on machines described by hand -------------------------------------------------
@pytest.mark.parametrize(
    "machine,backend,dtype,four_bit",
    [
        (H200, "unsloth", "bfloat16", True),
        (A100_PLAIN, "hf", "bfloat16", False),  # CUDA, but neither unsloth nor bitsandbytes
        (T4, "unsloth", "float16", True),  # torch may call a T4 bf16-capable (emulated): not here
        (CPU, "hf", "float32", False),
    ],
)
def test_auto_choices(machine, backend, dtype, four_bit):
    assert choose_backend("auto", machine) == backend
    assert choose_dtype(machine) == dtype
    assert choose_4bit(None, machine) is four_bit
    assert choose_backend("hf", machine) == "hf" and choose_4bit(False, machine) is False


def test_unsloth_asked_for_without_cuda_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"backend='unsloth' needs a CUDA GPU.*backend='auto'"):
        choose_backend("unsloth", CPU)


def test_unsloth_asked_for_where_it_does_not_import_says_why():
    broken = Machine(cuda=True, capability=(9, 0), unsloth_error="ImportError: no module xformers")
    with pytest.raises(ConfigError, match=r"does not import.*xformers.*ftkit\[unsloth\]"):
        choose_backend("unsloth", broken)
    assert choose_backend("auto", broken) == "hf"


def test_4bit_asked_for_needs_cuda_and_bitsandbytes():
    assert choose_4bit(True, H200) is True
    with pytest.raises(ConfigError, match=r"load_in_4bit=True.*no CUDA device.*load_in_4bit=False"):
        choose_4bit(True, CPU)
    with pytest.raises(ConfigError, match=r"needs bitsandbytes.*NVIDIA A100.*ftkit\[qlora\]"):
        choose_4bit(True, A100_PLAIN)


@pytest.mark.skipif(
    torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
    reason="this machine can load in 4 bits",
)
def test_a_4bit_job_on_this_machine_is_refused_before_any_model_loads(tmp_path):
    # the base model does not exist: the 4-bit refusal must come first
    config = TrainConfig(base_model=str(tmp_path / "no-model"), load_in_4bit=True)
    with pytest.raises(ConfigError, match="load_in_4bit=True"):
        training.load_model(config)


def test_load_in_4bit_takes_true_false_or_none():
    assert TrainConfig().load_in_4bit is None
    assert TrainConfig(load_in_4bit=False).load_in_4bit is False
    with pytest.raises(ConfigError, match="load_in_4bit"):
        TrainConfig(load_in_4bit="yes")  # type: ignore[arg-type]


# -- out of memory --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capped_model(tiny_model, tmp_path_factory):
    """The tiny model's weights and tokenizer, as a model with room for 2 sequences."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    config_cls, model_cls = register_capped_llama()
    tiny = LlamaForCausalLM.from_pretrained(tiny_model)
    capped = model_cls(config_cls(max_rows=2, **tiny.config.to_diff_dict()))
    capped.load_state_dict(tiny.state_dict())
    dest = tmp_path_factory.mktemp("models") / "capped-llama"
    capped.save_pretrained(dest)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(dest)
    return dest, model_cls


def fit(model_dir, tmp_path, **overrides):
    config = TrainConfig(
        base_model=str(model_dir), max_steps=3, max_seq_length=64, learning_rate=1e-3, **overrides
    )
    model, tokenizer, _ = training.load_model(config)
    data, _, _ = training.prepare_data(str(EXAMPLE_DATA), "chat", tokenizer, config)
    return training.fit(
        model, tokenizer, data, None, config, str(tmp_path), training.Reporter(None)
    )


def test_the_capped_model_trains_within_its_room(capped_model, tmp_path):
    model_dir, model_cls = capped_model
    model_cls.batches.clear()
    trainer, result = fit(model_dir, tmp_path, batch_size=2)
    assert result["global_step"] == 3 and set(model_cls.batches) == {2}


def test_out_of_memory_ends_the_job_naming_batch_size_and_sequence_length(capped_model, tmp_path):
    model_dir, _ = capped_model
    with pytest.raises(OutOfMemory) as failure:
        fit(model_dir, tmp_path, batch_size=4)
    message = str(failure.value)
    assert "in the first training step at batch_size=4 and max_seq_length=64" in message
    assert "auto_batch_size=True" in message and "load_in_4bit=True" in message
    assert "torch said: CUDA out of memory" in message  # the allocator's own words are kept


@pytest.mark.slow
def test_auto_batch_size_retries_at_half_the_batch_keeping_the_effective_batch(
    capped_model, tmp_path
):
    model_dir, model_cls = capped_model
    model_cls.batches.clear()
    trainer, result = fit(
        model_dir, tmp_path, batch_size=8, gradient_accumulation_steps=3, auto_batch_size=True
    )
    # 8 rows do not fit, nor 4; 2 do, accumulated 12 times: 24 sequences per step, as asked
    assert model_cls.batches[:2] == [8, 4] and set(model_cls.batches[2:]) == {2}
    assert (result["batch_size"], result["gradient_accumulation_steps"]) == (2, 12)
    args = trainer.args
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8 * 3
    assert result["global_step"] == 3 and len(model_cls.batches[2:]) == 3 * 12
    assert all("loss" in row for row in trainer.state.log_history[:3])


def test_auto_batch_size_still_fails_clearly_when_one_sequence_does_not_fit(capped_model, tmp_path):
    from transformers import AutoConfig

    model_dir, _ = capped_model
    config = AutoConfig.from_pretrained(model_dir)
    config.max_rows = 0  # not even one sequence fits
    config.save_pretrained(model_dir)
    try:
        with pytest.raises(OutOfMemory, match="even after retrying.*batch_size=1 and max_seq"):
            fit(model_dir, tmp_path, batch_size=2, auto_batch_size=True)
    finally:
        config.max_rows = 2
        config.save_pretrained(model_dir)


@pytest.mark.parametrize(
    "batch,smaller", [(8, 4), (6, 3), (3, 1), (2, 1), (1, None), (12, 6), (7, 1)]
)
def test_smaller_batch_divides_the_batch_exactly(batch, smaller):
    assert training.smaller_batch(batch) == smaller


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
@pytest.mark.skipif(
    torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
    reason="this machine can load in 4 bits",
)
def test_a_4bit_job_on_a_cpu_worker_fails_at_once_saying_what_to_change(
    client, start_worker, tiny_model
):
    start_worker()
    job = client.submit(EXAMPLE_DATA, base_model=str(tiny_model), max_steps=2, load_in_4bit=True)
    final = job.wait(timeout=180, progress=False)
    assert final["status"] == "failed" and final["current_step"] in (None, 0)
    assert "load_in_4bit=True" in final["error"] and "no CUDA device" in final["error"]


def test_a_bitsandbytes_older_than_transformers_accepts_counts_as_none(tmp_path, monkeypatch):
    """transformers 5 refuses 4-bit loading below bitsandbytes 0.46.1: such an install is no
    4-bit ability, and a job asking for it is told which version it has and which it needs."""
    info = tmp_path / "bitsandbytes-0.45.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.45.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    machine = probe(import_unsloth=False)
    assert machine.bitsandbytes_version == "0.45.5" and not machine.bitsandbytes
    a100 = Machine(cuda=True, capability=(8, 0), name="NVIDIA A100", bitsandbytes_version="0.45.5")
    assert choose_4bit(None, a100) is False  # unset: 16 bits, not a refusal at load time
    with pytest.raises(ConfigError, match=r"bitsandbytes>=0.46.1, and bitsandbytes 0.45.5 is"):
        choose_4bit(True, a100)
