"""Kernels for a worker's jobs, one fresh kernel per job (no state crosses jobs), started warm:
torch, transformers, trl and peft already imported, so a job's notebook starts training at once.

Two ways, chosen by ``KernelPool``:
- **fork** (no CUDA device visible, Linux): a zygote process (``ftkit.worker.zygote``) imports
  the stack once at the worker's start and forks each job's kernel in milliseconds. Nothing warms
  beside a running job.
- **spare** (a CUDA worker, where a process that touched CUDA cannot fork kernels that use it):
  one spare kernel, warmed while the worker is idle (at its start, and after each job ends),
  never while a job trains; on a CUDA worker its warm-up imports unsloth and bitsandbytes too.
``FTKIT_WARM_KERNEL=0`` starts every kernel cold (the tests' short-lived workers).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from ..machine import cuda_visible

log = logging.getLogger(__name__)

# One warm-up for both ways: what the zygote imports before it forks, a spare imports too (after
# unsloth and bitsandbytes on a CUDA worker, which only a spare kernel ever meets).
WARM_UP = """\
import ftkit.training.device
_ftkit_unsloth = ftkit.training.device.warm_up_accelerator()  # on CUDA: unsloth first, bitsandbytes
import ftkit.training.warmup, ftkit.data.render  # what every job runs
ftkit.training.warmup.preload()
"""


# The warm kernels that imported unsloth (a CUDA worker with unsloth installed): unsloth patches
# transformers' models, so such a kernel serves no job that asked for backend="hf".
WITH_UNSLOTH: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


# The worker's secrets: a kernel signs nothing, so it never holds them, and a report cannot leak
# them (the queue's signs job specs, the webhooks' signs a job's announced end).
SECRETS = ("FTKIT_QUEUE_SECRET", "FTKIT_WEBHOOK_SECRET")


def kernel_env(every_device: bool = False) -> dict[str, str]:
    """The worker's environment as every kernel starts with it: without the secrets. A worker of
    several GPUs shows a kernel only its first, unless ``every_device`` (a multi-device job's
    kernel, which launches a process per device): a one-device job must not see the others,
    where transformers would spread it over them (DataParallel) and unsloth refuses to start."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    if not every_device:
        from ..machine import offered_devices

        kind, count = offered_devices()
        if kind == "cuda" and count > 1:
            listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
            env["CUDA_VISIBLE_DEVICES"] = next((d for d in listed if d), "0")
    return env


def start_kernel(
    warm: bool = True, on_started: Any = None, idle: bool = False, every_device: bool = False
):
    """A started python3 kernel (an AsyncKernelManager, as nbclient expects: with a blocking one it
    cannot notice a kernel that died), with the training stack imported when ``warm``;
    ``on_started(km)`` is called before the warm-up, which runs at idle priority with ``idle``;
    it sees every device of the worker with ``every_device``, else one (``kernel_env``)."""
    from jupyter_client import BlockingKernelClient
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name="python3")
    env = kernel_env(every_device)
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
    """The kernel's process: a forked kernel's own (its stand-in wrote it beside the connection
    file), else the process the kernel manager started."""
    try:
        return int(Path(km.connection_file + ".kernel-pid").read_text())
    except (OSError, ValueError, TypeError):
        pass
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


