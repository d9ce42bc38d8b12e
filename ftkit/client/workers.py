"""Watching and starting workers from the client's side: a warning when none listens on the
queue (or none is large enough for a job just queued), and a detached local worker (``ftkit.start_local_worker``) that a laptop user starts from
the notebook and whose exit is seen at once."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..core.records import WorkerInfo
from ..errors import ConfigError, MissingExtra, NoWorkerWarning
from ..placement import Need, Offer, waiting_reason

# The local workers this process started and has not stopped (kept, so none is reaped as garbage).
_local_workers: dict[int, tuple[subprocess.Popen, Path]] = {}


class WorkerSource(Protocol):
    """What a WorkerWatch reads: the live workers, and what to say when there are none."""

    settings: Settings

    def workers(self) -> list[WorkerInfo]: ...

    def no_worker_message(self) -> str: ...


class WorkerWatch:
    """Notices when no worker has been listening for a few heartbeats: a queued job would wait
    forever (say, a worker started with other settings, on another queue)."""

    HEARTBEATS = 3

    def __init__(self, client: WorkerSource):
        self.client = client
        self.message: str | None = None
        self._empty_since: float | None = None
        self._checked = -float("inf")

    def exited(self) -> str | None:
        """A local worker this process started that has exited, said with its exit code and the
        last lines of its log (the newest such worker); looked at on every call: a poll is free."""
        for proc, log in reversed(list(_local_workers.values())):
            if proc.poll() is not None:
                return LocalWorker(pid=proc.pid, log=log).exit_message()
        return None

    def check(self) -> str | None:
        """The warning to show now, or None; reads the live workers at most twice a heartbeat."""
        beat, now = self.client.settings.heartbeat_seconds, time.monotonic()
        if now - self._checked < beat / 2:
            return self.message
        self._checked = now
        if self.client.workers():
            self._empty_since, self.message = None, None
        else:
            self._empty_since = self._empty_since if self._empty_since is not None else now
            if now - self._empty_since >= self.HEARTBEATS * beat:
                self.message = self.client.no_worker_message()
        return self.message


@dataclass(frozen=True)
class LocalWorker:
    """A worker this process started on this machine (``Client.start_local_worker``)."""

    pid: int
    log: Path

    def running(self) -> bool:
        return self.pid in _local_workers and _local_workers[self.pid][0].poll() is None

    def exit_code(self) -> int | None:
        """Its exit status once it has exited on its own; None while it runs (or once stopped)."""
        return _local_workers[self.pid][0].poll() if self.pid in _local_workers else None

    def log_tail(self, lines: int = 12) -> list[str]:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def exit_message(self) -> str | None:
        """'the local worker (pid N) exited with code C; its log (PATH) ends: ...', or None."""
        code = self.exit_code()
        if code is None:
            return None
        tail = "\n".join(f"    {line}" for line in self.log_tail())
        return (
            f"the local worker (pid {self.pid}) exited with code {code}; "
            f"its log ({self.log}) ends:\n{tail or '    (empty)'}"
        )

    def stop(self, timeout: float = 60) -> int | None:
        """SIGINT (the running job is handed back to the queue), then wait; the exit status."""
        proc, _ = _local_workers.pop(self.pid, (None, None))
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


def start_local_worker(
    settings: Settings, env: dict[str, str] | None = None, *, cpu_devices: int | None = None
) -> LocalWorker:
    """A detached ``ftkit worker`` with these settings, in its own session (it outlives the
    kernel), logging to a new file in the per-user folder. ``cpu_devices``: it trains on the CPU
    in that many processes (``ftkit worker --cpu-devices``), to try a multi-device job here."""
    if cpu_devices is not None and (
        isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices < 1
    ):
        raise ConfigError(f"cpu_devices={cpu_devices!r}: give a whole number of processes, 1+")
    devices = ["--cpu-devices", str(cpu_devices)] if cpu_devices is not None else []
    if importlib.util.find_spec("papermill") is None:
        raise MissingExtra("a local worker needs the training stack: pip install 'ftkit[worker]'")
    logs = Path(settings.home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftkit.cli", "worker", *devices],
            env={**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=settings.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _local_workers[proc.pid] = (proc, log)
    return LocalWorker(pid=proc.pid, log=log)


def warn_if_waiting(
    job_id: str, config: Any, workers: Callable[[], Sequence[Mapping[str, Any]]]
) -> str | None:
    """A job that no live worker can run is queued all the same (a larger worker may start):
    submit says so at once, as a NoWorkerWarning. The reason, or None."""
    need = Need.of(config)
    if need == Need():
        return None
    reason = waiting_reason(need, [Offer.of(dict(w)) for w in workers()])
    if reason is not None:
        how = f"ftkit worker --gpus ... --gpus-per-worker {need.devices}" + (
            "" if need.gpus_only else f", or ftkit worker --cpu-devices {need.devices}"
        )
        warnings.warn(
            f"job {job_id} is queued, {reason}: it starts when one listens ({how})",
            NoWorkerWarning,
            stacklevel=3,
        )
    return reason
