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
TEST_DATA = REPO / "tests" / "data"  # in the repository: benches run on a fresh clone


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
        allowed_model_dirs=(str(work.parent),),  # workers on Redis load local models from here only
    )


@contextlib.contextmanager
def worker(settings, warm: bool = True, log: Path | None = None, count: int = 1):
    """``count`` `ftkit worker` subprocesses (their output to ``log``, numbered after the first);
    waits until each heartbeats, and with ``warm`` until each has a warm kernel ready."""
    from ftkit.client import Client

    client = Client(settings)
    procs = []
    for n in range(count):
        out = open(log.with_suffix(f".{n}.log") if log else os.devnull, "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ftkit.cli", "worker"],
                env={**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        try:
            wait_until(lambda: len(client.workers()) >= count, 300)
            if warm:
                wait_warm(client)
        except TimeoutError:  # say why: the workers' own words
            for n in range(count if log else 0):
                path = log.with_suffix(f".{n}.log")
                print(f"--- {path.name}:\n{path.read_text(errors='replace')[-3000:]}", flush=True)
            raise TimeoutError(f"{count} worker(s) not ready (warm) in 300 s") from None
        yield client
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(timeout=60)


def wait_warm(client, since: float = 0.0, timeout: float = 300) -> None:
    """Until every worker says its spare kernel is warm in a heartbeat sent after ``since`` (a
    job's end, say): the beat before that job took the spare still says warm."""
    wait_until(
        lambda: (
            (ws := client.workers())
            and all(w.get("warm_kernel") and w.get("last_seen", 0) > since for w in ws)
        ),
        timeout,
    )


def wait_until(condition, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark set-up timed out")
        time.sleep(interval)


def tiny_model(work: Path) -> Path:
    from ftkit.training.tinymodel import build_tiny_model

    return build_tiny_model(work / "tiny")


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ftkit-bench-"))
