"""Runs that start from earlier runs: a completed job's adapter carried into a new job (no
checkpoint kept), refusals at submit when it cannot load, and retries that say what they retry;
through real workers on SQLite and on a real redis-server, and the kernel's own checks in-process."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_DATA, sqlite_only
from ftkit.errors import ConfigError


def split_example_data(tmp_path):
    """Two data sets of one kind: the first 40 conversations, and the other 80."""
    lines = EXAMPLE_DATA.read_text().splitlines(keepends=True)
    first, rest = tmp_path / "first40.jsonl", tmp_path / "rest80.jsonl"
    first.write_text("".join(lines[:40]))
    rest.write_text("".join(lines[40:]))
    return first, rest


def test_a_job_that_left_neither_checkpoint_nor_adapter_is_not_continued(client):
    parent = client.submit(EXAMPLE_DATA, max_steps=2)
    parent.cancel()
    with pytest.raises(ConfigError) as info:
        client.submit(EXAMPLE_DATA, max_steps=4, resume_from=parent.id)
    said = str(info.value)
    assert f"job {parent.id} (cancelled) kept no checkpoint" in said
    assert "only a completed job leaves an adapter" in said and "save_steps" in said
    assert info.value.field == "resume_from" and client.count_jobs() == 1


@pytest.mark.slow
@sqlite_only  # the store contract runs on both backends in test_jobs.py
def test_a_job_continues_from_a_completed_jobs_adapter_on_another_data_set(
    client, start_worker, tiny_model, tmp_path
):
    worker = start_worker()
    data_b, data_a = split_example_data(tmp_path)
    common = dict(base_model=str(tiny_model), batch_size=4, max_seq_length=128)
    parent = client.submit(data_a, max_steps=20, learning_rate=1e-2, **common)  # no save_steps
    done = parent.wait(timeout=300, progress=False)
    assert done["status"] == "completed", done["error"]
    from ftkit.storage import Storage

    # Without save_steps a job keeps only its last step's weights (a worker lost after training
    # leaves its next attempt nothing to train): no optimizer state, nothing to continue from.
    kept = Storage.run_parts(parent.id, "checkpoints")
    assert client.storage.listdir(*kept) == ["checkpoint-20"]
    assert not client.storage.exists(*kept, "checkpoint-20", "optimizer.pt")
    losses = [m["loss"] for m in parent.metrics()]
    learned = losses[0] - sum(losses[-5:]) / 5  # what the parent's training bought it
    assert learned > 0

    # What cannot load is refused before anything is queued, naming both values.
    queued = client.count_jobs()
    for change, message in [
        ({"lora_r": 8}, f"job {parent.id} trained with lora_r=16, this job asks for lora_r=8"),
        ({"lora_alpha": 32}, "lora_alpha=16, this job asks for lora_alpha=32"),
        ({"base_model": "someorg/other-model"}, "this job asks for 'someorg/other-model'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            client.submit(data_b, max_steps=2, resume_from=parent, **{**common, **change})
    assert client.count_jobs() == queued

    fresh = client.submit(data_b, max_steps=2, learning_rate=3e-3, **common).wait(
        timeout=300, progress=False
    )
    child = client.submit(data_b, max_steps=2, learning_rate=3e-3, resume_from=parent, **common)
    final = child.wait(timeout=300, progress=False)
    assert fresh["status"] == final["status"] == "completed", (fresh["error"], final["error"])
    assert final["resume_from"] == parent.id and final["started_from"] == "adapter"
    assert final["dataset"]["rows"] == 40 and [m["step"] for m in child.metrics()] == [1, 2]
    # The same first batch (same data, same seed): the parent's adapter makes it far easier.
    assert final["result"]["first_loss"] < fresh["result"]["first_loss"] - learned / 2
    assert final["result"]["trainable_parameters"] == fresh["result"]["trainable_parameters"]
    assert any(
        f"continuing from job {parent.id}'s adapter (no checkpoint kept: fresh optimizer" in line
        for line in child.logs(200)
    )
    report = child.report_html()
    link = f'<a href="../{parent.id}/report.html">{parent.id}</a>'  # as rendered to HTML
    assert f"continued from job {link}'s adapter (no checkpoint kept: fresh optimizer)" in report
    assert f'starts from</th><td style="text-align:left">job {parent.id}\'s adapter' in report

    # A retry of a job that continued an adapter, and kept no checkpoint, starts there again.
    worker.stop()
    again = client.submit(data_b, max_steps=2, resume_from=parent, **common)
    again.cancel()
    retried = again.retry()
    status = retried.status()
    assert (status["resume_from"], status["retry_of"]) == (parent.id, again.id)
    assert status["status"] == "queued" and status["config"] == again.status()["config"]


@pytest.mark.slow
def test_the_kernel_loads_only_an_adapter_that_fits(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from ftkit import training
    from ftkit.config import TrainConfig

    config = TrainConfig(base_model=str(tiny_model), lora_r=4)
    model, tokenizer, _ = training.load_model(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_()  # a LoRA that has learned something: B no longer zero
    adapter = tmp_path / "0123456789ab"
    training.save_adapter(model, tokenizer, str(tmp_path))
    (tmp_path / "adapter").rename(adapter)

    loaded, _, info = training.load_model(config, str(adapter))
    saved = {n: p for n, p in model.named_parameters() if p.requires_grad}
    again = {n: p for n, p in loaded.named_parameters() if p.requires_grad}
    assert saved.keys() == again.keys() and all(torch.equal(saved[n], again[n]) for n in saved)
    assert info["starts from"].startswith("job 0123456789ab's adapter")

    with pytest.raises(ValueError, match="adapter has r=4, this run lora_r=8"):
        training.load_model(config.replace(lora_r=8), str(adapter))
    settings = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**settings, "r": 8}))
    with pytest.raises(ValueError, match=r"has shape \(4, \d+\), this run \(8, \d+\)"):
        training.load_model(config.replace(lora_r=8), str(adapter))
    (adapter / "adapter_config.json").write_text(json.dumps(settings))
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    extra = "base_model.model.lm_head.lora_A.weight"
    save_file({**weights, extra: torch.zeros(4, 64)}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(
        ValueError, match=f"1 weights for modules this run has no LoRA on .e.g. {extra}"
    ):
        training.load_model(config, str(adapter))
    dropped = sorted(weights)[0]
    save_file(
        {k: v for k, v in weights.items() if k != dropped},
        str(adapter / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match=f"1 of this run's LoRA weights missing .e.g. {dropped}"):
        training.load_model(config, str(adapter))
