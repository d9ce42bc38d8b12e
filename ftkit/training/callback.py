"""The trainer's view of a job: a transformers TrainerCallback that reports each logging step,
stops when the job asks (cancel, timeout, handoff) and saves checkpoints to storage."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..core.rules import REWARD_METRICS
from ..core.statuses import (
    STOP_CANCEL,
    STOP_HANDOFF,
    STOP_TIMEOUT,
    STOPPED_SUPERSEDED,
    TRAINING,
)
from .checkpoints import saves_checkpoints
from .fencing import ORPHANED
from .ranks import barrier, decide
from .reporter import Reporter

# Why a run stops, as rank 0 tells the other ranks of a multi-device job (by index: 0 goes on).
# A stop field this list lacks (a record edited by hand) reaches them as a cancel.
STOP_REASONS = (None, STOP_CANCEL, STOP_TIMEOUT, STOP_HANDOFF, ORPHANED, STOPPED_SUPERSEDED)
MAX_LOG_LINES = 50  # step lines a run prints (and keeps in its log); metrics keep every step
# What a metric row keeps: the losses, and a preference run's rewards (TRL's names) on the
# training batches and, when it evaluates, on the held-out ones.
LOGGED = (
    "loss",
    "learning_rate",
    "grad_norm",
    "eval_loss",
    *REWARD_METRICS,
    *(f"eval_{name}" for name in REWARD_METRICS),
)


class TrainedAlready(Exception):
    """Raised from the trainer's start when the checkpoint it resumed from is training's end."""


def at_the_end(state: Any) -> bool:
    return 0 < state.max_steps <= state.global_step


def progress_callback(reporter: Reporter) -> Any:
    """A transformers TrainerCallback reporting to ``reporter`` (transformers imported only here)."""
    from transformers import TrainerCallback

    class FtkitProgress(ProgressHooks, TrainerCallback):
        pass

    return FtkitProgress(reporter)


class ProgressHooks:
    """The callback's hooks, apart from transformers so the module imports without it."""

    first_step = 0  # where this run's training began: 0, or the checkpoint it resumed from

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.started = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.first_step = state.global_step
        self.reporter.status(TRAINING, total_steps=state.max_steps, current_step=state.global_step)
        if at_the_end(state):
            # Resumed at its end: the trainer would still take one more step (it looks at
            # max_steps only after a step), past the end and at a restarted learning rate.
            raise TrainedAlready(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        reporter = self.reporter
        if reporter.first_step_at is None:
            reporter.first_step_at = time.monotonic()
        if self.stop_agreed(at_step_end=True):
            reporter.log(
                f"stop requested ({reporter.stop_reason}): stopping after step {state.global_step}"
            )
            control.should_training_stop = True
            # handed back: another worker resumes from here
            control.should_save = reporter.stop_reason == STOP_HANDOFF
        elif at_the_end(state):
            # The last step is kept, by every job: a worker that dies after training ends
            # (while the report and adapter are saved) leaves a later attempt nothing to train.
            control.should_save = True
        return control

    def on_substep_end(self, args, state, control, **kwargs):
        # with gradient accumulation a step can be long: stop between micro-batches too (a
        # hand-back waits for the step's end, to save it)
        if self.stop_agreed(at_step_end=False):
            control.should_training_stop = True
        return control

    def stop_agreed(self, *, at_step_end: bool) -> bool:
        """Whether to stop now, as rank 0 sees it, on every rank, which then all know why: rank 0
        alone reads the job store, and ranks that part ways wait forever in their next
        all-reduce. A hand-back waits for a step's end, to save it."""
        reporter = self.reporter
        reason = reporter.stop_reason if reporter.should_stop() else None
        if reason == STOP_HANDOFF and not at_step_end:
            reason = None
        known = STOP_REASONS.index(reason) if reason in STOP_REASONS else 1
        agreed = STOP_REASONS[decide(known)]
        if agreed is not None and reporter.stop_reason is None:  # a rank above 0 learns why
            reporter.stop_reason = agreed
        return agreed is not None

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank's share of the checkpoint on disk before rank 0 uploads it
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # Only what this run trained: a checkpoint it resumed from is in storage already (and
        # a run resumed at its end stops before any step: TrainedAlready).
        if folder.is_dir() and state.global_step > self.first_step:
            self.save(folder, args, state)

    def save(self, folder: Path, args: Any, state: Any) -> None:
        """Upload one checkpoint; an outage costs a checkpoint, never the training."""
        from ..core.retry import through_outages
        from ..errors import StorageError, StorageUnavailable

        try:
            if at_the_end(state):
                # Training has run to its end: this checkpoint carries the attempt's marker and
                # waits out an outage, as the adapter upload after it does (the job cannot end
                # without storage).
                through_outages(
                    self.reporter.save_checkpoint,
                    folder,
                    trained=(self.first_step, state.global_step),
                    weights_only=not saves_checkpoints(args),
                    outage=StorageUnavailable,
                )
            else:
                self.reporter.save_checkpoint(folder)
        except StorageError as exc:  # a checkpoint only shortens a resume: train on
            self.reporter.log(f"could not save {folder.name} to storage, training goes on: {exc}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        step, total = state.global_step, max(state.max_steps, 1)
        done = step - self.first_step
        elapsed = time.monotonic() - self.started
        row = metric_row(logs or {}, state, elapsed)
        progress = progress_fields(row, step, total, done, elapsed)
        if "loss" not in row and "eval_loss" not in row:  # the end-of-training summary
            self.reporter.metric_progress(**progress)
            return
        self.reporter.metric(row, **progress)
        every = max(args.logging_steps, math.ceil(total / MAX_LOG_LINES))
        if step % every == 0 or step >= total or done <= args.logging_steps:
            shown = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
            self.reporter.log(f"step {step}/{total} {shown}")

    def on_train_end(self, args, state, control, **kwargs):
        self.reporter.flush()


def metric_row(logs: dict[str, Any], state: Any, elapsed: float) -> dict[str, Any]:
    """One metrics row: the step, epoch and time, with the trainer's finite numbers."""
    row = {
        "step": state.global_step,
        "epoch": round(state.epoch or 0.0, 4),
        "time": round(elapsed, 3),
    }
    for key in LOGGED:
        if key in logs and logs[key] is not None and math.isfinite(float(logs[key])):
            row[key] = float(logs[key])
    return row


def progress_fields(
    row: dict[str, Any], step: int, total: int, done: int, elapsed: float
) -> dict[str, Any]:
    """The record's progress fields: step, percentage, time left at this run's pace, losses."""
    eta = elapsed / done * (total - step) if done > 0 else None
    progress = {
        "current_step": step,
        "total_steps": total,
        "progress": round(100.0 * step / total, 1),
        "eta_seconds": None if eta is None else round(eta, 1),
    }
    for key in ("loss", "eval_loss"):
        if key in row:
            progress[key] = row[key]
    return progress
