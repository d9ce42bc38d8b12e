"""Commands that run or check the service: ``worker`` (one process per GPU or group of GPUs),
``serve`` (the HTTP API and web dashboard) and ``health``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from ..errors import ConfigError
from .output import print_table, print_value


def cmd_worker(args: argparse.Namespace) -> int:
    from ..worker import run_worker

    groups = gpu_groups(args.gpus, args.gpus_per_worker, args.cpu_devices)
    if args.cpu_devices is not None:
        os.environ.update(cpu_env(args.cpu_devices))
    if groups:
        return _run_worker_per_group(groups, args.drain)
    run_worker(drain=args.drain)
    return 0


def gpu_groups(
    gpus: str | None, per_worker: int | None, cpu_devices: int | None
) -> list[list[str]]:
    """The GPUs of each worker ``--gpus`` and ``--gpus-per-worker`` start (none: one worker, no
    --gpus); ConfigError naming both numbers where they do not fit together."""
    from ..placement import MAX_DEVICES

    if cpu_devices is not None:
        if gpus:
            raise ConfigError(
                f"--cpu-devices {cpu_devices} trains on the CPU and --gpus {gpus} on GPUs: "
                "choose one"
            )
        if not 1 <= cpu_devices <= MAX_DEVICES:
            raise ConfigError(f"--cpu-devices {cpu_devices}: give 1 to {MAX_DEVICES} processes")
    if per_worker is not None and not gpus:
        raise ConfigError(
            f"--gpus-per-worker {per_worker} groups the GPUs --gpus lists: give them too, "
            "e.g. --gpus 0,1,2,3 --gpus-per-worker 2"
        )
    if not gpus:
        return []
    listed = [g.strip() for g in gpus.split(",")]
    if not all(listed) or len(set(listed)) != len(listed):
        raise ConfigError(f"--gpus {gpus}: list each GPU once, by index or UUID, e.g. 0,1,2,3")
    size = 1 if per_worker is None else per_worker
    if not 1 <= size <= MAX_DEVICES:
        raise ConfigError(f"--gpus-per-worker {size}: give 1 to {MAX_DEVICES} GPUs per worker")
    if len(listed) % size:
        raise ConfigError(
            f"--gpus lists {len(listed)} GPUs, which --gpus-per-worker {size} does not divide "
            f"evenly: list a multiple of {size} GPUs, or a group size that divides {len(listed)}"
        )
    return [listed[i : i + size] for i in range(0, len(listed), size)]


def cpu_env(devices: int) -> dict[str, str]:
    """What makes a worker offer ``devices`` CPU processes: no GPU seen, FTKIT_CPU_DEVICES set."""
    return {"CUDA_VISIBLE_DEVICES": "", "FTKIT_CPU_DEVICES": str(devices)}


def _run_worker_per_group(groups: list[list[str]], drain: bool) -> int:
    """One worker process per group of GPUs, each seeing only its devices."""
    procs = []
    for group in groups:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(group)}
        env.pop("FTKIT_CPU_DEVICES", None)  # a GPU worker offers its GPUs
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


WORKER_COLUMNS = ["worker_id", "host", "device_kind", "devices", "cuda_visible_devices", "gpu",
                  "current_job", "jobs_done"]  # fmt: skip


def cmd_workers(args: argparse.Namespace) -> int:
    """The live workers: where each runs, what one job may use there, what it runs now."""
    import ftkit

    rows = ftkit.workers()
    if args.json:
        print_value(rows, True)
    else:
        print_table([dict(w) for w in rows], WORKER_COLUMNS)
    return 0
