"""One training process of a multi-device job, started by torchrun from the job's notebook kernel
(``launch.py``), once per device:

    python -m ftkit.training.rank_run PLAN

Each loads the model on its device and trains its share of every batch; rank 0 alone reports to
the job store, logs to the job's experiment trackers (report_to: started and finished here, in the
run's output folder, where the worker finds them), uploads checkpoints, writes the exactly-once
marker and saves the adapter, then writes ``outcome.json`` for the kernel: the loss history, the
result, the model's summary, every rank's throughput and what each tracker does. Only rank 0 prints; every rank's errors reach the notebook, and a failure
leaves ``error-<rank>.txt`` saying what went wrong."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .ranks import gather, is_main, rank, world_size


def main(argv: list[str]) -> int:
    from ..core.lifetime import die_with_parent, orphaned_already

    die_with_parent()
    if orphaned_already(int(os.environ.get("FTKIT_LAUNCHER_PID", "0")) or None):
        return 1
    plan_path = Path(argv[0])
    if not is_main():  # one voice in the notebook: rank 0's lines (every rank's errors: stderr)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        train_my_share(json.loads(plan_path.read_text()), plan_path.parent)
    except BaseException as exc:
        said = f"{type(exc).__name__}: {exc}".strip()
        (plan_path.parent / f"error-{rank()}.txt").write_text(said)
        raise
    return 0


def train_my_share(plan: dict[str, Any], folder: Path) -> None:
    """Load, train, and (rank 0) save the adapter, finish the trackers and write the outcome."""
    from datasets import load_from_disk

    from .model import load_model
    from .reporter import Reporter
    from .trackers import start_trackers
    from .trainer import fit, save_adapter

    config = TrainConfig.from_dict(plan["config"])
    reporter = Reporter.for_job(plan["job_id"]) if is_main() else Reporter(None)
    trackers = None  # the kernel started none: rank 0 alone logs, and starts them before loading
    if is_main():
        trackers = start_trackers(
            config, plan["job_id"], plan["output_dir"], plan.get("job_tags") or [],
            plan.get("job_note") or "", reporter, rank_zero=True,
        )  # fmt: skip
    model, tokenizer, model_info = load_model(config, plan["resume_from_adapter"])
    train_data = load_from_disk(plan["train"])
    eval_data = load_from_disk(plan["eval"]) if plan["eval"] else None
    trainer, result = fit(
        model, tokenizer, train_data, eval_data, config, plan["output_dir"], reporter,
        plan["resume_from_checkpoint"] or None, trackers.callbacks if trackers else [],
    )  # fmt: skip
    ranks = gather(rank_facts(result, plan["summary"], config))
    adapter = Path(plan["output_dir"]) / "adapter"
    if config.sharding == "fsdp":  # every rank gives its shard to the full adapter
        trainer.save_model(str(adapter))
    if trackers is None:  # ranks above 0: no tracker, no adapter, no outcome
        return
    if config.sharding == "fsdp":
        tokenizer.save_pretrained(adapter)
    else:
        save_adapter(model, tokenizer, plan["output_dir"])
    trackers.finish({**result, "adapter_dir": str(adapter)})  # the adapter to MLflow, runs ended
    outcome = {
        "history": trainer.state.log_history,
        "result": {**result, "world_size": world_size()},
        "model": model_info,
        "ranks": ranks,
        "trackers": trackers.shown,  # what each tracker does, for the kernel's report
    }
    (folder / "outcome.json").write_text(json.dumps(outcome, default=str))


def rank_facts(result: dict[str, Any], summary: dict[str, Any], config: TrainConfig) -> dict:
    """This rank's device and its own throughput (its share of each batch, its own time)."""
    import torch

    from .display import throughput

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = f"cuda:{local} ({torch.cuda.get_device_name(local)})"
    else:
        device = "cpu (gloo)"
    one_device = config.replace(devices=1, sharding="none")
    mine = throughput(result, summary, one_device)
    mine.pop("effective batch")
    return {"rank": rank(), "device": device, **mine}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
