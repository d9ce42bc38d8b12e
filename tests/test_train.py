"""Real training steps on each conversational format, with packing and an eval split, in-process
(the same functions the template notebook calls)."""

from __future__ import annotations

import json
import warnings

import pytest

from conftest import TEST_DATA, wait_for
from ftkit import training
from ftkit.config import TrainConfig


def run(tiny_model, tmp_path, path, fmt, **overrides):
    settings = dict(max_steps=3, batch_size=2, max_seq_length=128, learning_rate=1e-3)
    config = TrainConfig(base_model=str(tiny_model), **{**settings, **overrides})
    model, tokenizer, info = training.load_model(config)
    data, eval_data, summary = training.prepare_data(str(path), fmt, tokenizer, config)
    trainer = training.make_trainer(
        model, tokenizer, data, eval_data, config, str(tmp_path), training.Reporter(None)
    )
    result = training.train(trainer, training.Reporter(None))
    return trainer, result, summary, info


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,fmt",
    [
        ("alpaca_en_demo.json", "alpaca"),
        ("glaive_toolcall_en_demo.json", "sharegpt"),
        ("v1_sft_demo.jsonl", "chat"),
        ("c4_demo.jsonl", "text"),
    ],
)
def test_a_few_steps_train_on_each_format(name, fmt, tiny_model, tmp_path):
    trainer, result, summary, info = run(tiny_model, tmp_path, TEST_DATA / name, fmt)
    assert result["global_step"] == 3 and result["stopped"] is None
    assert (
        summary["trained_tokens"] > 0
        and info["backend"] == "hf"
        and info["trainable_parameters"] > 0
    )
    assert all("loss" in row for row in trainer.state.log_history[:3])


@pytest.mark.slow
def test_packing_trains_padding_free(tiny_model, tmp_path):
    trainer, result, summary, _ = run(
        tiny_model, tmp_path, TEST_DATA / "alpaca_en_demo.json", "alpaca", packing=True
    )
    assert result["global_step"] == 3 and trainer.args.padding_free
    # packed rows keep their label masks: only the answers are trained on (trl before 1.7 dropped
    # the labels column when packing, and trained on the prompts too)
    batch = next(iter(trainer.get_train_dataloader()))
    masked = (batch["labels"] == -100).sum().item()
    assert 0 < masked < batch["labels"].numel(), "no prompt token is masked in a packed batch"


@pytest.mark.slow
def test_validation_split_logs_eval_loss(tiny_model, tmp_path):
    trainer, _, summary, _ = run(
        tiny_model,
        tmp_path,
        TEST_DATA / "identity.json",
        "alpaca",
        validation_split=0.2,
        eval_steps=1,
    )
    assert summary["eval_examples"] == 19
    assert any("eval_loss" in row for row in trainer.state.log_history)


@pytest.mark.slow
def test_eval_steps_0_evaluates_once_at_the_end(tiny_model, tmp_path):
    trainer, result, _, _ = run(
        tiny_model, tmp_path, TEST_DATA / "identity.json", "alpaca", validation_split=0.2
    )
    evals = [row for row in trainer.state.log_history if "eval_loss" in row]
    assert len(evals) == 1 and evals[0]["step"] == result["global_step"] == 3


