"""Processes that must not outlive the one that started them: a worker's zygote and kernels, and a
multi-device job's launcher and training processes. Linux ends them with their parent
(``PR_SET_PDEATHSIG``); elsewhere the parent stops them itself."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent ends (a no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def orphaned_already(parent: int | None = None) -> bool:
    """Whether the parent ended before ``die_with_parent`` took hold (this process was adopted):
    its child must exit at once rather than run on unwatched."""
    ppid = os.getppid()
    return ppid == 1 if parent is None else ppid != parent
