"""A running notebook's printed output, line by line, into its job's logs: what ``job.logs()``
and the monitor show while the job runs (the report keeps it all afterwards).

papermill hands every stream output of the kernel to ``stdout_file`` / ``stderr_file``; this is
that file. Lines are batched (one store write a second at most), cut to a readable length, and a
progress bar's carriage-return redraws keep only their last state.
"""

from __future__ import annotations

import logging
import threading
import time

from ..errors import BrokerUnavailable
from ..jobstore import LOG_LINES_KEPT, JobStore

log = logging.getLogger(__name__)
MAX_LINE = 1000


class OutputLog:
    """A write-only text file whose lines go to one job's logs. papermill flushes after every
    write; lines still go out at most once per ``every`` seconds, and a timer sends what a quiet
    cell printed last."""

    def __init__(self, store: JobStore, job_id: str, *, every: float = 1.0):
        self.store, self.job_id, self.every = store, job_id, every
        self._partial = ""
        self._pending: list[str] = []
        self._sent = time.monotonic()
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # batches reach the store in the order they were taken
        self._timer: threading.Timer | None = None

    def write(self, text: str) -> int:
        with self._lock:
            *whole, self._partial = (self._partial + text).split("\n")
            self._pending += [self._clean(line) for line in whole]
            if len(self._partial) > 4 * MAX_LINE:  # a very long line without a newline yet
                self._pending.append(self._clean(self._partial))
                self._partial = ""
        return len(text)

    def flush(self) -> None:
        """Send now when the last batch went out ``every`` seconds ago, else soon."""
        with self._lock:
            if not self._pending:
                return
            wait = self.every - (time.monotonic() - self._sent)
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._send)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._send()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._partial:
                self._pending.append(self._clean(self._partial))
                self._partial = ""
        self._send()

    def _send(self) -> None:
        with self._sending:
            with self._lock:
                lines, self._pending = self._pending[-LOG_LINES_KEPT:], []
                self._sent, self._timer = time.monotonic(), None
            if not lines:
                return
            try:
                self.store.add_logs(self.job_id, lines)
            except BrokerUnavailable as exc:  # a Redis restart: they go out with the next lines
                with self._lock:
                    self._pending = (lines + self._pending)[-LOG_LINES_KEPT:]
                log.warning(
                    "could not log %d output lines of job %s yet: %s", len(lines), self.job_id, exc
                )
            except Exception as exc:  # the output stays in the report; training goes on
                log.warning(
                    "could not log %d output lines of job %s: %s", len(lines), self.job_id, exc
                )

    @staticmethod
    def _clean(line: str) -> str:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]  # a redrawn progress bar: its last state
        return line if len(line) <= MAX_LINE else line[:MAX_LINE] + " [...]"
