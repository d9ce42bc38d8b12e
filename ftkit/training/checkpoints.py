"""A job's trainer checkpoints in storage (runs/<job>/checkpoints/<name>/): uploaded whole, then
``complete`` written last, so the worker resumes a later attempt only from one that arrived whole;
only the newest is kept."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

# What a run that has ended never reads again: a job without save_steps keeps only the weights.
RESUME_STATE = ("optimizer.pt", "scheduler.pt")


def saves_checkpoints(args: Any) -> bool:
    """Whether the trainer keeps checkpoints (the job has ``save_steps``)."""
    return getattr(args.save_strategy, "value", args.save_strategy) == "steps"


class JobCheckpoints:
    """One job's checkpoint folder in storage."""

    def __init__(self, storage: Any, job_id: str):
        from ..storage import Storage

        self.storage = storage
        self.parts = Storage.run_parts(job_id, "checkpoints")

    def upload(self, folder: str | Path, *, weights_only: bool = False) -> str:
        """Copy a trainer checkpoint folder (without the optimizer and scheduler states with
        ``weights_only``); it does not count until :meth:`commit`. Returns its name."""
        name = Path(folder).name
        skip = RESUME_STATE if weights_only else ()
        self.storage.put_dir(folder, *self.parts, name, skip=skip)
        return name

    def commit(self, name: str) -> None:
        """Make the uploaded checkpoint ``name`` count (``complete``), then drop the older ones."""
        self.storage.write_text(str(time.time()), *self.parts, name, "complete")
        for old in self.storage.listdir(*self.parts):
            if old != name:
                self.storage.remove(*self.parts, old)