class ForkServer:
    """The worker's zygote (``ftkit.worker.zygote``): started warm-up first, then a kernel per job
    forked from it. Started from the worker's main thread: the zygote dies with the thread that
    started it (``PR_SET_PDEATHSIG``), and the main thread lives as long as the worker."""

    def __init__(self, idle: bool = False):
        self.folder = Path(tempfile.mkdtemp(prefix="ftkit-zygote-"))
        self.socket = self.folder / "zygote.sock"
        spec = self.folder / "kernels" / "ftkit-fork"
        spec.mkdir(parents=True)
        client = Path(__file__).with_name("forkclient.py")
        (spec / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-S", str(client), "{connection_file}"],
                    "display_name": "Python 3 (ftkit, forked)",
                    "language": "python",
                    "interrupt_mode": "signal",
                    "env": {"FTKIT_ZYGOTE_SOCKET": str(self.socket)},
                }
            )
        )
        env = kernel_env()
        if idle:
            env["FTKIT_ZYGOTE_IDLE"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ftkit.worker.zygote", str(self.socket)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        self._said = threading.Event()  # ready, or it exited
        self.problems: list[dict[str, str]] = []  # what its import check found (stack.Problem)
        threading.Thread(target=self._read, name="ftkit-zygote", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "ready":
                self._ready.set()
                self._said.set()
            elif line.startswith("problem "):
                self.problems.append(json.loads(line.removeprefix("problem ")))
        self._said.set()

    def checked(self, timeout: float) -> list[dict[str, str]]:
        """Wait until the zygote is warm or has exited; the problems its import check found."""
        self._said.wait(timeout)
        return self.problems

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.process.poll() is None

    def wait(self, timeout: float) -> bool:
        """Until the zygote is warm (False: it died, or did not warm in time)."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
        return self.process.poll() is None

    def kernel(self):
        """A started kernel forked from the zygote (an AsyncKernelManager, as nbclient expects)."""
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        specs = KernelSpecManager(kernel_dirs=[str(self.folder / "kernels")])
        km = AsyncKernelManager(kernel_name="ftkit-fork", kernel_spec_manager=specs)
        env = kernel_env()
        run_sync(km.start_kernel)(env=env)
        # the kernel's own pid, written by its stand-in once forked: what is watched or killed
        pid_file = Path(km.connection_file + ".kernel-pid")
        deadline = time.monotonic() + 60
        while not pid_file.is_file():
            if not is_alive(km) or time.monotonic() > deadline:
                shutdown(km)
                raise RuntimeError("the zygote forked no kernel")
            time.sleep(0.005)
        return km

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class KernelPool:
    """A warm kernel for each job: forked from a zygote where no CUDA device is visible, else a
    warm spare, warmed only while the worker is idle. ``take()`` hands one over (or a cold one when
    none is ready); ``idle()`` tells the pool a job has ended and it may warm again."""

    retry_seconds = 5.0  # the first back-off after a failed warm-up; it doubles, up to 5 minutes

    def __init__(self, *, warm: bool | None = None, fork: bool | None = None):
        self.warm = os.environ.get("FTKIT_WARM_KERNEL", "1") != "0" if warm is None else warm
        if fork is None:
            fork = (
                self.warm
                and sys.platform == "linux"
                and os.environ.get("FTKIT_FORK_KERNELS", "1") != "0"
                and not cuda_visible()
            )
        self.fork = bool(fork)
        self.idle_priority = self.warm and idle_priority_reversible()
        self.zygote: ForkServer | None = None
        self._spare: Any = None
        self._starting: Any = None  # the kernel being warmed, once it has a process
        self._wanted = False  # a job waits for the kernel being warmed
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        self._closed = False
        self._failures = 0  # warm-ups that failed in a row
        self._retry_at: float | None = None  # when keep_warm() tries again after a failure

    def import_problems(self, timeout: float = 900) -> list:
        """What a job imports, imported for real before the worker takes a job: by the zygote's
        own warm-up where there is one, else in a child process (``stack.check_in_child``).
        unsloth alone takes about 40 s to import."""
        from ..stack import Problem, check_in_child

        if self.zygote is not None:
            return [Problem(**p) for p in self.zygote.checked(timeout)]
        return check_in_child(timeout)

    @property
    def mode(self) -> str:
        return "cold" if not self.warm else "fork" if self.fork else "spare"

    def start(self) -> KernelPool:
        if self.fork:
            self.zygote = ForkServer(idle=self.idle_priority)
        elif self.warm:
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
                km = start_kernel(warm=True, on_started=started, idle=self.idle_priority)
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

    def idle(self) -> None:
        """A job has ended: warm the next spare now (spare mode), while no job trains."""
        with self._lock:
            due = (
                self.warm
                and not self.fork
                and not self._closed
                and self._spare is None
                and self._retry_at is None
                and not self.warming
            )
        if due:
            self._warm_next()

    def keep_warm(self) -> None:
        """Called now and then while the worker is idle (its heartbeat): a warm-up that failed is
        tried again after a back-off, so one bad moment does not leave the worker cold for good;
        a zygote that died is started again."""
        if self.fork:
            if (
                not self._closed
                and self.zygote is not None
                and self.zygote.process.poll() is not None
            ):
                log.warning(
                    "the kernel zygote exited (%s): starting another",
                    self.zygote.process.returncode,
                )
                self.zygote.close()
                self.zygote = ForkServer(idle=self.idle_priority)
            return
        with self._lock:
            due = (
                self.warm
                and not self._closed
                and self._spare is None
                and self._retry_at is not None
                and time.monotonic() >= self._retry_at
                and not self.warming
            )
            if due:
                self._retry_at = None
        if due:
            self._warm_next()

    @property
    def warming(self) -> bool:
        """A spare kernel is being started and warmed now."""
        return self._warming is not None and self._warming.is_alive()

    def wait_for_warm_up(self, timeout: float) -> bool:
        """Until the warm-up in progress, if any, has ended; False when it still runs."""
        if self._warming is not None:
            self._warming.join(timeout=timeout)
        return not self.warming

    def retry_in(self) -> float | None:
        """Seconds until ``keep_warm()`` tries a failed warm-up again (0: it is due), or None when
        no failed warm-up waits for a retry."""
        with self._lock:
            if self._retry_at is None:
                return None
            return max(0.0, self._retry_at - time.monotonic())

    @property
    def ready(self) -> bool:
        """A warm kernel is ready to hand over."""
        if self.fork:
            return self.zygote is not None and self.zygote.ready
        return self._spare is not None

    def take(self, wait: float = 120.0, *, backend: str = "auto", devices: int = 1):
        """A kernel for one job, at normal priority: forked from the zygote, or the warm spare
        when it is (or soon will be) ready, else a cold one. A job that asked for
        ``backend="hf"`` never gets a spare that imported unsloth: it starts a cold kernel and
        the spare waits for the next job. A multi-device job on a GPU worker gets a cold kernel
        that sees every device (the spare sees one; the kernel trains nothing itself, so its
        imports cost little beside its processes'). Nothing starts warming here: ``idle()``
        does, later."""
        if devices > 1 and not self.fork:
            return start_kernel(warm=False, every_device=True)
        if self.fork:
            return self._fork(wait)
        if backend == "hf" and self._spare is not None and WITH_UNSLOTH.get(self._spare):
            return start_kernel(warm=False)
        with self._lock:
            self._wanted, warming = True, self._starting
        if warming is not None and self.idle_priority:  # a job waits for it now: no background
            set_idle(warming, False)
        if self.warm:
            self.wait_for_warm_up(wait)
        with self._lock:
            km, self._spare, self._wanted = self._spare, None, False
        if km is not None and self.idle_priority:
            set_idle(km, False)
        return km if km is not None and is_alive(km) else start_kernel(warm=False)

    def _fork(self, wait: float):
        zygote = self.zygote
        if zygote is not None and zygote.wait(wait):
            try:
                return zygote.kernel()
            except Exception as exc:  # the zygote died meanwhile, say: this job starts cold
                log.warning("could not fork a kernel (this job's starts cold): %s", exc)
        return start_kernel(warm=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            km, self._spare = self._spare, None
        if km is not None:
            shutdown(km)
        if self.zygote is not None:
            self.zygote.close()
