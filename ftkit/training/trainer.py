"""Data to trainer to trained adapter: the tokenized data sets, the SFT trainer with ftkit's
callback, the training run (resumed from a checkpoint or not), an out-of-memory ended with a message
that says what to change (or retried at a smaller batch), and the saved adapter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .callback import TrainedAlready, progress_callback
from .reporter import Reporter


def prepare_data(
    dataset_path: str,
    dataset_format: str,
    tokenizer,
    config: TrainConfig,
    columns: dict[str, str] | None = None,
):
    """Tokenized train (and eval) sets with label masks, and a summary for the report. columns is
    the upload's mapping {ftkit's name: the file's column}, applied as validation applied it.
    A preference method's sets are conversational examples: its trainer tokenizes them."""
    from ..data.render import build_dataset

    if config.preference:
        from .preference import prepare_preference_data

        return prepare_preference_data(dataset_path, dataset_format, tokenizer, config, columns)

    data = build_dataset(
        dataset_path,
        format=dataset_format,
        tokenizer=tokenizer,
        max_seq_length=config.max_seq_length,
        train_on_inputs=config.train_on_inputs,
        columns=columns or None,
    )
    if len(data) == 0:
        raise ValueError(f"no usable training examples in {dataset_path} after tokenization")
    eval_data = None
    if config.validation_split > 0:
        split = data.train_test_split(test_size=config.validation_split, seed=config.seed)
        data, eval_data = split["train"], split["test"]
    lengths = [len(ids) for ids in data["input_ids"]]
    summary = {
        "examples": len(data),
        "eval_examples": len(eval_data) if eval_data is not None else 0,
        "tokens": sum(lengths),
        "max_tokens": max(lengths),
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "trained_tokens": sum(sum(1 for t in labels if t != -100) for labels in data["labels"]),
    }
    return data, eval_data, summary


def make_trainer(
    model,
    tokenizer,
    train_data,
    eval_data,
    config: TrainConfig,
    output_dir: str,
    reporter: Reporter,
    callbacks: list[Any] | tuple[Any, ...] = (),
):
    """The method's trainer (SFT, or DPO, ORPO, KTO) over the data, reporting through
    ``reporter`` (ftkit's callback in place of the trainer's own printer) and any further
    ``callbacks`` (the experiment trackers': training/trackers.py)."""
    from transformers.trainer_callback import PrinterCallback

    args = trainer_args(config, output_dir, with_eval=eval_data is not None)
    callbacks = [progress_callback(reporter), *callbacks]
    if config.preference:
        from .preference import preference_trainer

        trainer_class, extra = preference_trainer(model, config)
    else:
        from trl import SFTTrainer

        trainer_class, extra = SFTTrainer, {}
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # ftkit's callback prints one readable line per step
    return trainer


def trainer_args(config: TrainConfig, output_dir: str, *, with_eval: bool) -> Any:
    """The job's settings as TRL's config for its method (SFTConfig, DPOConfig, ...)."""
    if config.preference:
        from .model import pick_backend
        from .preference import preference_args, trainer_classes

        backend = pick_backend(config.backend, devices=config.devices)
        _, config_class = trainer_classes(config.method, backend)
        common = shared_args(config, output_dir, with_eval=with_eval, args_class=config_class)
        return preference_args(config_class, common, config)
    from trl import SFTConfig

    return SFTConfig(
        **shared_args(config, output_dir, with_eval=with_eval, args_class=SFTConfig),
        max_length=config.max_seq_length,
        packing=config.packing,
        padding_free=config.packing,
    )


