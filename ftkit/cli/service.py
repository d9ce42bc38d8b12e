"""Commands that run or check the service: ``worker`` (one process per GPU), ``serve`` (the HTTP
API and web dashboard) and ``health``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from .output import print_value


def cmd_worker(args: argparse.Namespace) -> int:
    from ..worker import run_worker

    if args.gpus:
        return _run_worker_per_gpu(args.gpus.split(","), args.drain)
    run_worker(drain=args.drain)
    return 0


def _run_worker_per_gpu(gpus: list[str], drain: bool) -> int:
    """One worker process per GPU, each seeing only its device."""
    procs = []
    for gpu in gpus:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu.strip()}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ftkit.cli", "worker", *(["--drain"] if drain else [])],
                env=env,
            )
        )

    def forward(signum, _frame):
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API and web dashboard (the ``server`` extra)."""
    from ..errors import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "server")
    from ..server.app import serve

    origins = [o.strip() for o in (args.cors_origins or "").split(",") if o.strip()]
    serve(
        args.host,
        args.port,
        cors_origins=origins or None,
        max_upload_bytes=args.max_upload_mb << 20,
    )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 1 when the service is unhealthy, so a script or a probe can act on it."""
    import ftkit

    health = ftkit.health()
    print_value(health, args.json)
    return 0 if health["status"] != "unhealthy" else 1
