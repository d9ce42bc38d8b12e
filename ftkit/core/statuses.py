"""Where a job is in its life, and why a running one stops: one spelling for every package."""

from __future__ import annotations

from typing import Final, Literal

QUEUED: Final = "queued"
PREPARING: Final = "preparing"
TRAINING: Final = "training"
SAVING: Final = "saving"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"

ACTIVE = (PREPARING, TRAINING, SAVING)
FINAL = (COMPLETED, FAILED, CANCELLED)
STATUSES = (QUEUED, *ACTIVE, *FINAL)

Status = Literal["queued", "preparing", "training", "saving", "completed", "failed", "cancelled"]

# Why a running job is asked to stop: read by the kernel with one cheap field read per poll.
STOP_CANCEL: Final = "cancel"  # someone cancelled it
STOP_HANDOFF: Final = "handoff"  # its worker is shutting down and hands it back to the queue
STOP_TIMEOUT: Final = "timeout"  # it ran past its timeout_minutes
STOP_REASONS = (STOP_CANCEL, STOP_HANDOFF, STOP_TIMEOUT)

# Why a kernel stopped on its own: the record names another run of the job (another attempt or
# worker) than the one it is, so it saves nothing and its worker leaves the job alone.
STOPPED_SUPERSEDED: Final = "superseded"
