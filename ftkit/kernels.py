"""Warm notebook kernels for a worker: one is started and has torch, transformers, trl and peft
imported while the worker waits, so a job's notebook starts training at once. Each kernel runs one
job and is then shut down (no state crosses jobs); its replacement warms in the background, at idle
CPU priority where the system lets it return to normal afterwards: on a machine with few cores the
warm-up then uses only CPU time the running job leaves."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from typing import Any

log = logging.getLogger("ftkit.kernels")

WARM_UP = """\
import ftkit.device
_ftkit_unsloth = ftkit.device.warm_up_accelerator()  # on CUDA: unsloth first, bitsandbytes
import torch, transformers, trl, peft, datasets, matplotlib
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from peft import LoraConfig, get_peft_model
import ftkit.train, ftkit.data, ftkit.data.render, ftkit.device
ftkit.train.warm_up()
del torch, transformers, trl, peft, datasets, matplotlib, AutoModelForCausalLM, AutoTokenizer
del SFTConfig, SFTTrainer, LoraConfig, get_peft_model
"""


# The warm kernels that imported unsloth (a CUDA worker with unsloth installed): unsloth patches
# transformers' models, so such a kernel serves no job that asked for backend="hf".
WITH_UNSLOTH: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def start_kernel(warm: bool = True, on_started: Any = None, idle: bool = False):
    """A started python3 kernel (an AsyncKernelManager, as nbclient expects: with a blocking one it
    cannot notice a kernel that died), with the training stack imported when ``warm``;
    ``on_started(km)`` is called before the warm-up, which runs at idle priority with ``idle``."""
    from jupyter_client import BlockingKernelClient
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name="python3")
    # The kernel signs nothing, so it never holds the queue secret: a report cannot leak it.
    env = {k: v for k, v in os.environ.items() if k != "FTKIT_QUEUE_SECRET"}
    run_sync(km.start_kernel)(env=env)
    try:
        if idle:
            set_idle(km, True)
        if on_started is not None:
            on_started(km)
        if warm:
            kc = BlockingKernelClient(connection_file=km.connection_file)
            kc.load_connection_file()
            # No heartbeat channel: on a loaded machine a kernel that answers its heartbeat late
            # is taken for dead ("Kernel died before replying to kernel_info"), the warm-up lost.
            kc.start_channels(hb=False)
            try:
                kc.wait_for_ready(timeout=120)
                reply = kc.execute_interactive(
                    WARM_UP,
                    timeout=600,  # unsloth alone takes about 40 s to import
                    output_hook=lambda msg: None,
                    user_expressions={"unsloth": "_ftkit_unsloth"},
                )
                if reply["content"]["status"] != "ok":
                    log.warning("warming a kernel failed: %s", reply["content"].get("evalue"))
                else:
                    said = reply["content"]["user_expressions"]["unsloth"]
                    WITH_UNSLOTH[km] = said.get("data", {}).get("text/plain") == "True"
            finally:
                kc.stop_channels()
    except BaseException:
        shutdown(km)  # a kernel that never became usable is not left running
        raise
    return km


@functools.cache
def idle_priority_reversible() -> bool:
    """Whether this process may put a thread at idle CPU priority and bring it back to normal
    (Linux; root, CAP_SYS_NICE or RLIMIT_NICE >= 20): tried on a throw-away thread."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    done: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            done.append(True)
        except OSError:
            done.append(False)

    thread = threading.Thread(target=probe, name="ftkit-priority-probe")
    thread.start()
    thread.join()
    return bool(done and done[0])


