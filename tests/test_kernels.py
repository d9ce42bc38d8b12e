"""The warm kernel pool: one bad moment (a kernel that would not start on a busy machine) does not
leave a worker cold for the rest of its life."""

from __future__ import annotations

import psutil
import pytest

from conftest import wait_for
from ftkit.worker import kernels

pytestmark = pytest.mark.slow  # a real kernel imports the training stack


def test_a_failed_warm_up_is_tried_again_after_a_back_off(monkeypatch):
    real, calls = kernels.start_kernel, []

    def first_start_fails(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("Kernel didn't respond in 120 seconds")
        return real(**kwargs)

    monkeypatch.setattr(kernels, "start_kernel", first_start_fails)
    pool = kernels.KernelPool(warm=True, fork=False)  # a spare's warm-up (a CUDA worker's)
    pool.retry_seconds = 0.2
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    pool.start()
    try:
        wait_for(lambda: pool.retry_in() is not None, 60, "the failed warm-up to be seen")
        assert not pool.ready
        pool.keep_warm()  # too early: the back-off has not passed
        assert len(calls) == 1
        wait_for(lambda: (pool.keep_warm(), pool.ready)[1], 600, "a warm kernel on the retry")
        assert len(calls) == 2
        km = pool.take(wait=0)
        assert kernels.is_alive(km)
        kernels.shutdown(km)
    finally:
        pool.close()
        pool.wait_for_warm_up(600)
    # every kernel the pool started is gone again
    wait_for(
        lambda: not ({p.pid for p in psutil.Process().children(recursive=True)} - before),
        60,
        "the pool's kernels to exit",
    )


# -- kernels forked from a zygote (no CUDA device) --------------------------------------------------
RUN = (
    "import sys, os\n"
    "print('warm' if {'torch', 'transformers', 'trl', 'peft'} <= set(sys.modules) else 'cold',"
    " globals().get('left_behind'), os.getcwd())\n"
    "left_behind = 'state of the job before'\n"
)


def execute(km, code: str) -> str:
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=km.connection_file)
    kc.load_connection_file()
    kc.start_channels()
    out: list[str] = []
    try:
        kc.wait_for_ready(timeout=120)
        hook = lambda m: out.append(m["content"]["text"]) if m["msg_type"] == "stream" else None  # noqa: E731
        reply = kc.execute_interactive(code, timeout=120, output_hook=hook)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
    return "".join(out)


def test_forked_kernels_start_warm_and_no_state_crosses_jobs(tmp_path):
    pool = kernels.KernelPool(warm=True, fork=True).start()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        assert pool.mode == "fork"
        assert pool.import_problems() == [] and pool.ready
        seen = []
        for _ in range(2):
            km = pool.take()
            pid = kernels.kernel_pid(km)
            assert pid != km.provisioner.process.pid  # the kernel, not its stand-in
            seen.append(execute(km, RUN))
            kernels.shutdown(km)
            wait_for(lambda pid=pid: not psutil.pid_exists(pid), 30, "the kernel to go at shutdown")
        assert seen[0].split()[:2] == ["warm", "None"]
        assert seen[1].split()[:2] == ["warm", "None"]  # the first job's variable is not there
    finally:
        pool.close()
    wait_for(
        lambda: not ({p.pid for p in psutil.Process().children(recursive=True)} - before),
        60,
        "the zygote and its kernels to exit",
    )


def test_a_forked_kernel_killed_from_outside_is_seen_dead_and_one_of_a_dead_worker_goes():
    """kill -9 on a forked kernel (out of memory, say) is a dead kernel to its manager, as for any
    kernel; and a worker SIGKILLed takes its zygote and their kernels with it."""
    import subprocess
    import sys

    parent = (
        "import time\n"
        "from ftkit.worker.kernels import KernelPool, kernel_pid\n"
        "pool = KernelPool(warm=True, fork=True).start()\n"
        "km = pool.take()\n"
        "print(pool.zygote.process.pid, kernel_pid(km), flush=True)\n"
        "time.sleep(600)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    zygote, kernel = map(int, worker.stdout.readline().split())
    worker.kill()
    worker.wait()
    wait_for(
        lambda: not psutil.pid_exists(zygote) and not psutil.pid_exists(kernel),
        30,
        "the dead worker's zygote and kernel to go",
    )

    pool = kernels.KernelPool(warm=True, fork=True).start()
    try:
        km = pool.take()
        assert kernels.is_alive(km)
        psutil.Process(kernels.kernel_pid(km)).kill()
        wait_for(lambda: not kernels.is_alive(km), 30, "the manager to see its kernel dead")
        kernels.shutdown(km)
    finally:
        pool.close()


def test_a_spare_kernel_warms_only_when_the_job_has_ended():
    """Spare mode (a CUDA worker's): take() hands the spare over and warms nothing beside the job;
    idle() (the job ended) warms the next."""
    pool = kernels.KernelPool(warm=True, fork=False).start()
    try:
        wait_for(lambda: pool.ready, 600, "the first spare")
        km = pool.take(wait=0)
        assert execute(km, RUN).startswith("warm None")
        # a warm-up starts its thread before the call that asked for it returns: none was asked
        assert not pool.warming and not pool.ready
        assert not any(
            "ipykernel" in " ".join(p.cmdline())
            for p in psutil.Process().children(recursive=True)
            if p.pid != kernels.kernel_pid(km)
        )
        kernels.shutdown(km)
        pool.idle()
        wait_for(lambda: pool.ready, 600, "the next spare, warmed after the job")
    finally:
        pool.close()
