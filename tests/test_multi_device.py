"""One job on several devices: two gloo processes on this CPU machine, launched by torchrun from
the job's notebook kernel. The job trains, learns as a one-device run with the same effective
batch does, logs to TensorBoard and MLflow from rank 0, and continues on another number of
devices; a cancel and a timeout stop every training process (counted afterwards). Hand-backs and
killed workers: test_multi_device_faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import EXAMPLE_DATA, REPO, sqlite_only
from ftkit.trackers import TRACKERS
from slow_jobs import SLOW_ON_TWO, TWO_DEVICES, cancel_mid_training, none_left
from tracker_reads import mlflow_losses, mlflow_run, tensorboard_losses

pytestmark = pytest.mark.timeout(1800)
PAIRS = REPO / "examples" / "preference_data.jsonl"
JOB = dict(max_steps=8, batch_size=4, learning_rate=3e-3, max_seq_length=256, logging_steps=1)


@pytest.mark.slow
@sqlite_only
def test_a_two_device_job_trains_as_one_device_with_the_same_effective_batch(
    settings, client, start_worker, tiny_model, tmp_path
):
    uri = f"file://{tmp_path / 'mlruns'}"  # an MLflow file store: no server
    no_wandb = {"WANDB_API_KEY": "", "WANDB_MODE": "", "NETRC": str(tmp_path / "no-netrc")}
    start_worker(env={**TWO_DEVICES["env"], "MLFLOW_TRACKING_URI": uri, **no_wandb})
    job = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), devices=2, save_steps=4, **JOB,
        report_to=["tensorboard", "mlflow", "wandb"], tags=["two"], note="on two devices",
    )  # fmt: skip
    final = job.wait(timeout=900, progress=False)
    assert final["status"] == "completed", final["error"]
    report = job.report_html()
    for said in ("effective batch", "8 (batch_size 4 x gradient_accumulation_steps 1 x devices 2)",
                 "rank 0", "rank 1", "cpu (gloo)", "each of the 2 training processes",
                 "logged by rank 0 of the 2 training processes", "Experiment trackers (rank 0)",
                 f"runs/{job.id}/tensorboard"):  # fmt: skip
        assert said in report, said
    assert [m["step"] for m in job.metrics() if "loss" in m] == list(range(1, 9))
    assert client.storage.trained_markers(job.id) == ["1.trained"]
    none_left(job.id)

    # Rank 0's trackers: W&B (online, no key) dropped with a warning in the job's log, record and
    # report; the loss of every step in TensorBoard (in storage) and in the MLflow run, which has
    # the job's tags and note, the adapter (from rank 0) and the report (the worker's).
    no_key = "wandb: not used: WANDB_API_KEY is not set in the worker's environment"
    said = [w for w in final.get("warnings") or [] if w.split(":")[0] in TRACKERS]
    assert [w[: len(no_key)] for w in said] == [no_key], said
    run_folder = Path(settings.storage) / "runs" / job.id
    assert no_key in (run_folder / "report.ipynb").read_text()
    assert f"tracker warning: {no_key}" in "\n".join(job.logs(500))
    losses = {m["step"]: m["loss"] for m in job.metrics() if "loss" in m}
    assert tensorboard_losses(run_folder / "tensorboard") == pytest.approx(losses)
    mlflow, run = mlflow_run(uri, job.id)
    assert mlflow_losses(mlflow, run.info.run_id) == pytest.approx(losses)
    assert run.info.status == "FINISHED" and run.data.tags["ftkit.tags"] == "two"
    assert run.data.tags["mlflow.note.content"] == "on two devices"
    artifacts = {a.path for a in mlflow.list_artifacts(run.info.run_id)}
    assert {"report.ipynb", "adapter"} <= artifacts

    # The same effective batch on one device, in this process: the same examples at every step.
    one = single_device_losses(tiny_model, tmp_path, batch_size=8)
    two = [m["loss"] for m in job.metrics() if "loss" in m]
    assert abs(two[-1] - one[-1]) / one[-1] < 0.03, (one, two)

    # Continued on one device from the two-device run's checkpoint.
    more = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), resume_from=job, devices=1,
        **{**JOB, "max_steps": 10, "batch_size": 8},
    )  # fmt: skip
    final = more.wait(timeout=900, progress=False)
    assert final["status"] == "completed", final["error"]
    assert final["started_from"] == "checkpoint-8"
    assert [m["step"] for m in more.metrics() if "loss" in m] == list(range(1, 11))


def single_device_losses(tiny_model, folder, **overrides) -> list[float]:
    from ftkit import training
    from ftkit.config import TrainConfig

    config = TrainConfig(base_model=str(tiny_model), **{**JOB, **overrides})
    model, tokenizer, _ = training.load_model(config)
    train_data, eval_data, _ = training.prepare_data(str(EXAMPLE_DATA), "chat", tokenizer, config)
    trainer, _ = training.fit(
        model, tokenizer, train_data, eval_data, config, str(folder), training.Reporter(None)
    )
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


@pytest.mark.slow
@sqlite_only
def test_cancel_and_timeout_stop_every_training_process_of_dpo_and_sft(
    client, start_worker, tiny_model
):
    start_worker(**TWO_DEVICES)
    # A preference method on two devices too: DPO trains, its rewards logged, until cancelled.
    job = client.submit(
        PAIRS, base_model=str(tiny_model), method="dpo",
        **{**SLOW_ON_TWO, "batch_size": 2, "max_steps": 400},
    )  # fmt: skip
    cancel_mid_training(job)
    none_left(job.id)
    assert "cancelled while running" in job.status()["error"]
    assert any("rewards/margins" in row for row in job.metrics())

    late = client.submit(
        EXAMPLE_DATA, base_model=str(tiny_model), timeout_minutes=0.01,
        **{**SLOW_ON_TWO, "max_steps": 400},
    )  # fmt: skip
    final = late.wait(timeout=600, progress=False)
    assert final["status"] == "failed" and "timed out" in final["error"], final["error"]
    assert final["report"]
    none_left(late.id)
