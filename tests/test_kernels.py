"""The warm kernel pool: one bad moment (a kernel that would not start on a busy machine) does not
leave a worker cold for the rest of its life."""

from __future__ import annotations

import psutil
import pytest

from conftest import wait_for
from ftkit import kernels

pytestmark = pytest.mark.slow  # a real kernel imports the training stack


def test_a_failed_warm_up_is_tried_again_after_a_back_off(monkeypatch):
    real, calls = kernels.start_kernel, []

    def first_start_fails(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("Kernel didn't respond in 120 seconds")
        return real(**kwargs)

    monkeypatch.setattr(kernels, "start_kernel", first_start_fails)
    pool = kernels.KernelPool(warm=True)
    pool.retry_seconds = 0.2
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    pool.start()
    try:
        wait_for(lambda: pool._retry_at is not None, 60, "the failed warm-up to be seen")
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
        if pool._warming is not None:
            pool._warming.join(timeout=600)
    # every kernel the pool started (the spare warming after take() too) is gone again
    wait_for(
        lambda: not ({p.pid for p in psutil.Process().children(recursive=True)} - before),
        60,
        "the pool's kernels to exit",
    )