def shared_args(
    config: TrainConfig, output_dir: str, *, with_eval: bool, args_class: type
) -> dict[str, Any]:
    """What every method's trainer is given: checkpoints under ``output_dir``, the dtype the
    machine supports, no progress bars, and none of transformers' reporting integrations: the
    job's trackers come as callbacks ftkit starts and guards (training/trackers.py)."""
    import torch

    from .device import Machine, choose_dtype

    use_cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability(0) if use_cuda else None
    dtype = choose_dtype(Machine(cuda=use_cuda, capability=capability))
    return dict(
        output_dir=str(Path(output_dir) / "checkpoints"),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        num_train_epochs=config.num_epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="linear",
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        eval_strategy=("steps" if config.eval_steps else "no") if with_eval else "no",
        eval_steps=config.eval_steps or None,
        seed=config.seed,
        data_seed=config.seed,
        **checkpointing_args(args_class),
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not use_cuda,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_only_model=False,
        **distributed_args(config, use_cuda),
    )


def distributed_args(config: TrainConfig, use_cuda: bool) -> dict[str, Any]:
    """How the trainer's processes talk when the job runs on several devices: NCCL between GPUs,
    gloo between CPU processes; with ``sharding="fsdp"`` accelerate's FSDP wraps each decoder layer
    and keeps LoRA's frozen and trained weights apart (``use_orig_params``), as peft documents."""
    if config.devices == 1:
        return {}
    out: dict[str, Any] = {
        "ddp_backend": "nccl" if use_cuda else "gloo",
        "ddp_find_unused_parameters": False,  # LoRA trains every adapter weight at every step
    }
    if config.sharding == "fsdp":
        out["fsdp"] = "full_shard auto_wrap"
        out["fsdp_config"] = {
            "use_orig_params": True,
            "cpu_ram_efficient_loading": True,
            "sync_module_states": True,
            "state_dict_type": "FULL_STATE_DICT",
        }
    return out


