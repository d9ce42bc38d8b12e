"""Warm notebook kernels for a worker: one is started and has torch, transformers, trl and peft
imported while the worker waits, so a job's notebook starts training at once. Each kernel runs one
job and is then shut down (no state crosses jobs); its replacement warms in the background."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("ftkit.kernels")

WARM_UP = """\
import torch, transformers, trl, peft, datasets, matplotlib
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from peft import LoraConfig, get_peft_model
import ftkit.train, ftkit.render, ftkit.data
del torch, transformers, trl, peft, datasets, matplotlib, AutoModelForCausalLM, AutoTokenizer
del SFTConfig, SFTTrainer, LoraConfig, get_peft_model
"""


def start_kernel(warm: bool = True):
    """A started python3 kernel (an AsyncKernelManager, as nbclient expects: with a blocking one it
    cannot notice a kernel that died), with the training stack imported when ``warm``."""
    from jupyter_client import BlockingKernelClient
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name="python3")
    run_sync(km.start_kernel)()
    if warm:
        kc = BlockingKernelClient(connection_file=km.connection_file)
        kc.load_connection_file()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            reply = kc.execute_interactive(WARM_UP, timeout=300, output_hook=lambda msg: None)
            if reply["content"]["status"] != "ok":
                log.warning("warming a kernel failed: %s", reply["content"].get("evalue"))
        finally:
            kc.stop_channels()
    return km


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

    def __init__(self, *, warm: bool | None = None):
        self.warm = os.environ.get("FTKIT_WARM_KERNEL", "1") != "0" if warm is None else warm
        self._spare: Any = None
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        self._closed = False

    def start(self) -> KernelPool:
        if self.warm:
            self._warm_next()
        return self

    def _warm_next(self) -> None:
        def run() -> None:
            try:
                km = start_kernel(warm=True)
            except Exception as exc:
                log.warning("could not start a warm kernel: %s", exc)
                return
            with self._lock:
                if self._closed:
                    shutdown(km)
                else:
                    self._spare = km

        self._warming = threading.Thread(target=run, name="ftkit-warm-kernel", daemon=True)
        self._warming.start()

    @property
    def ready(self) -> bool:
        """A warm spare is waiting."""
        return self._spare is not None

    def take(self, wait: float = 120.0):
        """A kernel for one job: the warm spare when it is (or soon will be) ready."""
        if self.warm and self._warming is not None:
            self._warming.join(timeout=wait)
        with self._lock:
            km, self._spare = self._spare, None
        if self.warm:
            self._warm_next()
        return km if km is not None and is_alive(km) else start_kernel(warm=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            km, self._spare = self._spare, None
        if km is not None:
            shutdown(km)
