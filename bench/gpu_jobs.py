"""Real jobs as a user runs them, for bench/gpu.py: `ftkit worker` (its warm kernel ready, its
start-up import check on, as in production) executes the papermill template, one job with
``backend="auto"`` and one with ``backend="hf"``. For each: where its time went, from submit to
seen ended (queue, kernel, imports, model load, data, the trainer's set-up and first step, the
other steps, samples, save, report), and whether its report (notebook and HTML) and its adapter
landed in storage.

The phases come from the job's own records: its timestamps, the worker's `phases` log line,
papermill's per-cell times in the executed report, and what the template measured (imports and
model load apart, the first step apart).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import settings_in, wait_until, worker
from overhead import notebook_sections, phases_of

BACKENDS = ("auto", "hf")
# (row label, where the seconds come from)
PHASES = [
    "queue (submit -> claimed)",
    "claim and staging",
    "kernel (warm hand-off, or a cold start)",
    "set-up cells (ftkit, config, environment)",
    "imports in the model cell (unsloth when used)",
    "model load and LoRA",
    "data",
    "trainer set-up and first step",
    "other steps",
    "samples (before and after)",
    "save adapter and result",
    "upload",
    "report (header, HTML, upload)",
    "status seen (finish -> client)",
]


def run_jobs(
    model: Path, data: Path, work: Path, steps: int, batch: int, seq_len: int
) -> list[dict[str, Any]]:
    """One job per backend, on one worker, one after the other."""
    work.mkdir(parents=True, exist_ok=True)
    settings = settings_in(work)
    rows = []
    with worker(settings, warm=True, log=work / "worker.log") as client:
        log = work / "worker.0.log"  # worker() numbers its workers' logs
        ds = client.upload_dataset(data)
        for backend in BACKENDS:
            rows.append(one_job(client, ds, model, backend, steps, batch, seq_len, log, work))
    return rows


def one_job(client, ds, model, backend, steps, batch, seq_len, log, work) -> dict[str, Any]:
    submitted = time.time()
    job = client.submit(
        ds,
        base_model=str(model),
        backend=backend,
        max_steps=steps,
        batch_size=batch,
        max_seq_length=seq_len,
        learning_rate=1e-4,
        logging_steps=1,
        sample_prompts=["Say hello."],
    )
    status = job.wait(progress=False, timeout=900)
    seen = time.time()
    row: dict[str, Any] = {"job": job.id, "backend_asked": backend, "status": status["status"]}
    row["total_seconds"] = round(seen - submitted, 2)
    runs = ("runs", job.id)
    row["landed"] = {
        "report.ipynb": client.storage.exists(*runs, "report.ipynb"),
        "report.html": client.storage.exists(*runs, "report.html"),
        "adapter": client.storage.exists(*runs, "adapter", "adapter_config.json"),
    }
    row["warnings"] = status.get("warnings") or []
    if status["status"] != "completed":
        row["error"] = (status.get("error") or "")[:300]
        return row
    record = client.store.get(job.id)
    wait_until(lambda: f"job {job.id} phases " in log.read_text(errors="replace"), 30)
    worker_phases = phases_of(log, job.id)
    report = client.storage.get_file((*runs, "report.ipynb"), work / f"{job.id}.ipynb")
    cells, _ = notebook_sections(report)
    outputs = json.loads(client.storage.read_text(*runs, "result.json"))
    model_info, result = outputs["model"], outputs["result"]
    row["backend_used"] = model_info.get("backend")
    imports = model_info.get("import_seconds", 0.0)
    first = result.get("first_step_seconds") or 0.0
    training = result["training_duration_seconds"]
    row["phases"] = dict(
        zip(
            PHASES,
            [
                record["started_at"] - record["created_at"],
                worker_phases.get("claim", 0.0) + worker_phases.get("staging", 0.0),
                worker_phases.get("kernel", 0.0),
                cells.get("set-up (parameters, config)", 0.0) + cells.get("cells: environment", 0),
                imports,
                cells.get("cells: model and lora", 0.0) - imports,
                cells.get("cells: data", 0.0),
                first,
                training - first,
                cells.get("cells: sample generations", 0.0),
                cells.get("cells: result", 0.0),
                worker_phases.get("upload", 0.0),
                worker_phases.get("report", 0.0),
                seen - record["finished_at"],
            ],
            strict=True,
        )
    )
    row["phases"] = {k: round(v, 2) for k, v in row["phases"].items()}
    row["steps_per_s_after_first"] = round((steps - 1) / max(training - first, 1e-9), 2)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """A column per job, a row per phase, then what landed."""
    heads = [f"{r['backend_asked']} -> {r.get('backend_used', '?')}" for r in rows]
    lines = [
        "| phase (s) | " + " | ".join(heads) + " |",
        "| --- |" + " --- |" * len(rows),
    ]
    for name in PHASES:
        cells = [f"{r['phases'][name]:.2f}" if "phases" in r else "-" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **submit -> seen ended** | "
        + " | ".join(f"**{r['total_seconds']:.2f}**" for r in rows)
        + " |"
    )
    lines.append("| status | " + " | ".join(r["status"] for r in rows) + " |")
    for what in ("report.ipynb", "report.html", "adapter"):
        marks = ["landed" if r["landed"][what] else "MISSING" for r in rows]
        lines.append(f"| {what} | " + " | ".join(marks) + " |")
    for r in rows:
        for warning in r["warnings"]:
            lines.append(f"\njob {r['job']} warning: {warning}")
        if "error" in r:
            lines.append(f"\njob {r['job']} ({r['backend_asked']}) {r['status']}: {r['error']}")
    return "\n".join(lines)
