"""What a run tells its job record: status, progress, metrics and log lines, buffered and written
at most once a ``flush_seconds``; and whether it should stop (cancelled, timed out, handed back,
or no longer this run's: see fencing.py). The one object the template notebook reports through."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .checkpoints import JobCheckpoints
from .fencing import Fence, unless_store_away


class Reporter:
    """Progress and stop requests for one job. Writes are throttled: a training step pays at most
    one cheap read (the ``stop`` field, cached for ``poll_seconds``) and, every ``flush_seconds``,
    one batched write of progress, metrics and log lines. A broker outage never fails training:
    writes stay buffered and go out when the broker answers again."""

    def __init__(
        self,
        job_id: str | None,
        store: Any = None,
        storage: Any = None,
        *,
        worker: str | None = None,
        attempt: Any = None,
        flush_seconds: float = 1.0,
        poll_seconds: float = 0.5,
        worker_pid: int | None = None,
    ):
        self.job_id, self.store, self.storage = job_id, store, storage
        self.fence = Fence(job_id, store, worker=worker, attempt=attempt, worker_pid=worker_pid)
        self.checkpoints = JobCheckpoints(storage, str(job_id)) if storage is not None else None
        self.flush_seconds, self.poll_seconds = flush_seconds, poll_seconds
        self._metrics: list[dict[str, Any]] = []
        self._logs: list[str] = []
        self._progress: dict[str, Any] = {}
        self._last_flush = 0.0
        self._last_poll = 0.0
        self.first_step_at: float | None = None  # monotonic time the first step of a run ended

    @classmethod
    def for_job(cls, job_id: str | None) -> Reporter:
        """Connect to the job store and storage named by the environment the worker gave this kernel.
        With no job id (the template run by hand) nothing is reported, only printed."""
        if not job_id:
            return cls(None)
        from ..config import Settings
        from ..core.retry import through_outages
        from ..jobstore import open_store
        from ..storage import Storage

        settings = Settings.from_env()
        store = open_store(settings)
        # which run this is, as the record says: a Redis restarting now must not fail the job
        claimed = through_outages(store.get_fields, job_id, "worker", "attempt")
        return cls(
            job_id,
            store,
            Storage(settings.storage, endpoint_url=settings.s3_endpoint_url),
            worker=claimed["worker"],
            attempt=claimed["attempt"],
        )

    @property
    def worker(self) -> str | None:
        return self.fence.worker

    @property
    def attempt(self) -> int:
        return self.fence.attempt

    @property
    def stop_reason(self) -> str | None:
        """Why this run stops (a stop reason of ftkit.core.statuses, or orphaned/superseded)."""
        return self.fence.stop_reason

    @stop_reason.setter
    def stop_reason(self, reason: str | None) -> None:
        self.fence.stop_reason = reason

    def status(self, status: str, **fields: Any) -> None:
        """Move the job to ``status`` if it is still active and this run's worker's."""
        if self.store is not None:
            from ..core.statuses import ACTIVE

            unless_store_away(
                self.store.transition,
                self.job_id,
                status,
                allowed=ACTIVE,
                expect_worker=self.worker,
                **fields,
            )

    def log(self, line: str) -> None:
        # Only printed: the worker sends everything the cells print to the job's logs
        # (output_log.py), this line too. No flush per line: the kernel batches stream output.
        print(line)
        self.flush(force=False)

    def metric(self, row: dict[str, Any], **progress: Any) -> None:
        self._metrics.append(row)
        self.metric_progress(**progress)

    @property
    def kept_metrics(self) -> list[dict[str, Any]]:
        """The metric rows not written yet: with no job store (the template run by hand, or
        bench/bare_train.py), every row of the run."""
        return list(self._metrics)

    def metric_progress(self, **progress: Any) -> None:
        self._progress.update(progress)
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        """Write what is buffered (with ``force=False`` only once ``flush_seconds`` have passed)."""
        if self.fence.fenced_off:
            # the job is another run's now: rows from here would race its resumed history
            self._metrics, self._logs, self._progress = [], [], {}
            return
        if self.store is None or not (
            force or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            return
        self._last_flush = time.monotonic()
        metrics, logs, progress = self._metrics, self._logs, self._progress
        if unless_store_away(self._write, metrics, logs, progress) is not None:
            self._metrics, self._logs, self._progress = [], [], {}

    def _write(self, metrics: list, logs: list, progress: dict) -> bool:
        if progress:
            self.store.update(self.job_id, **progress)
        self.store.add_metrics(self.job_id, metrics)
        self.store.add_logs(self.job_id, logs)
        return True

    def should_stop(self) -> bool:
        """True when the job was cancelled, timed out, is being handed back, or is no longer this
        run's (its worker is gone, or the record names another attempt or worker)."""
        if self.store is None or self.stop_reason:
            return bool(self.stop_reason)
        now = time.monotonic()
        if now - self._last_poll >= self.poll_seconds:
            self._last_poll = now
            if not self.fence.orphaned():  # a dead worker: nobody would upload what we make
                fields = unless_store_away(
                    self.store.get_fields, self.job_id, "stop", "worker", "attempt"
                )
                if fields is not None and not self.fence.superseded(fields):
                    self.stop_reason = fields.get("stop")
        return bool(self.stop_reason)

    def save_checkpoint(
        self,
        folder: str | Path,
        *,
        trained: tuple[int, int] | None = None,
        weights_only: bool = False,
    ) -> None:
        """Copy a trainer checkpoint to storage (``complete`` written last), keeping only the newest,
        if this run still owns the job.

        ``trained=(first_step, last_step)`` marks the last step's checkpoint: this attempt's marker
        is written just before ``complete``, so a training run counts once it can no longer be run
        again (a later attempt resumes at its end), and a kill between the two shows as a second
        marker, never as none. ``weights_only`` leaves out the optimizer and scheduler states."""
        if self.checkpoints is None or not self.fence.owns_the_job():
            return
        # The metrics up to this step reach the store before the checkpoint counts: a job resumed
        # from it trains on from the next step, so a row still buffered here would be lost.
        self.flush()
        name = self.checkpoints.upload(folder, weights_only=weights_only)
        if trained is not None:
            self.fence.mark_trained(self.storage, *trained)
        self.checkpoints.commit(name)
        self.log(f"checkpoint {name} saved to storage")
