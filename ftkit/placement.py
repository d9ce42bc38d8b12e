"""Which worker may run which job: a job trains on ``devices`` devices of one worker (GPUs only
for FSDP, which accelerate shards on GPUs alone), and a worker offers what its heartbeat says.
The worker asks before it claims a job; the client and the server ask to say why a queued job
waits. Records are untrusted: what they say is read as plain numbers and names, never trusted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# How a multi-device job spreads: "none" copies the model to every device (data-parallel, DDP),
# "fsdp" shards its weights, gradients and optimizer state across them (accelerate's FSDP).
SHARDINGS = ("none", "fsdp")
MAX_DEVICES = 64


def devices_problem(config: Any) -> tuple[str, str] | None:
    """The setting (and why) that no worker could run, for TrainConfig to refuse; None when the
    devices, the sharding and the settings beside them go together."""
    devices, sharding = config.devices, config.sharding
    if isinstance(devices, bool) or not isinstance(devices, int):
        return "devices", f"must be a whole number of devices, 1 to {MAX_DEVICES}"
    if not 1 <= devices <= MAX_DEVICES:
        return "devices", f"must be 1 to {MAX_DEVICES} (the devices of one worker)"
    if sharding not in SHARDINGS:
        return "sharding", f"must be one of {', '.join(SHARDINGS)}"
    if devices == 1:
        if sharding != "none":
            return "sharding", "shards across devices: set devices >= 2, or 'none'"
        return None
    if config.backend == "unsloth":
        return "backend", (
            f"unsloth trains on one device and this job asks for devices={devices}: "
            "use backend='auto' or 'hf' (transformers + peft) for a multi-device job"
        )
    if config.auto_batch_size:
        return "auto_batch_size", (
            "retries an out-of-memory run on one device; with devices > 1 choose batch_size "
            "and gradient_accumulation_steps yourself"
        )
    if sharding == "fsdp" and config.method != "sft":
        return "sharding", (
            f"'fsdp' trains method='sft'; {config.method} keeps a reference model beside the "
            "policy, which ftkit does not shard yet: use sharding='none' (data-parallel)"
        )
    return None


@dataclass(frozen=True)
class Need:
    """What one job needs of a worker."""

    devices: int = 1
    gpus_only: bool = False  # sharding="fsdp": accelerate shards on GPUs, not CPU processes

    @classmethod
    def of(cls, config: Any) -> Need:
        """From a TrainConfig or a record's config dict (a bad value reads as the default: the
        worker refuses the record itself when it verifies it)."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        devices = get("devices", 1)
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            devices = 1
        return cls(devices=devices, gpus_only=get("sharding", "none") == "fsdp")

    def describe(self) -> str:
        unit = "GPU" if self.gpus_only else "device"
        return f"{self.devices} {unit}{'s' if self.devices != 1 else ''}"


@dataclass(frozen=True)
class Offer:
    """What one worker offers a job: its device kind ("cuda" or "cpu") and how many."""

    kind: str = "cpu"
    devices: int = 1

    @classmethod
    def of(cls, worker: Any) -> Offer:
        """From a heartbeat (a WorkerInfo dict): a worker from before device groups offers 1."""
        kind = worker.get("device_kind") if isinstance(worker, dict) else None
        devices = worker.get("devices") if isinstance(worker, dict) else None
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            devices = 1
        return cls(kind="cuda" if kind == "cuda" else "cpu", devices=devices)

    def describe(self) -> str:
        """For the workers tables: "2 × GPU", "1 × CPU"."""
        return f"{self.devices} × {'GPU' if self.kind == 'cuda' else 'CPU'}"


def refusal(need: Need, offer: Offer) -> str | None:
    """Why this worker cannot run the job, or None when it can."""
    if need.gpus_only and offer.kind != "cuda":
        return f"sharding='fsdp' needs {need.describe()} and this worker has CPUs only"
    if need.devices > offer.devices:
        return f"the job needs {need.describe()} and this worker has {offer.devices}"
    return None


def waiting_reason(need: Need, offers: list[Offer]) -> str | None:
    """Why a queued job cannot start on any live worker ("waiting for a worker with 4 devices;
    the largest has 2"), or None when one of them could run it."""
    if need.devices == 1 and not need.gpus_only:
        return None
    if any(refusal(need, offer) is None for offer in offers):
        return None
    wanted = f"waiting for a worker with {need.describe()}"
    if need.gpus_only:
        wanted += " (sharding='fsdp' shards on GPUs)"
    eligible = [o.devices for o in offers if o.kind == "cuda" or not need.gpus_only]
    if not offers:
        return f"{wanted}; no worker is running"
    if not eligible:
        return f"{wanted}; the workers have CPUs only"
    return f"{wanted}; the largest has {max(eligible)}"