@pytest.mark.slow
def test_a_long_run_prints_a_bounded_log_and_keeps_every_step(
    tiny_model, tmp_path, capsys, monkeypatch
):
    from ftkit.training import callback

    monkeypatch.setattr(callback, "MAX_LOG_LINES", 5)  # 50 in use: the same rule, fewer steps
    trainer, result, _, _ = run(
        tiny_model, tmp_path, TEST_DATA / "identity.json", "alpaca", max_steps=20
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == [
        "1/20",
        "4/20",
        "8/20",
        "12/20",
        "16/20",
        "20/20",
    ]
    assert [row["step"] for row in trainer.state.log_history if "loss" in row] == list(range(1, 21))


@pytest.mark.slow
def test_training_shows_no_library_deprecation_warnings(tiny_model, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(tiny_model, tmp_path, TEST_DATA / "identity.json", "alpaca", max_steps=1)
    deprecations = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
        and "deprecated" in str(w.message)
    ]
    assert not deprecations


@pytest.mark.slow
def test_the_kernel_warm_up_loads_a_throw_away_model_and_leaves_no_files(tmp_path, monkeypatch):
    """A warm kernel's first real model load should find transformers' and peft's lazy set-up
    done: the warm-up loads (and discards) a model saved the way a base model is."""
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    load = AutoModelForCausalLM.from_pretrained.__func__
    loaded: list[list[str]] = []

    def spy(cls, folder, *args, **kwargs):
        loaded.append(sorted(p.name for p in Path(folder).iterdir()))
        return load(cls, folder, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    training.warm_up_model_loading()
    assert loaded and "model.safetensors" in loaded[0] and "config.json" in loaded[0]
    assert not list(tmp_path.glob("ftkit-warm-*"))  # its temporary folder is gone


def test_the_last_checkpoint_waits_out_a_storage_outage_and_the_others_do_not(
    tmp_path, monkeypatch
):
    """A worker killed after training ended resumes from the last checkpoint; if an outage had
    cost that one, the next attempt would train the end again (the soak saw it once)."""
    from types import SimpleNamespace

    from ftkit.errors import StorageUnavailable
    from ftkit.storage import Storage

    storage = Storage(str(tmp_path / "storage"))
    put_dir, outage = storage.put_dir, {"failures": 0, "calls": 0}

    def put_dir_in_an_outage(*args, **kwargs):
        outage["calls"] += 1
        if outage["failures"]:
            outage["failures"] -= 1
            raise StorageUnavailable("storage did not answer (the test's outage)")
        return put_dir(*args, **kwargs)

    monkeypatch.setattr(storage, "put_dir", put_dir_in_an_outage)
    callback = training.progress_callback(training.Reporter("0123456789ab", None, storage))
    args = SimpleNamespace(output_dir=str(tmp_path / "out"), save_strategy="steps")
    for step in (10, 20):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
    saved = Storage.run_parts("0123456789ab", "checkpoints")

    outage.update(failures=1, calls=0)
    callback.on_save(args, SimpleNamespace(global_step=10, max_steps=20), None)
    assert outage["calls"] == 1 and storage.listdir(*saved) == []  # training went on without it

    outage.update(failures=2, calls=0)
    callback.on_save(args, SimpleNamespace(global_step=20, max_steps=20), None)
    assert outage["calls"] == 3 and storage.listdir(*saved) == ["checkpoint-20"]


def test_a_kernel_whose_worker_died_saves_no_checkpoint_and_no_marker(tmp_path):
    """A worker SIGKILLed in a job's last half second of training left its kernel running on: it
    finished, and its marker and checkpoint raced the next attempt's (a job counted twice)."""
    from ftkit.storage import Storage

    storage = Storage(str(tmp_path / "storage"))
    # as after the worker died: this process has another parent than the worker that started it
    reporter = training.Reporter("0123456789ab", None, storage, worker_pid=-1)
    folder = tmp_path / "checkpoint-20"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    reporter.save_checkpoint(folder, trained=(0, 20))
    assert reporter.stop_reason == "orphaned"
    assert storage.listdir(*Storage.run_parts("0123456789ab", "checkpoints")) == []
    assert storage.trained_markers("0123456789ab") == []


def test_a_kernel_dies_with_the_worker_that_started_it():
    """A worker SIGKILLed sends its kernel no signal: ipykernel's parent poller (the launcher sets
    JPY_PARENT_PID) ends it within a second, long before the dead worker's heartbeat lapses and
    another attempt of its job starts. What the kernel would still write, it checks first
    (``Fence.orphaned``)."""
    import subprocess
    import sys

    import psutil

    parent = (
        "import time\n"
        "from ftkit.worker.kernels import kernel_pid, start_kernel\n"
        "print(kernel_pid(start_kernel(warm=False)), flush=True)\n"
        "time.sleep(600)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    kernel = psutil.Process(int(worker.stdout.readline()))
    try:
        assert kernel.ppid() == worker.pid
        worker.kill()
        worker.wait()

        def gone() -> bool:
            try:
                return kernel.status() == psutil.STATUS_ZOMBIE  # ended, not reaped by init
            except psutil.NoSuchProcess:
                return True

        wait_for(gone, 60, "the orphaned kernel's end")
    finally:
        worker.kill()
        if kernel.is_running():
            kernel.kill()


def test_the_last_checkpoint_carries_the_marker_written_before_it_counts(tmp_path, monkeypatch):
    """The marker goes in before ``complete``: a kill between the two leaves a marker and a
    checkpoint a later attempt cannot resume from (it trains again: two markers, counted), never
    a resumable end with no marker. A job without save_steps keeps the weights, not the optimizer."""
    from ftkit.errors import StorageUnavailable
    from ftkit.storage import Storage

    storage = Storage(str(tmp_path / "storage"))
    reporter = training.Reporter("0123456789ab", None, storage, attempt=2)
    folder = tmp_path / "checkpoint-20"
    folder.mkdir()
    for name in ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt"):
        (folder / name).write_text(name)
    write_text = storage.write_text

    def killed_before_complete(text, *parts):
        if parts[-1] == "complete":
            raise StorageUnavailable("the test's kill, between the marker and the checkpoint")
        return write_text(text, *parts)

    monkeypatch.setattr(storage, "write_text", killed_before_complete)
    with pytest.raises(StorageUnavailable):
        reporter.save_checkpoint(folder, trained=(10, 20), weights_only=True)
    assert storage.trained_markers("0123456789ab") == ["2.trained"]
    marker = json.loads(storage.read_text(*Storage.trained_marker_parts("0123456789ab", 2)))
    assert (marker["attempt"], marker["first_step"], marker["last_step"]) == (2, 10, 20)
    saved = Storage.run_parts("0123456789ab", "checkpoints", "checkpoint-20")
    assert sorted(storage.listdir(*saved)) == ["adapter_model.safetensors", "trainer_state.json"]
    assert not storage.exists(*saved, "complete")
