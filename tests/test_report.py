"""The run report people keep, checked by its content; compare, load, generate and merge; and
reproducibility (same config, data and seed on one machine: the same loss curve)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import EXAMPLE_DATA, REPO, WorkerProcess, sqlite_only, wait_for
from ftkit.config import TrainConfig

ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model):
    """Three jobs through one worker: two identical (seeded) and one with another LoRA rank."""
    from ftkit.client import Client
    from ftkit.config import Settings

    tmp = tmp_path_factory.mktemp("report")
    settings = Settings.from_env(
        {},
        storage=str(tmp / "storage"),
        queue_db=str(tmp / "queue.db"),
        scratch_dir=str(tmp / "scratch"),
        heartbeat_seconds=0.5,
    )
    client = Client(settings)
    (tmp / "w").mkdir()
    worker = WorkerProcess(settings, tmp / "w", tmp / "worker.log")
    try:
        wait_for(lambda: client.workers(), 60, "the worker")
        common = dict(
            base_model=str(tiny_model),
            max_steps=12,
            batch_size=4,
            learning_rate=3e-3,
            max_seq_length=256,
            validation_split=0.1,
            eval_steps=6,
            sample_prompts=["Name three colors.", "What is 2+2?"],
        )
        jobs = [
            client.submit(EXAMPLE_DATA, **common),
            client.submit(EXAMPLE_DATA, **common),
            client.submit(EXAMPLE_DATA, **{**common, "lora_r": 4}),
        ]
        for job in jobs:
            assert job.wait(timeout=300, progress=False)["status"] == "completed", job.status()[
                "error"
            ]
        yield client, jobs
    finally:
        worker.stop()


def report_of(client, job) -> dict:
    return json.loads(client.storage.read_text("runs", job.id, "report.ipynb"))


def outputs_of(report: dict, marker: str) -> list[dict]:
    return [
        o
        for c in report["cells"]
        if c["cell_type"] == "code" and marker in "".join(c["source"])
        for o in c["outputs"]
    ]


def html_of(outputs: list[dict]) -> str:
    return "".join("".join(o.get("data", {}).get("text/html", "")) for o in outputs)


@pytest.mark.slow
def test_the_header_says_who_what_when_and_how_it_ended(finished):
    client, jobs = finished
    header = html_of(outputs_of(report_of(client, jobs[0]), "run summary appears here"))
    for fact in (
        jobs[0].id,
        "COMPLETED",
        "submitted by",
        "duration",
        "ftkit 0.1.0",
        "template sha256",
        "example_data.jsonl",
        ">method<",
    ):
        assert fact in header


@pytest.mark.slow
def test_the_config_table_has_every_field(finished):
    client, jobs = finished
    table = html_of(outputs_of(report_of(client, jobs[0]), "TrainConfig.from_dict"))
    assert all(f">{name}<" in table for name in TrainConfig.field_names())


@pytest.mark.slow
def test_model_data_environment_and_throughput_sections(finished):
    client, jobs = finished
    report = report_of(client, jobs[0])
    model = html_of(outputs_of(report, "training.load_model("))
    assert "trainable_parameters" in model and "backend" in model and "hf" in model
    data = html_of(outputs_of(report, "prepare_data"))
    assert "sha256" in data and "tokens mean" in data and "eval_examples" in data
    env = html_of(outputs_of(report, "training.environment()"))
    assert all(k in env for k in ("python", "torch", "transformers", "trl", "peft", "CPU", "host"))
    speed = html_of(outputs_of(report, "training.fit("))
    assert "tokens/s" in speed and "peak process RSS" in speed


@pytest.mark.slow
def test_the_loss_and_learning_rate_figure_is_a_png(finished):
    client, jobs = finished
    pngs = [
        o
        for o in outputs_of(report_of(client, jobs[0]), "plot_training")
        if "image/png" in o.get("data", {})
    ]
    assert len(pngs) == 1
    import base64

    assert base64.b64decode(pngs[0]["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sample_generations_exist_before_and_after(finished):
    client, jobs = finished
    result = json.loads(client.storage.read_text("runs", jobs[0].id, "result.json"))
    assert [s["prompt"] for s in result["samples"]] == ["Name three colors.", "What is 2+2?"]
    assert all(s["base model"] is not None and s["fine-tuned"] for s in result["samples"])
    table = html_of(outputs_of(report_of(client, jobs[0]), "show_samples"))
    assert "base model (before)" in table and "fine-tuned (after)" in table


@pytest.mark.slow
def test_eval_loss_is_logged_and_in_metrics(finished):
    _, jobs = finished
    assert [m["step"] for m in jobs[0].metrics() if "eval_loss" in m] == [6, 12]


@pytest.mark.slow
def test_report_renders_as_html_and_a_browser_can_show_it(finished):
    client, jobs = finished
    html = client.storage.read_text("runs", jobs[0].id, "report.html")
    assert "COMPLETED" in html and "data:image/png;base64" in html and "Sample generations" in html
    report = report_of(client, jobs[0])
    outputs = [o for c in report["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs
    ), "plain outputs only: readable with no ftkit or ipywidgets installed"
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: run the tests through `make test`, which installs it")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = ARTIFACTS / "report.html"
    page.write_text(html)
    shot = ARTIFACTS / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_a_job_loads_generates_and_merges(finished, tmp_path):
    _, jobs = finished
    model, tokenizer = jobs[0].load()
    assert type(model).__name__ == "PeftModelForCausalLM"
    assert isinstance(jobs[0].generate("Name three colors.", max_new_tokens=8), str)
    merged = jobs[0].merge(tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(merged).config.model_type == "llama"
    assert not (merged / "adapter_config.json").exists()


@pytest.mark.slow
def test_compare_shows_config_differences_metrics_and_overlaid_curves(finished):
    import ftkit

    client, jobs = finished
    ftkit.connect(storage=client.settings.storage, queue_db=client.settings.queue_db)
    comparison = ftkit.compare(jobs)
    assert comparison.differing == ["lora_r"]
    assert [r["job_id"] for r in comparison.rows] == [j.id for j in jobs]
    assert all(r["final_loss"] is not None for r in comparison.rows)
    assert comparison._repr_html_().count("class='ftkit-compare-loss'") == 3


@pytest.mark.slow
def test_the_same_config_data_and_seed_give_the_same_loss_curve(finished):
    _, jobs = finished
    first, second = ([m["loss"] for m in j.metrics() if "loss" in m] for j in jobs[:2])
    assert len(first) == 12 and first == pytest.approx(second, abs=1e-6)
    assert [m["loss"] for m in jobs[2].metrics() if "loss" in m] != pytest.approx(first, abs=1e-6)


@pytest.mark.slow
@sqlite_only
def test_a_failed_job_still_renders_its_report_with_the_failing_cell(
    client, start_worker, tmp_path
):
    gone = tmp_path / "missing-model"
    gone.mkdir()
    (gone / "config.json").write_text("{}")
    job = client.submit(EXAMPLE_DATA, base_model=str(gone), max_steps=2)
    shutil.rmtree(gone)  # moved after submitting: only the worker can notice
    start_worker()
    final = job.wait(timeout=120, progress=False)
    assert final["status"] == "failed"
    html = client.storage.read_text("runs", job.id, "report.html")
    assert "FAILED" in html and "missing-model" in html and "FileNotFoundError" in html
