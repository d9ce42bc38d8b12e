"""Shared set-up for the benchmarks: a tiny model, a redis-server and a worker, all temporary."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = REPO / "examples" / "example_data.jsonl"
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server():
    """A throw-away redis-server on a free port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(100):
        with contextlib.suppress(redis.RedisError):
            if redis.Redis.from_url(url).ping():
                break
        time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def settings_in(work: Path, redis_url: str | None = None):
    from ftkit.config import Settings

    return Settings.from_env(
        {},
        redis_url=redis_url,
        storage=str(work / "storage"),
        queue_db=str(work / "queue.db"),
        scratch_dir=str(work / "scratch"),
    )


@contextlib.contextmanager
def worker(settings, wait_warm: bool = True):
    """An `ftkit worker` subprocess; waits until its heartbeat says a warm kernel is ready."""
    from ftkit.client import Client

    client = Client(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", "worker"],
        env={**os.environ, **settings.to_env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: client.workers() and (not wait_warm or client.workers()[0].get("warm_kernel")),
            180,
        )
        yield client
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def wait_until(condition, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark set-up timed out")
        time.sleep(interval)


def tiny_model(work: Path) -> Path:
    from ftkit.tinymodel import build_tiny_model

    return build_tiny_model(work / "tiny")


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ftkit-bench-"))