def checkpointing_args(args_class: type) -> dict[str, Any]:
    """Gradient checkpointing on (TRL's default), under the name this transformers knows:
    ``activation_checkpointing`` from 5.23 (where ``gradient_checkpointing`` is deprecated), the old
    name before. Chosen from the dataclass's own fields, so neither side warns."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(args_class)}
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {name: True}


def train(trainer, reporter: Reporter, resume_from_checkpoint: str | None = None) -> dict[str, Any]:
    """Run the trainer (from a checkpoint when resuming); the result says why it stopped early, if it did."""
    started = time.monotonic()
    if resume_from_checkpoint:
        reporter.log(f"resuming from {Path(resume_from_checkpoint).name}")
    try:
        output = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
        global_step, train_loss = output.global_step, output.training_loss
    except TrainedAlready:  # the checkpoint's weights and history are loaded: nothing to train
        reporter.log(f"{Path(str(resume_from_checkpoint)).name} is training's end: no step left")
        global_step = trainer.state.global_step
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        train_loss = sum(losses) / len(losses) if losses else None
    reporter.flush()
    strategy = getattr(trainer.args.eval_strategy, "value", trainer.args.eval_strategy)
    if reporter.stop_reason is None and trainer.eval_dataset is not None and strategy == "no":
        trainer.evaluate()  # eval_steps=0: once, at the end (logged as the last step's eval_loss)
        reporter.flush()  # its row, else buffered until a flush that never comes
    first = reporter.first_step_at
    return {
        "training_duration_seconds": round(time.monotonic() - started, 3),
        # the trainer's set-up and its first step (compiling kernels, say), timed apart
        "first_step_seconds": round(first - started, 3) if first and first > started else None,
        "global_step": global_step,
        "train_loss": train_loss,
        "stopped": reporter.stop_reason,
    }


def fit(
    model,
    tokenizer,
    train_data,
    eval_data,
    config: TrainConfig,
    output_dir: str,
    reporter: Reporter,
    resume_from_checkpoint: str | None = None,
    callbacks: list[Any] | tuple[Any, ...] = (),
):
    """make_trainer + train, ending an out-of-memory with a message that says what to change.

    With ``config.auto_batch_size`` it retries from the start (the adapter's weights restored) at a
    smaller batch with the accumulation raised by the same factor, so the effective batch, and with
    it the run's learning dynamics, stays the same. Returns ``(trainer, result)``."""
    import torch

    from ..errors import OutOfMemory

    # adapters are small: a copy costs little next to the base model
    start = trainable_weights(model) if config.auto_batch_size else None
    while True:
        trainer = make_trainer(
            model, tokenizer, train_data, eval_data, config, output_dir, reporter, callbacks
        )
        try:
            result = train(trainer, reporter, resume_from_checkpoint)
            result["batch_size"] = config.batch_size
            result["gradient_accumulation_steps"] = config.gradient_accumulation_steps
            return trainer, result
        except torch.OutOfMemoryError as exc:
            step, said = trainer.state.global_step, str(exc).split("\n")[0][:500]
        del trainer  # the exception is gone too: its frames held the activations
        release_memory()
        retry = at_a_smaller_batch(config)
        if start is None or retry is None:
            raise OutOfMemory(out_of_memory_message(config, step, said))
        reporter.log(
            f"out of memory at batch_size={config.batch_size} (max_seq_length="
            f"{config.max_seq_length}): retrying with batch_size={retry.batch_size} and "
            f"gradient_accumulation_steps={retry.gradient_accumulation_steps} "
            f"(effective batch {config.batch_size * config.gradient_accumulation_steps} kept)"
        )
        restore_weights(model, start)
        config = retry


def trainable_weights(model) -> dict[str, Any]:
    """A copy of the weights training changes (the adapter's), to start again from."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_weights(model, weights: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])


def at_a_smaller_batch(config: TrainConfig) -> TrainConfig | None:
    """The same effective batch at a smaller per-device batch (None at 1, KTO's at 2): the
    accumulation raised by the factor the batch is lowered by."""
    smaller = smaller_batch(config.batch_size)
    if smaller is None or (config.method == "kto" and smaller < 2):
        return None  # KTO's KL term is estimated within a batch: it needs two examples or more
    factor = config.batch_size // smaller
    return config.replace(
        batch_size=smaller,
        gradient_accumulation_steps=config.gradient_accumulation_steps * factor,
    )


def smaller_batch(batch_size: int) -> int | None:
    """The largest batch that divides ``batch_size`` and is at most half of it (None at 1), so the
    accumulation can make up the difference exactly."""
    return next((b for b in range(batch_size // 2, 0, -1) if batch_size % b == 0), None)


def out_of_memory_message(config: TrainConfig, step: int, said: str) -> str:
    """Where it ran out, at what settings, and which settings to change."""
    where = f"in training step {step + 1}" if step else "in the first training step"
    retried = " even after retrying at smaller batches" if config.auto_batch_size else ""
    fixes = [
        "lower max_seq_length",
        "load the base model in 4 bits (load_in_4bit=True)" if not config.load_in_4bit else "",
        "lower batch_size and raise gradient_accumulation_steps by the same factor"
        if config.batch_size > 1
        else "",
        "or set auto_batch_size=True to do that automatically"
        if not config.auto_batch_size and config.batch_size > 1
        else "",
    ]
    return (
        f"out of memory {where}{retried} at batch_size={config.batch_size} and "
        f"max_seq_length={config.max_seq_length} (gradient_accumulation_steps="
        f"{config.gradient_accumulation_steps}): {', '.join(f for f in fixes if f)}. "
        f"torch said: {said}"
    )


def release_memory() -> None:
    """Give back what the failed attempt held before the next one allocates."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_adapter(model, tokenizer, output_dir: str) -> Path:
    """adapter_config.json + adapter_model.safetensors (+ the tokenizer, so the adapter stands alone)."""
    adapter_dir = Path(output_dir) / "adapter"
    # the trained adapter only: not a preference trainer's frozen reference copy beside it
    model.save_pretrained(adapter_dir, safe_serialization=True, selected_adapters=["default"])
    tokenizer.save_pretrained(adapter_dir)
    return adapter_dir
