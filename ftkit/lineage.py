"""Runs that start from earlier runs: where a job that continues a past one starts (the past job's
newest complete checkpoint, else its adapter) and whether its LoRA can load there at all. Asked
by the client at submit, so a job that cannot start is refused before it is queued, and by the
worker, which stages what this says."""

from __future__ import annotations

from typing import Any

from .config import TrainConfig
from .core.records import JobRecord
from .core.rules import is_job_id
from .core.statuses import COMPLETED
from .errors import ConfigError, JobNotFound
from .jobstore import JobStore
from .storage import Storage

# What a worker takes of a past job's adapter: its settings (JSON) and weights (safetensors, no
# pickle); nothing else in that folder is read.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
# What a worker takes of a checkpoint (its own earlier attempt's, or a past job's): what the
# trainer reads to resume, nothing else. Optimizer, scheduler and RNG states are torch pickles,
# which transformers reads with torch.load(weights_only=True): tensors and plain data, no code.
CHECKPOINT_FILES = frozenset(
    {
        *ADAPTER_FILES,
        "trainer_state.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "scaler.pt",
    }
)
# What decides the shape of the LoRA weights, or what they mean.
LORA_SHAPE = ("lora_r", "lora_alpha")


def checkpoint_step(name: str) -> int | None:
    """N of a folder named checkpoint-N, else None (a stray folder in storage is not a checkpoint)."""
    prefix, _, step = name.rpartition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() and len(step) < 10 else None


def newest_checkpoint(storage: Storage, job_id: str, *, to_continue: bool = False) -> str | None:
    """The name (checkpoint-N) of the job's newest checkpoint whose upload completed, or None.

    With ``to_continue`` (another job continuing this one), only a checkpoint with its optimizer
    state: a job without ``save_steps`` keeps only its last step's weights (so that its own next
    attempt has nothing to train again), and a job continuing it starts from its adapter."""
    parts = Storage.run_parts(job_id, "checkpoints")
    complete = [
        name
        for name in storage.listdir(*parts)
        if checkpoint_step(name) is not None
        and storage.exists(*parts, name, "complete")
        and (not to_continue or storage.exists(*parts, name, "optimizer.pt"))
    ]
    return max(complete, key=lambda n: checkpoint_step(n) or 0, default=None)


def has_adapter(storage: Storage, job_id: str) -> bool:
    return all(storage.exists(*Storage.run_parts(job_id, "adapter", n)) for n in ADAPTER_FILES)


def start_point(
    store: JobStore,
    storage: Storage,
    parent: str,
    config: TrainConfig,
    model: dict[str, str] | None,
) -> str:
    """Where a job that continues ``parent`` with ``config`` (and uploaded base ``model``) starts:
    ``checkpoint-N`` (adapter, optimizer state and step) or ``adapter`` (the weights only, a
    fresh optimizer, steps from 1). A clear ConfigError when it cannot start from either."""
    if not is_job_id(parent):
        raise ConfigError(
            f"resume_from={parent!r}: give a Job or a job id (12 hex digits)", field="resume_from"
        )
    try:
        record = store.get(parent)
    except JobNotFound:
        raise ConfigError(f"resume_from: no job {parent}", field="resume_from") from None
    status = record.get("status")
    checkpoint = newest_checkpoint(storage, parent, to_continue=True)
    if checkpoint is None and not (status == COMPLETED and has_adapter(storage, parent)):
        raise ConfigError(
            f"resume_from: job {parent} ({status}) kept no checkpoint to continue from, and only "
            "a completed job leaves an adapter to start from; a job keeps checkpoints when "
            "submitted with save_steps (e.g. save_steps=50)",
            field="resume_from",
        )
    check_same_lora(parent, record, config, model)
    return checkpoint or "adapter"


def check_same_lora(
    parent: str, record: JobRecord, config: TrainConfig, model: dict[str, str] | None
) -> None:
    """A LoRA adapter loads only into LoRA of the same rank over the same base model, and means
    the same only at the same alpha: any difference is refused, naming both values."""
    their_config, their_model = record.get("config"), record.get("model")
    theirs: dict[str, Any] = their_config if isinstance(their_config, dict) else {}
    for name in LORA_SHAPE:
        if theirs.get(name) != getattr(config, name):
            raise ConfigError(
                f"resume_from: job {parent} trained with {name}={theirs.get(name)!r}, this job "
                f"asks for {name}={getattr(config, name)!r}: its adapter loads only into the "
                f"same LoRA shape (submit with {name}={theirs.get(name)!r}, or start afresh)",
                field=name,
            )
    their_ref = their_model if isinstance(their_model, dict) else None
    if their_ref and model:  # both uploaded folders: the same bytes, wherever they were read
        same = their_ref.get("sha256") == model["sha256"]
    else:
        same = theirs.get("base_model") == config.base_model
    if not same:
        raise ConfigError(
            f"resume_from: job {parent} trained on base_model "
            f"{_model_named(theirs.get('base_model'), their_ref)}, this job asks for "
            f"{_model_named(config.base_model, model)}: an adapter continues only on the base "
            "model it was trained on",
            field="base_model",
        )


def _model_named(base: Any, ref: dict[str, Any] | None) -> str:
    return f"{base!r}" + (f" (sha256 {str(ref.get('sha256'))[:12]})" if ref else "")
