"""The worker: takes jobs from the queue one at a time and runs each as a notebook in a fresh
kernel of its own, on this machine.

The walls it keeps:
- everything it reads (queue messages, job records, files in storage) is untrusted: a record is
  verified (signature, fields, base model) before anything is staged, and every path built from
  one stays inside its root;
- a job it accepts either runs or ends visibly (failed, with why), always with its executed
  notebook as the report; outages of the broker or storage are waited out, never blamed on a job;
- one kernel per job: no state crosses jobs, and the kernel never holds the queue secret.

The rooms: ``process`` (the worker process: consumer, heartbeat, reapers, signals) runs ``job``
(one job: claim -> stage -> execute -> finish), which uses ``staging`` (data, model, checkpoints)
and ``notebook`` (papermill, watchdog, report), on kernels from ``kernels`` (forked by ``zygote``
through its stand-in ``forkclient``, or warm spares); ``output_log`` streams a notebook's output
into the job's logs; ``runtime`` holds what the worker's threads share.

Its names are imported on first use: the zygote and every warm kernel import ``ftkit.worker.zygote``
and must not load the queue consumer with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .process import Runtime, exposure_warnings, run_worker

__all__ = ["Runtime", "exposure_warnings", "run_worker"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import process

        return getattr(process, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