def set_idle(km, idle: bool) -> None:
    """Idle CPU priority for a kernel (its main thread: the warm-up's imports, and every thread
    they start), or normal priority again for all its threads."""
    pid = kernel_pid(km)
    if pid is None:
        return
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    try:
        threads = [pid] if idle else [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return  # the kernel is gone
    for tid in threads:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except OSError as exc:  # a thread that ended meanwhile
            log.debug("kernel %s thread %s priority: %s", pid, tid, exc)


def is_alive(km) -> bool:
    from jupyter_core.utils import run_sync

    return bool(run_sync(km.is_alive)())


def shutdown(km) -> None:
    """Stop a kernel now (and free its ports and files); a dead one is just cleaned up."""
    from jupyter_core.utils import run_sync

    try:
        run_sync(km.shutdown_kernel)(now=True)
    except Exception as exc:  # already gone: nothing left to stop
        log.debug("kernel shutdown: %s", exc)


def kernel_pid(km) -> int | None:
    process = getattr(km.provisioner, "process", None)
    return getattr(process, "pid", None)


def kill_kernel(km) -> bool:
    """Kill a kernel that does not answer (and anything it started)."""
    import psutil

    pid = kernel_pid(km)
    if pid is None:
        return False
    try:
        parent = psutil.Process(pid)
        for proc in [*parent.children(recursive=True), parent]:
            proc.kill()
    except psutil.Error:
        return False
    return True


class KernelPool:
    """Holds one warm spare kernel. ``take()`` hands it over (or starts a cold one when the spare
    is not ready) and begins warming the next one."""

    retry_seconds = 5.0  # the first back-off after a failed warm-up; it doubles, up to 5 minutes

    def __init__(self, *, warm: bool | None = None):
        self.warm = os.environ.get("FTKIT_WARM_KERNEL", "1") != "0" if warm is None else warm
        self.idle = self.warm and idle_priority_reversible()
        self._spare: Any = None
        self._starting: Any = None  # the kernel being warmed, once it has a process
        self._wanted = False  # a job waits for the kernel being warmed
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        self._closed = False
        self._failures = 0  # warm-ups that failed in a row
        self._retry_at: float | None = None  # when keep_warm() tries again after a failure

    def start(self) -> KernelPool:
        if self.warm:
            self._warm_next()
        return self

    def _warm_next(self) -> None:
        def started(km) -> None:
            with self._lock:
                self._starting, wanted = km, self._wanted
            if wanted:
                set_idle(km, False)

        def run() -> None:
            try:
                km = start_kernel(warm=True, on_started=started, idle=self.idle)
            except Exception as exc:  # a busy machine, say: keep_warm() tries again later
                with self._lock:
                    self._starting, self._failures = None, self._failures + 1
                    backoff = self.retry_seconds * 2 ** (self._failures - 1)
                    self._retry_at = time.monotonic() + min(backoff, 300)
                log.warning(
                    "could not start a warm kernel (jobs start cold ones meanwhile): %s", exc
                )
                return
            with self._lock:
                self._starting, self._failures, self._retry_at = None, 0, None
                if self._closed:
                    shutdown(km)
                else:
                    self._spare = km

        self._warming = threading.Thread(target=run, name="ftkit-warm-kernel", daemon=True)
        self._warming.start()

    def keep_warm(self) -> None:
        """Called now and then (the worker's heartbeat): a warm-up that failed is tried again
        after a back-off, so one bad moment does not leave the worker cold for good."""
        with self._lock:
            due = (
                self.warm
                and not self._closed
                and self._spare is None
                and self._retry_at is not None
                and time.monotonic() >= self._retry_at
                and not (self._warming is not None and self._warming.is_alive())
            )
            if due:
                self._retry_at = None
        if due:
            self._warm_next()

    @property
    def ready(self) -> bool:
        """A warm spare is waiting."""
        return self._spare is not None

    def take(self, wait: float = 120.0, *, backend: str = "auto"):
        """A kernel for one job: the warm spare when it is (or soon will be) ready, at normal
        priority from here on. A job that asked for ``backend="hf"`` never gets a spare that
        imported unsloth: it starts a cold kernel and the spare waits for the next job."""
        if backend == "hf" and self._spare is not None and WITH_UNSLOTH.get(self._spare):
            return start_kernel(warm=False)
        with self._lock:
            self._wanted, warming = True, self._starting
        if warming is not None and self.idle:  # a job waits for it now: no background task
            set_idle(warming, False)
        if self.warm and self._warming is not None:
            self._warming.join(timeout=wait)
        with self._lock:
            km, self._spare, self._wanted = self._spare, None, False
        if km is not None and self.idle:
            set_idle(km, False)
        if self.warm:
            self._warm_next()
        return km if km is not None and is_alive(km) else start_kernel(warm=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            km, self._spare = self._spare, None
        if km is not None:
            shutdown(km)
