"""The base model with LoRA attached, ready to train: which backend (unsloth on CUDA, else
transformers + peft), loaded how (4-bit, dtype), and, when a job continues a past one, its adapter's
weights, checked before they load (a folder from storage is untrusted input)."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..config import TrainConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def pick_backend(requested: str, devices: int = 1) -> str:
    """unsloth where a CUDA GPU and unsloth are present (or asked for), else transformers + peft;
    always transformers + peft on several devices (unsloth trains on one)."""
    from .device import choose_backend, probe

    machine = probe(import_unsloth=requested != "hf" and devices == 1)
    return choose_backend(requested, machine, devices=devices)


def check_base_model(name: str) -> None:
    """Fail early and clearly when the base model can be neither found on disk nor fetched."""
    looks_local = name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name))
    if looks_local and not (Path(name).expanduser() / "config.json").is_file():
        raise FileNotFoundError(
            f"base model {name!r} not found: no folder with a config.json at that path"
        )
    if not looks_local and os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise FileNotFoundError(
                f"base model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                "download it on a machine with access or pass a local folder"
            )


def quiet_progress_bars() -> None:
    """No progress-bar widgets in the report: it must read the same without ftkit or ipywidgets."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load_model(config: TrainConfig, adapter: str = "", *, device_map: Any = None):
    """The base model with LoRA attached, its tokenizer, and a summary for the report. With
    ``adapter`` (a past job's adapter folder, staged by the worker) the LoRA starts from its
    weights instead of from zero. ``device_map`` places the weights as transformers does (the
    trainer places them otherwise)."""
    import torch

    from .device import choose_4bit, choose_backend, choose_dtype, probe

    started = time.perf_counter()
    # every refusal (unsloth or 4-bit where the worker cannot) comes before any model loads
    machine = probe(import_unsloth=config.backend != "hf" and config.devices == 1)
    backend = choose_backend(config.backend, machine, devices=config.devices)
    four_bit = choose_4bit(config.load_in_4bit, machine)
    dtype = getattr(torch, choose_dtype(machine))
    from transformers import set_seed  # after unsloth, which patches transformers on import

    imported = time.perf_counter()  # a warm kernel imported all this before the job
    check_base_model(config.base_model)
    if adapter:
        check_adapter_config(adapter, config)  # before the base model loads: a quick refusal
    quiet_progress_bars()
    set_seed(config.seed)
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(config, dtype, four_bit)
    else:
        model, tokenizer = _load_hf(config, dtype, four_bit, device_map)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter:
        load_adapter_weights(model, adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    info = {
        "base_model": config.base_model,
        "backend": backend + (" (unsloth trains on one device)" if config.devices > 1 else ""),
        "device": machine.name if machine.cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "quantization": "4-bit" if getattr(model, "is_loaded_in_4bit", False) else "none",
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total if total else 0.0,
        "import_seconds": round(imported - started, 3),
        "load_seconds": round(time.perf_counter() - imported, 3),
    }
    if adapter:
        info["starts from"] = (
            f"job {Path(adapter).name}'s adapter (no checkpoint kept: fresh optimizer)"
        )
    return model, tokenizer, info


def check_adapter_config(adapter: str, config: TrainConfig) -> None:
    """The adapter's own settings (a JSON file from storage: read as data, size-bounded) must
    give this run's LoRA shape; the client checked the parent's record at submit, this checks
    what was actually saved."""
    import json

    path = Path(adapter) / "adapter_config.json"
    if path.stat().st_size > 1_000_000:
        raise ValueError(f"{path.name} of job {Path(adapter).name}'s adapter is over 1 MB")
    saved = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(saved, dict):
        raise ValueError(f"{path.name} of job {Path(adapter).name}'s adapter is not an object")
    for theirs, ours in (("r", "lora_r"), ("lora_alpha", "lora_alpha")):
        if saved.get(theirs) != getattr(config, ours):
            raise ValueError(
                f"job {Path(adapter).name}'s adapter has {theirs}={saved.get(theirs)!r}, this "
                f"run {ours}={getattr(config, ours)!r}: it loads only into the same LoRA shape"
            )


def load_adapter_weights(model, adapter: str) -> None:
    """Copy a saved adapter's weights (safetensors only: no pickle) into the model's fresh LoRA,
    which stays trainable. Every LoRA weight must be there with its shape, and nothing else: an
    adapter over other modules is refused, not half-loaded."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    job = Path(adapter).name
    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"), device="cpu")
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    missing = sorted(expected.keys() - weights.keys())
    extra = sorted(weights.keys() - expected.keys())
    wrong = sorted(
        k for k in expected.keys() & weights.keys() if tuple(weights[k].shape) != expected[k]
    )
    if missing or extra or wrong:
        said = [
            f"{len(missing)} of this run's LoRA weights missing (e.g. {missing[0]})"
            if missing
            else "",
            f"{len(extra)} weights for modules this run has no LoRA on (e.g. {extra[0]})"
            if extra
            else "",
            f"{wrong[0]} has shape {tuple(weights[wrong[0]].shape)}, this run {expected[wrong[0]]}"
            if wrong
            else "",
        ]
        raise ValueError(
            f"job {job}'s adapter does not fit this run's LoRA: {'; '.join(s for s in said if s)}. "
            "It continues only with the same base model, lora_r and target modules"
        )
    unexpected = getattr(set_peft_model_state_dict(model, weights), "unexpected_keys", [])
    if unexpected:  # checked above; here only should peft's naming ever change
        raise ValueError(f"job {job}'s adapter did not load: {unexpected[:3]}")


def _load_unsloth(config: TrainConfig, dtype, load_in_4bit: bool):
    """unsloth's documented recipe: FastLanguageModel.from_pretrained, then get_peft_model."""
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config.base_model,
        max_seq_length=config.max_seq_length,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        target_modules=LORA_TARGETS,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=config.seed,
    )
    return model, tokenizer


def _load_hf(config: TrainConfig, dtype, load_in_4bit: bool, device_map: Any = None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A model folder is untrusted input: weights only from safetensors (no pickle), no remote code.
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": False}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            # FSDP + QLoRA: the packed 4-bit weights stored in the dtype FSDP flattens (peft's recipe)
            **({"bnb_4bit_quant_storage": dtype} if config.sharding == "fsdp" else {}),
        )
        if config.devices > 1 and config.sharding == "none" and device_map is None:
            # data-parallel: each training process's copy on its own GPU (torchrun's LOCAL_RANK)
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated is_gradient_checkpointing itself: nothing ftkit
        # passes causes it, so only that message, only here, stays out of the report
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return get_peft_model(model, lora), tokenizer
