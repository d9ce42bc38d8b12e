"""What the fault tests share: jobs long enough to interrupt, sized from this machine's measured
step time, and ways to kill what runs them."""

from __future__ import annotations

import math
import signal
import time

import pytest

from conftest import EXAMPLE_DATA, wait_for

# The job store's contract runs on both backends in test_jobs.py; each slow fault test runs on one
# of them (conftest's redis_only or sqlite_only), alternating, to keep the suite short.


FAST = {"env": {"FTKIT_KILL_GRACE_SECONDS": "3"}}


SLOW_JOB = dict(
    max_steps=30,
    batch_size=8,
    gradient_accumulation_steps=4,
    max_seq_length=256,
    learning_rate=3e-3,
    save_steps=5,
)


def slow_job(client, tiny_model, **overrides):
    """A job with steps big enough to interrupt between: its length comes from ``steps_past``."""
    return client.submit(EXAMPLE_DATA, **{"base_model": str(tiny_model), **SLOW_JOB, **overrides})


def measured_seconds_per_step(tiny_model, folder, job: dict, data, fmt: str) -> float:
    """One step of ``job`` on ``data`` on this machine, measured in this process (the kernel runs
    the same code): the median gap between steps 2 to 5 of a real run."""
    from transformers import TrainerCallback

    from ftkit import training
    from ftkit.config import TrainConfig

    config = TrainConfig(base_model=str(tiny_model), **{**job, "max_steps": 5, "save_steps": 0})
    model, tokenizer, _ = training.load_model(config)
    train_data, eval_data, _ = training.prepare_data(str(data), fmt, tokenizer, config)
    trainer = training.make_trainer(
        model, tokenizer, train_data, eval_data, config, str(folder), training.Reporter(None)
    )
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    trainer.add_callback(Clock())
    training.train(trainer, training.Reporter(None))
    gaps = sorted(b - a for a, b in zip(ends[1:], ends[2:]))
    return gaps[len(gaps) // 2]


@pytest.fixture(scope="session")
def seconds_per_step(tiny_model, tmp_path_factory) -> float:
    """One step of the slow job on this machine."""
    folder = tmp_path_factory.mktemp("step-time")
    return measured_seconds_per_step(tiny_model, folder, SLOW_JOB, EXAMPLE_DATA, "chat")


def steps_past(step: int, seconds_per_step: float, seconds: float = 10.0) -> int:
    """A job length that keeps training about ``seconds`` after ``step`` on this machine: long
    enough for an interrupt seen at ``step`` to land mid-training on a fast machine too."""
    return step + max(12, math.ceil(seconds / seconds_per_step))


def step_of(job) -> int:
    return job.status()["current_step"] or 0


def assert_history_continues(job, total: int) -> None:
    steps = [m["step"] for m in job.metrics()]
    assert steps == list(range(1, total + 1)), steps


def kernel_of(client, worker, job, timeout: float = 30):
    """The kernel running ``job``, as a ``psutil.Process``: the one the worker's heartbeat names."""
    import psutil

    pid = wait_for(
        lambda: next(
            (w["kernel_pid"] for w in client.workers() if w.get("current_job") == job.id), None
        ),
        timeout,
        "the worker's heartbeat to name the job's kernel",
    )
    kernel = psutil.Process(pid)
    assert kernel.parent().pid == worker.proc.pid  # the job's kernel, started by this worker
    return kernel


def kill_kernel_of(client, worker, job) -> int:
    """SIGKILL the kernel running ``job`` (as the out-of-memory killer would); its pid."""
    kernel = kernel_of(client, worker, job)
    kernel.send_signal(signal.SIGKILL)
    return kernel.pid


def cancel_mid_training(job, from_step: int = 3) -> None:
    """Cancel a running job and check it stops within seconds, keeping its report. The kernel reads
    a stop request at most every 0.5 s and reports progress every 1 s: the steps those delays span
    at this machine's measured pace are allowed, plus one in flight."""
    wait_for(lambda: step_of(job) >= from_step, 600, f"step {from_step}")
    first_step, first_time = step_of(job), time.monotonic()
    wait_for(lambda: step_of(job) >= first_step + 3, 600, "three more steps")
    seen, asked = step_of(job), time.monotonic()
    seconds_per_step = (asked - first_time) / (seen - first_step)
    job.cancel()
    final = job.wait(timeout=300, progress=False, poll=0.1)
    allowed = 2 + math.ceil((0.5 + 1.0 + 1.0) / seconds_per_step)
    assert final["status"] == "cancelled"
    assert final["current_step"] - seen <= allowed, (final["current_step"], seen, allowed)
    assert final["report"] and open(final["report"]).read()


# -- jobs on two devices: a worker offering two gloo processes, a job long enough to interrupt ------
TWO_DEVICES = {"env": {**FAST["env"], "FTKIT_CPU_DEVICES": "2"}}
SLOW_ON_TWO = dict(
    batch_size=4, gradient_accumulation_steps=2, max_seq_length=256, learning_rate=3e-3,
    save_steps=5, devices=2,
)  # fmt: skip


def training_processes(job_id: str | None = None) -> list:
    """The live training processes of a multi-device job (of ``job_id``'s, when given)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ftkit.training.rank_run" in cmdline or "ftkit.training.launch" in cmdline:
            if job_id is None or job_id in cmdline:
                found.append(proc)
    return found


def none_left(job_id: str) -> None:
    """No launcher and no training process of the job is left, after a short while to exit."""
    wait_for(lambda: not training_processes(job_id), 60, "every training process to end")
