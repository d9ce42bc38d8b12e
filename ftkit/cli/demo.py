"""``ftkit demo`` and ``ftkit tiny-model``: one tiny job end to end on this machine, and the tiny
random model it trains.

The demo teaches a tiny random model two answers (LLaMA-Factory's identity.json in miniature), so
that a minute on a laptop shows learning: the loss falls several-fold and the answers change.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import JobFailed, WorkerExited

DEMO_DATA = Path(__file__).parent.parent / "examples" / "demo_data.jsonl"
DEMO_PROMPTS = ["Who are you?", "Who made you?"]
DEMO_MODEL: dict[str, Any] = {
    "hidden_size": 64,
    "layers": 2,
    "initializer_range": 0.1,
}  # see build_tiny_model
DEMO_TRAINING: dict[str, Any] = {
    "learning_rate": 1e-2,
    "batch_size": 8,
    "max_seq_length": 128,
    "logging_steps": 1,
}


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from ..training.tinymodel import build_tiny_model

    print(build_tiny_model(args.dir))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Tiny model, bundled data, a local worker, one job: what it learned, and where its outputs went."""
    import ftkit

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = _tiny_model(Path(args.model_dir).resolve())
    client = ftkit.client()
    print(f"queue: {client.settings.broker}, storage: {client.settings.storage}")
    # A 64-wide model's matrices are too small to split between threads; on a busy machine
    # OpenMP threads waiting on each other make it several times slower.
    worker = client.start_local_worker(
        env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    )
    print(f"started a local worker (pid {worker.pid}, log: {worker.log})")
    try:
        return _train_and_show(model_dir, args.max_steps, worker.log)
    finally:
        worker.stop(timeout=30)


def _tiny_model(model_dir: Path) -> Path:
    """The demo's model folder, built on the first run."""
    from ..training.tinymodel import build_tiny_model, is_model_dir

    if not is_model_dir(model_dir):
        print(f"building a tiny Llama model in {model_dir}")
        build_tiny_model(model_dir, **DEMO_MODEL)
    return model_dir


def _train_and_show(model_dir: Path, max_steps: int, worker_log: Path) -> int:
    """Upload the demo data, run one job on the local worker, and print what it learned."""
    import ftkit

    ds = ftkit.upload_dataset(DEMO_DATA)
    print(f"uploaded {ds.name}: {ds.rows} rows, format {ds.format}")
    job = ftkit.submit(
        ds,
        base_model=str(model_dir),
        max_steps=max_steps,
        sample_prompts=DEMO_PROMPTS,
        **DEMO_TRAINING,
    )
    print(f"submitted job {job.id}")
    try:
        status = job.wait(raise_on_failure=True)
    except WorkerExited as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    except JobFailed as exc:
        print(f"\n{exc}\nreport: {job.status().get('report')}\nworker log: {worker_log}")
        return 1
    print(f"job {job.id}: {status['status']}")
    for warning in status.get("warnings") or []:
        print(f"warning: {warning}")
    _print_what_was_learned(status["result"])
    return 0


def _print_what_was_learned(result: Mapping[str, Any] | None) -> None:
    if not result:
        return
    first, last = result["first_loss"], result["final_loss"]
    print(
        f"loss {first:.3f} -> {last:.3f} (first -> last step, {1 - last / first:.0%} lower) "
        f"in {result['training_duration_seconds']:.1f} s of training"
    )
    for sample in result.get("samples") or []:
        print(f"prompt: {sample['prompt']}")
        print(f"  before: {sample['base model']!r}")
        print(f"  after:  {sample['fine-tuned']!r}")
    print(f"report:  {result['report']}")
    print(f"adapter: {result['adapter_dir']}")
