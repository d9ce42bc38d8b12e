"""What GPUs this machine shows, asked of ``nvidia-smi`` without importing torch or touching CUDA.

The worker asks here: its heartbeat names the GPU it trains on, and it chooses how to start
kernels (a process that touched CUDA cannot fork kernels that use it). The kernel asks torch
itself (``ftkit.training.device``), and the run report adds the driver from here. One place runs
``nvidia-smi``; each question is one small function.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import TypedDict


class GpuInfo(TypedDict):
    gpu: str | None  # the GPU's name, None on a CPU machine
    gpu_memory: str | None  # as nvidia-smi says it, e.g. "81559 MiB"


def nvidia_smi(*args: str, timeout: float = 10) -> list[str] | None:
    """nvidia-smi's output lines, or None where there is no nvidia-smi or it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines() if done.returncode == 0 else None


def cuda_visible() -> bool:
    """Whether this process would see a CUDA device (CUDA_VISIBLE_DEVICES may hide them all)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    listed = nvidia_smi("-L")
    return bool(listed) and any("GPU" in line for line in listed or [])


def first_visible_index() -> int:
    """The index nvidia-smi uses for this process's device 0 (CUDA_VISIBLE_DEVICES=2 -> 2)."""
    visible = (os.environ.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0


def gpu_info() -> GpuInfo:
    """The GPU this process trains on (its device 0), or None for each fact on a CPU machine."""
    rows = nvidia_smi("--query-gpu=name,memory.total", "--format=csv,noheader", timeout=5)
    if rows:
        fields = [s.strip() for s in rows[min(first_visible_index(), len(rows) - 1)].split(",")]
        if len(fields) == 2:
            return {"gpu": fields[0], "gpu_memory": fields[1]}
    return {"gpu": None, "gpu_memory": None}


def driver_version() -> str | None:
    """The NVIDIA driver's version, or None without one."""
    rows = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader", timeout=5)
    return rows[0].strip() if rows else None


def offered_devices(env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """What this worker offers one job: ("cuda", the GPUs it sees) on a GPU machine, else ("cpu",
    FTKIT_CPU_DEVICES or 1), gloo processes on the CPU. ``ftkit worker --gpus`` and
    ``--cpu-devices`` set those variables for each worker they start."""
    if env is None:
        env = os.environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible not in ("", "-1"):
        listed = [line for line in nvidia_smi("-L") or [] if "GPU" in line]
        if listed:
            wanted = [d for d in (visible or "").split(",") if d.strip()]
            return "cuda", min(len(wanted), len(listed)) if visible is not None else len(listed)
    raw = env.get("FTKIT_CPU_DEVICES", "1").strip()
    return "cpu", int(raw) if raw.isdigit() and int(raw) >= 1 else 1
