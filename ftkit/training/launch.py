"""A multi-device job's training, started from its notebook kernel, so the notebook stays the run:
the tokenized data sets and a plan go into the run folder, torchrun starts one training process
per device (``rank_run.py``), their output streams into the notebook as it comes, and the kernel
reads back what rank 0 wrote. No training process outlives the kernel: a stopped kernel takes the
launcher with it, and the launcher its processes (``launcher.py``), and a kernel whose worker is
gone stops them itself.

    python -m ftkit.training.launcher TORCHRUN_ARGS   torchrun, dying with the kernel that started it
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .display import show_table
from .reporter import Reporter
from .trackers import RankZeroTrackers

STOP_GRACE_SECONDS = 10  # a stopped launcher stops its processes; then SIGKILL


def devices_plan(config: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """Before a multi-device run: the tokenizer (the data is tokenized here, once) and what the
    report says of the model, which each training process loads on its device."""
    from transformers import AutoTokenizer

    from .model import check_base_model, quiet_progress_bars

    check_base_model(config.base_model)
    quiet_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    how = {
        "none": "data-parallel: a copy of the model on each device, every batch shared out",
        "fsdp": "FSDP: weights, gradients and optimizer state sharded across the devices",
    }[config.sharding]
    return tokenizer, {
        "base_model": config.base_model,
        "backend": "hf (transformers + peft: unsloth trains on one device)",
        "devices": config.devices,
        "sharding": f"{config.sharding} ({how})",
        "loaded by": f"each of the {config.devices} training processes, below",
    }


def load_trained(
    config: TrainConfig, output_dir: str, parent_adapter: str = ""
) -> tuple[Any, dict[str, Any] | None]:
    """After a multi-device run: the adapter rank 0 saved, on its base model in this kernel (on
    the GPUs the worker sees, or the CPU), for the report's samples; and the parent job's weights,
    when the run continued one, to answer as that job did."""
    import torch

    from .margins import starting_weights
    from .model import load_adapter_weights, load_model

    here = config.replace(devices=1, sharding="none", backend="hf")
    device_map = "auto" if torch.cuda.is_available() else None
    model, _, _ = load_model(here, parent_adapter, device_map=device_map)
    parent = starting_weights(model) if parent_adapter else None
    load_adapter_weights(model, str(Path(output_dir) / "adapter"))
    return model, parent


def saved_adapter(output_dir: str) -> Path:
    """The adapter rank 0 saved for the worker to upload."""
    adapter = Path(output_dir) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise DevicesFailed(f"the training processes saved no adapter in {adapter}")
    return adapter


class DevicesFailed(RuntimeError):
    """A training process of a multi-device job failed: which rank, and what it said."""


def fit_on_devices(
    train_data,
    eval_data,
    data_summary: dict[str, Any],
    config: TrainConfig,
    output_dir: str,
    reporter: Reporter,
    resume_from_checkpoint: str = "",
    resume_from_adapter: str = "",
    trackers: RankZeroTrackers | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Train on ``config.devices`` processes; the loss history, the result, the model's summary
    and every rank's device and throughput, as rank 0 wrote them. Rank 0 starts the job's
    trackers (``config.report_to``) with the tags and note of ``trackers`` (start_trackers'
    stand-in in this kernel); the table of what each does, as rank 0 started them, shows here."""
    folder = Path(output_dir) / "devices"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    train_data.save_to_disk(str(folder / "train"))  # tokenized once, here: every rank reads it
    if eval_data is not None:
        eval_data.save_to_disk(str(folder / "eval"))
    plan = {
        "job_id": reporter.job_id or "",
        "config": config.to_dict(),
        "output_dir": str(output_dir),
        "train": str(folder / "train"),
        "eval": str(folder / "eval") if eval_data is not None else "",
        "summary": data_summary,
        "resume_from_checkpoint": resume_from_checkpoint,
        "resume_from_adapter": resume_from_adapter,
        "job_tags": trackers.tags if trackers is not None else [],
        "job_note": trackers.note if trackers is not None else "",
    }
    (folder / "plan.json").write_text(json.dumps(plan))
    returncode = run_processes(config.devices, folder / "plan.json", reporter)
    outcome = folder / "outcome.json"
    if returncode != 0 or not outcome.is_file():
        raise DevicesFailed(failure(folder, returncode, config.devices))
    written = json.loads(outcome.read_text())
    if written.get("trackers"):
        show_table(written["trackers"], "Experiment trackers (rank 0)")
    return written["history"], written["result"], written["model"], written["ranks"]


def run_processes(devices: int, plan: Path, reporter: Reporter) -> int:
    """torchrun's exit status, its output (rank 0's lines and every rank's errors) printed here
    as it comes. Stopped when the kernel's worker is gone, or the cell is interrupted."""
    env = {
        **os.environ,
        # the machine's cores shared out, not torchrun's one thread per process
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // devices)),
        "PYTHONUNBUFFERED": "1",
        "FTKIT_LAUNCHER_PARENT": str(os.getpid()),
    }
    command = [
        sys.executable, "-m", "ftkit.training.launcher", "--standalone",
        f"--nproc-per-node={devices}", "--max-restarts=0",
        "-m", "ftkit.training.rank_run", str(plan),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1
    )
    echo = threading.Thread(target=_echo, args=(proc.stdout,), name="ftkit-ranks", daemon=True)
    echo.start()
    try:
        while proc.poll() is None:
            if reporter.fence.orphaned():  # nobody would upload what they make: stop them now
                print("[ftkit] this kernel's worker is gone: stopping the training processes")
                break
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:  # the worker gone, or the cell interrupted
            stop(proc)
        echo.join(timeout=10)
    return proc.returncode


def _echo(stream) -> None:
    for line in stream:
        print(line, end="", flush=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to torchrun, which stops its processes; SIGKILL after a grace period (its
    processes then die with it)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def failure(folder: Path, returncode: int, devices: int) -> str:
    """Which rank failed first and what it said, from the error files the ranks leave."""
    errors = sorted(folder.glob("error-*.txt"), key=lambda p: p.stat().st_mtime)
    if errors:
        rank = errors[0].stem.removeprefix("error-")
        said = errors[0].read_text(encoding="utf-8", errors="replace").strip()[:2000]
        return f"training process {rank} of {devices} failed: {said}"
    how = f"exit status {returncode}" if returncode >= 0 else f"signal {-returncode}"
    return f"the {devices} training processes ended with {how} and no outcome (see the lines above)"
