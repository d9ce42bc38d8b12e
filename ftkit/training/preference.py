"""Tuning on preferences: the data as TRL's preference trainers take it (conversational pairs, or
labelled answers for KTO), the trainer of the job's method (DPO, ORPO, KTO; unsloth's patched ones
on its backend) with its settings, and the reference model.

The reference is never a second copy of the weights. TRL, given a peft model and no ref_model,
copies the LoRA adapter ("default") into a frozen adapter named "ref" when the trainer is built
(trl >= 1.7, DPO and KTO) and scores the reference through it: a fresh LoRA is zero, so the
reference is the base model; a LoRA loaded from a past job's adapter (``resume_from``) makes the
reference that job's model, the SFT parent. ORPO has no reference. ``drop_reference`` removes the
"ref" adapter where a trainer is built again (an out-of-memory retry) or the adapter is saved."""

from __future__ import annotations

import warnings
from typing import Any

from ..config import TrainConfig
from ..core.rules import REWARD_METRICS

REFERENCE = "ref"  # the adapter name TRL gives the frozen reference copy


def trainer_classes(method: str, backend: str) -> tuple[type, type]:
    """(Trainer, Config) of TRL for ``method``, from where this TRL keeps them: ORPO in
    trl.experimental.orpo (1.7 and later), KTO in trl from 1.14 (trl.experimental.kto before,
    where ``trl.KTOTrainer`` is a deprecated alias). unsloth patches them first on its backend."""
    import importlib.util

    if backend == "unsloth":
        patch_for_unsloth(method)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig
    with warnings.catch_warnings():
        # trl.experimental says so on import; ftkit pins what it uses there and tests it
        warnings.filterwarnings("ignore", "You are importing from 'trl.experimental'")
        if method == "orpo":
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            return ORPOTrainer, ORPOConfig
        if method == "kto":
            if importlib.util.find_spec("trl.experimental.kto.kto_trainer") is not None:
                from trl.experimental.kto.kto_config import KTOConfig
                from trl.experimental.kto.kto_trainer import KTOTrainer

                return KTOTrainer, KTOConfig
            from trl import KTOConfig, KTOTrainer

            return KTOTrainer, KTOConfig
    raise ValueError(f"method={method!r} is not a preference method")


def patch_for_unsloth(method: str) -> None:
    """unsloth's documented recipe for DPO and ORPO: PatchDPOTrainer() before the trainer is
    built (newer unsloth patches TRL on import and keeps this as a no-op)."""
    import unsloth

    patch = getattr(unsloth, "PatchDPOTrainer", None)
    if patch is not None and method in ("dpo", "orpo"):
        patch()


def method_settings(config: TrainConfig) -> dict[str, Any]:
    """The method's own settings under TRL's names; an unset one (None) is left to TRL."""
    settings = {
        "beta": config.beta,
        "loss_type": [config.dpo_loss_type] if config.dpo_loss_type else None,
        "desirable_weight": config.kto_desirable_weight,
        "undesirable_weight": config.kto_undesirable_weight,
    }
    return {name: value for name, value in settings.items() if value is not None}


def preference_args(config_class: type, common: dict[str, Any], config: TrainConfig) -> Any:
    """TRL's config for the method: the settings every trainer shares (``common``), the length
    limit and the method's own settings."""
    return config_class(**common, max_length=config.max_seq_length, **method_settings(config))


def preference_trainer(model, config: TrainConfig) -> tuple[type, dict[str, Any]]:
    """The method's trainer class, and what it takes beyond SFTTrainer's arguments: its reference
    is the model with the adapter switched off (or the parent's adapter: see the module's
    docstring); ORPO has none."""
    from .model import pick_backend

    drop_reference(model)  # a trainer built again (an out-of-memory retry) copies it afresh
    trainer_class, _ = trainer_classes(config.method, pick_backend(config.backend, config.devices))
    return trainer_class, ({} if config.method == "orpo" else {"ref_model": None})


def drop_reference(model) -> None:
    """Remove TRL's "ref" adapter, if the model has one."""
    if REFERENCE in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE)


def has_reference(model) -> bool:
    return REFERENCE in getattr(model, "peft_config", {})


def prepare_preference_data(
    dataset_path: str,
    dataset_format: str,
    tokenizer,
    config: TrainConfig,
    columns: dict[str, str] | None = None,
):
    """The examples in TRL's conversational shape (pairs; labelled answers for KTO, pairs
    unpaired), split for eval, and a summary for the report."""
    from datasets import Dataset

    from ..data import read_examples

    examples = list(read_examples(dataset_path, format=dataset_format, columns=columns or None))
    if not examples:
        raise ValueError(f"no usable preference examples in {dataset_path}")
    data = Dataset.from_list(examples)
    eval_data = None
    if config.validation_split > 0:
        split = data.train_test_split(test_size=config.validation_split, seed=config.seed)
        data, eval_data = split["train"], split["test"]
    pairs = "chosen" in data.column_names
    if config.method == "kto":
        if pairs:
            data = unpaired(data)
            eval_data = unpaired(eval_data) if eval_data is not None else None
        # KTO reads its rows in order (its KL term pairs neighbours): mixed, not grouped by label
        data = data.shuffle(seed=config.seed)
    lengths = [example_tokens(tokenizer, example) for example in data]
    summary = {
        "examples": len(data),
        "eval_examples": len(eval_data) if eval_data is not None else 0,
        "pairs": len(examples) if pairs else 0,
        "tokens": sum(lengths),
        "max_tokens": max(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
    }
    return data, eval_data, summary


def unpaired(data):
    """KTO's rows from pairs: the chosen answer labelled good, the rejected one bad."""
    from trl.data_utils import unpair_preference_dataset

    return unpair_preference_dataset(data)


def example_tokens(tokenizer, example: dict[str, Any]) -> int:
    """Tokens of one example as trained: the prompt with each of its answers."""
    answers = [example[k] for k in ("chosen", "rejected", "completion") if k in example]
    return sum(
        len(
            tokenizer.apply_chat_template(example["prompt"] + answer, return_dict=True)["input_ids"]
        )
        for answer in answers
    )


def final_rewards(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of each reward metric, for the result table and result.json."""
    last: dict[str, float] = {}
    for row in log_history:
        last.update({k: row[k] for k in REWARD_METRICS if k in row})
    return last
