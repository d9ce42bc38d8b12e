"""torchrun for a multi-device job, started by the job's notebook kernel (``launch.py``):

    python -m ftkit.training.launcher TORCHRUN_ARGS

Its life is tied to the kernel's (``PR_SET_PDEATHSIG``), and it gives its pid to the training
processes it starts, which tie their lives to its own (``rank_run.py``). Apart from ``launch.py``,
which the kernel has imported, so that running this as ``__main__`` runs it once."""

from __future__ import annotations

import os
import sys

from ..core.lifetime import die_with_parent, orphaned_already


def main(argv: list[str]) -> None:
    """torchrun, with its life tied to the kernel's and its pid given to its processes, whose
    lives it ties to its own (rank_run.py)."""
    die_with_parent()
    if orphaned_already(int(os.environ.get("FTKIT_LAUNCHER_PARENT", "0")) or None):
        sys.exit(1)
    os.environ["FTKIT_LAUNCHER_PID"] = str(os.getpid())
    from torch.distributed.run import main as torchrun

    torchrun(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
