"""Where this process sits in a multi-device job: its rank among the training processes torchrun
started (0 alone otherwise), and the few collective decisions ftkit adds to the trainer's. Every
rank must take the same branch at the same step (stop, save) or the others wait forever in their
next all-reduce, so rank 0, the one that reads the job store, decides and the others follow."""

from __future__ import annotations

import os


def rank() -> int:
    """This process's rank (torchrun's RANK; 0 in a single-process run)."""
    raw = os.environ.get("RANK", "0")
    return int(raw) if raw.isdigit() else 0


def world_size() -> int:
    """How many training processes the job runs (torchrun's WORLD_SIZE; 1 alone)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


def is_main() -> bool:
    """Rank 0: the one process of a job that writes metrics, checkpoints, markers and the adapter."""
    return rank() == 0


def _group_ready() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def decide(choice: int) -> int:
    """Rank 0's ``choice`` (a small non-negative number) on every rank; what the other ranks pass
    is ignored. How a stop request, read by rank 0 alone, stops every rank after the same step."""
    if not _group_ready():
        return choice
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([choice if is_main() else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def barrier() -> None:
    """Wait for every rank (a checkpoint's files, every rank's share, are on disk before rank 0
    uploads the folder)."""
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def gather(value: object) -> list[object]:
    """Every rank's ``value``, in rank order, on every rank ([value] alone)."""
    if not _group_ready():
        return [value]
    import torch.distributed as dist

    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out
