"""What the worker's machine offers (CUDA, bf16, unsloth, bitsandbytes) and what a job does with it.

The decisions are pure functions of a ``Machine``, so a CPU can check every branch a GPU worker
takes: ``probe()`` reads the real machine, tests may also build a ``Machine`` by hand.
Runs inside the notebook kernel; torch is imported by ``probe()`` and ``environment()`` only. What
the worker itself needs to know of the machine, it asks nvidia-smi (``ftkit.machine``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..machine import driver_version

# transformers 5 refuses 4-bit loading below it: an older bitsandbytes counts as none.
BITSANDBYTES_FLOOR = "0.46.1"
BF16_CAPABILITY = (8, 0)  # Ampere and newer; torch's is_bf16_supported() also says yes to emulation


@dataclass(frozen=True)
class Machine:
    """The facts a job's set-up depends on."""

    cuda: bool  # a CUDA device is visible to this process
    capability: tuple[int, int] | None = None  # compute capability of device 0
    name: str = "CPU"  # torch.cuda.get_device_name(0), or CPU
    unsloth: bool = False  # unsloth imports here (only ever true with CUDA: it refuses CPUs)
    unsloth_error: str | None = None  # why unsloth did not import, when it is installed
    bitsandbytes: bool = False  # bitsandbytes is installed at BITSANDBYTES_FLOOR or newer
    bitsandbytes_version: str | None = None  # the installed version, whatever it is


def probe(*, import_unsloth: bool = True) -> Machine:
    """Read this machine. unsloth is imported (it must come before transformers' models to patch
    them) only where a CUDA device is visible and ``import_unsloth``; a broken install is noted in
    ``unsloth_error`` instead of failing the job."""
    import torch

    cuda = torch.cuda.is_available()
    capability = tuple(torch.cuda.get_device_capability(0)) if cuda else None
    has_unsloth, error = False, None
    bnb = installed_version("bitsandbytes")
    if cuda and import_unsloth and importlib.util.find_spec("unsloth") is not None:
        try:
            importlib.import_module("unsloth")
            has_unsloth = True
        except Exception as exc:  # unsloth raises NotImplementedError, ImportError, RuntimeError...
            error = f"{type(exc).__name__}: {exc}"
    return Machine(
        cuda=cuda,
        capability=(capability[0], capability[1]) if capability else None,
        name=torch.cuda.get_device_name(0) if cuda else "CPU",
        unsloth=has_unsloth,
        unsloth_error=error,
        bitsandbytes=usable(bnb, BITSANDBYTES_FLOOR),
        bitsandbytes_version=bnb,
    )


def environment() -> dict[str, Any]:
    """What this run ran on, for its report: library versions, the GPU as torch sees it (or CPU),
    the driver as nvidia-smi says, the host."""
    import platform
    import socket

    import torch

    libraries = ("ftkit", "torch", "transformers", "trl", "peft", "unsloth", "papermill")
    env: dict[str, Any] = {
        "python": platform.python_version(),
        **{name: installed_version(name) or "not installed" for name in libraries},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu memory (GiB)"] = round(props.total_memory / 2**30, 1)
        env["cuda"] = torch.version.cuda
        env["driver"] = driver_version() or "unknown"
    else:
        env["gpu"] = "CPU"
    env["host"] = socket.gethostname()
    return env


def installed_version(distribution: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


def usable(version: str | None, floor: str) -> bool:
    from packaging.version import Version

    return version is not None and Version(version) >= Version(floor)


def warm_up_accelerator() -> bool:
    """What a job on this CUDA device will import, imported now, in a warm kernel before
    transformers is: unsloth where installed (``auto`` picks it) and bitsandbytes (4-bit loading),
    so that a job's first minute is its model, not imports. True when unsloth was imported: such a
    kernel must not serve a job that asked for plain transformers (unsloth patches its models)."""
    machine = probe(import_unsloth=True)
    if machine.cuda and machine.bitsandbytes:
        importlib.import_module("bitsandbytes")
    return machine.unsloth


def choose_backend(requested: str, machine: Machine, devices: int = 1) -> str:
    """``auto``: unsloth where a CUDA device is visible and unsloth imports, else ``hf``
    (transformers + peft); ``hf`` on several devices, as unsloth trains on one. ``unsloth`` asked
    for where it cannot run is a clear error."""
    if requested == "hf" or (requested == "auto" and devices > 1):
        return "hf"
    if requested == "unsloth" and devices > 1:
        raise ConfigError(
            f"TrainConfig.backend='unsloth' trains on one device, not devices={devices}; "
            "use backend='auto' or 'hf'"
        )
    if requested == "unsloth":
        if not machine.cuda:
            raise ConfigError(
                "TrainConfig.backend='unsloth' needs a CUDA GPU and this worker has none; "
                "use backend='auto' (transformers + peft here) or run the job on a GPU worker"
            )
        if not machine.unsloth:
            why = f" ({machine.unsloth_error})" if machine.unsloth_error else ""
            raise ConfigError(
                f"TrainConfig.backend='unsloth' but unsloth does not import on this worker{why}; "
                "install it with pip install 'ftkit[unsloth]', or use backend='auto'"
            )
        return "unsloth"
    if requested != "auto":
        raise ConfigError(f"TrainConfig.backend={requested!r}: must be one of auto, unsloth, hf")
    return "unsloth" if machine.cuda and machine.unsloth else "hf"


def choose_dtype(machine: Machine) -> str:
    """bfloat16 on GPUs that compute in it natively (compute capability 8.0 and newer), float16 on
    older GPUs (T4, V100), float32 on a CPU."""
    if not machine.cuda:
        return "float32"
    if machine.capability is not None and machine.capability >= BF16_CAPABILITY:
        return "bfloat16"
    return "float16"


def choose_4bit(requested: bool | None, machine: Machine) -> bool:
    """Whether to load the base model in 4 bits (QLoRA). ``None``: where the worker can (a CUDA
    device and bitsandbytes). ``True`` where it cannot is a clear error, before any model loads."""
    can = machine.cuda and machine.bitsandbytes
    if requested is None:
        return can
    if requested and not machine.cuda:
        raise ConfigError(
            "TrainConfig.load_in_4bit=True (QLoRA) needs a CUDA GPU with bitsandbytes and this "
            "worker has no CUDA device; set load_in_4bit=False, or leave it unset (None) to load "
            "in 4 bits only where the worker can"
        )
    if requested and not machine.bitsandbytes:
        has = (
            f"bitsandbytes {machine.bitsandbytes_version} is installed"
            if machine.bitsandbytes_version
            else "bitsandbytes is not installed"
        )
        raise ConfigError(
            f"TrainConfig.load_in_4bit=True (QLoRA) needs bitsandbytes>={BITSANDBYTES_FLOOR}, and "
            f"{has} on this worker ({machine.name}); install it with pip install 'ftkit[qlora]', "
            "or set load_in_4bit=False"
        )
    return bool(requested)
