"""Everything a job needs on this machine before its notebook runs: its data set, an uploaded
base model, and the checkpoint or adapter it resumes from. Each step is safe to repeat after an
outage, and every path built from a record (untrusted) is kept inside its root (``inside``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..lineage import (
    ADAPTER_FILES,
    CHECKPOINT_FILES,
    checkpoint_step,
    has_adapter,
    newest_checkpoint,
)
from ..spec import DatasetRef, RecordRefused
from ..storage import Storage
from .runtime import Runtime


def inside(root: Path, *parts: str) -> Path:
    """``root/parts``, refusing anything that would resolve outside ``root``."""
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RecordRefused(f"refusing a path outside {root}: {'/'.join(parts)!r}")
    return path


def stage_dataset(rt: Runtime, job_id: str, dataset: DatasetRef) -> Path:
    """A local copy of the data set, cached by content hash: ten jobs on one file fetch it once."""
    local = inside(rt.scratch, "datasets", dataset.sha256, dataset.name)
    if local.is_file():
        rt.store.add_event(
            job_id, f"data set {dataset.name} already on this machine (cached by sha256)"
        )
        return local
    rt.storage.get_file(Storage.dataset_parts(dataset.sha256, dataset.name), local)
    rt.store.add_event(job_id, f"data set {dataset.name} staged from storage")
    return local


def stage_model(rt: Runtime, job_id: str, ref: Any) -> Path:
    """A local copy of an uploaded base-model folder, cached by its content digest: jobs on one
    model fetch it once per machine (``Storage.fetch_model`` checks the reference and the files)."""
    local, fetched = rt.storage.fetch_model(ref, rt.scratch / "models")
    name = local.name
    if fetched:
        rt.store.add_event(job_id, f"model {name} staged from storage")
    else:
        rt.store.add_event(job_id, f"model {name} already on this machine (cached by sha256)")
    return local


def restore_checkpoint(rt: Runtime, job_id: str, local: Path) -> str:
    """Download the newest complete checkpoint an earlier attempt saved; its local path, or ""."""
    name = newest_checkpoint(rt.storage, job_id)
    if name is None:
        return ""
    rt.storage.get_dir(
        Storage.run_parts(job_id, "checkpoints", name), local / name, only=CHECKPOINT_FILES
    )
    step = checkpoint_step(name)
    rt.store.trim_metrics(job_id, after_step=step or 0)
    rt.store.add_event(job_id, f"resuming from {name} (steps 1-{step} are not trained again)")
    return str(local / name)


def continue_from(rt: Runtime, job_id: str, run_dir: Path, parent: str) -> tuple[str, str]:
    """A job that continues (or retries) ``parent`` starts from the parent's newest complete
    checkpoint (adapter, optimizer state and step; its history starts with the parent's), else
    from the parent's adapter (its weights only: a fresh optimizer, steps from 1). The local
    checkpoint and adapter folders, one of them ""."""
    name = newest_checkpoint(rt.storage, parent, to_continue=True)
    if name is not None:
        return continue_from_checkpoint(rt, job_id, run_dir, parent, name), ""
    if not has_adapter(rt.storage, parent):
        raise ConfigError(
            f"job {parent}, which this job continues, kept neither a complete checkpoint nor an "
            "adapter"
        )
    local = stage_parent_adapter(rt, run_dir, parent)
    rt.store.add_event(
        job_id,
        f"continuing from job {parent}'s adapter (no checkpoint kept: fresh optimizer, steps "
        "from 1)",
    )
    return "", local


def stage_parent_adapter(rt: Runtime, run_dir: Path, parent: str) -> str:
    """The parent's adapter (its settings and weights), staged into this run: the local folder."""
    if not has_adapter(rt.storage, parent):
        raise ConfigError(f"job {parent}, which this job continues, kept no adapter")
    local = inside(run_dir, "parent", parent)  # parent: a job id, checked by JobSpec.from_record
    for file in ADAPTER_FILES:
        rt.storage.get_file(Storage.run_parts(parent, "adapter", file), local / file)
    return str(local)


def continue_from_checkpoint(
    rt: Runtime, job_id: str, run_dir: Path, parent: str, name: str
) -> str:
    """The parent's checkpoint ``name`` staged into this run, and the parent's metrics up to its
    step copied into this job's history (once: a later attempt already has them)."""
    local = inside(run_dir, "output", "checkpoints", name)
    rt.storage.get_dir(Storage.run_parts(parent, "checkpoints", name), local, only=CHECKPOINT_FILES)
    step = checkpoint_step(name) or 0
    if not rt.store.metrics(job_id):
        history = [m for m in rt.store.metrics(parent) if m.get("step", 0) <= step]
        rt.store.add_metrics(job_id, history)
    rt.store.add_event(
        job_id, f"continuing job {parent} from its {name} (steps 1-{step} are not trained again)"
    )
    return str(local)
