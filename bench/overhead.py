"""What a job costs beyond its work: one ftkit job (submit -> the client sees it ended, a warm
worker) beside the same work in a warm Python process (bench/bare_train.py: ftkit's own
load_model, prepare_data, fit and save_adapter after the imports), interleaved in one run. The
headline is the whole job minus the whole work, **training included**; then the job's training
speed from its first step against the warm process's (steps/s over every step, steps 1-10
included), and where the job's time goes: queue wait, claim, staging, kernel hand-off, each
section of the template (papermill's per-cell times in the executed report), upload, report,
status propagation.

    python bench/overhead.py [--steps 60] [--repeat 3] [--redis] [--spare]

``--spare``: the worker keeps a warm spare kernel (a CUDA worker's way, warmed after each job)
instead of forking kernels from its zygote.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import (
    DATA,
    REPO,
    redis_server,
    settings_in,
    tiny_model,
    wait_until,
    wait_warm,
    workdir,
    worker,
)


def bare_run(model, out, steps: int) -> dict[str, Any]:
    """The same work in a process: its seconds after the imports (what a warm process pays),
    trainer.train()'s among them, and the seconds at each step's log."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bare_train.py"),
            str(model),
            str(DATA),
            str(out),
            str(steps),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    found = dict(re.findall(r"(\w+)=([\d.]+)", done.stdout))
    step_times = json.loads(done.stdout.split("STEPS ", 1)[1].splitlines()[0])
    return {
        "wall": float(found["warm_seconds"]),
        "train": float(found["train_seconds"]),
        "steps_per_s": steps_per_second(step_times),
    }


def steps_per_second(step_times: list) -> float:
    """Steps over the seconds from the start of training to the last step's log: every step,
    the first ones included."""
    last_step, last_time = step_times[-1]
    return last_step / last_time


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def notebook_sections(report: Path) -> tuple[dict[str, float], float]:
    """Seconds per template section (cells under each markdown heading, the first cells being the
    set-up), from papermill's per-cell times; and the notebook's own start-to-end seconds."""
    nb = json.loads(report.read_text())
    sections: dict[str, float] = {}
    name = "set-up (parameters, config)"
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])  # a list of lines, or one string
            heading = next((ln for ln in source.splitlines() if ln.startswith("## ")), None)
            if heading:
                name = "cells: " + heading[3:].strip().lower()
            continue
        meta = cell.get("metadata", {}).get("papermill", {})
        if meta.get("duration") is not None:
            sections[name] = sections.get(name, 0.0) + float(meta["duration"])
    pm = nb["metadata"]["papermill"]
    return sections, _ts(pm["end_time"]) - _ts(pm["start_time"])


def phases_of(log: Path, job_id: str) -> dict[str, float]:
    """The worker's own timing of a job's phases (its `job ... phases {...}` log line)."""
    for line in log.read_text(errors="replace").splitlines():
        if f"job {job_id} phases " in line:
            return json.loads(line.split(" phases ", 1)[1])
    raise RuntimeError(f"no phases line for job {job_id} in {log}")


def one_job(client, ds, model, steps: int, log: Path, work: Path, since: float) -> dict[str, Any]:
    wait_warm(client, since)  # the spare taken by the job before this one has been replaced
    started = time.time()
    job = client.submit(
        ds,
        base_model=str(model),
        max_steps=steps,
        batch_size=4,
        learning_rate=1e-3,
        max_seq_length=256,
    )
    status = job.wait(progress=False)  # as a user waits: the default poll
    seen = time.time()
    assert status["status"] == "completed", status["error"]
    record = client.store.get(job.id)
    wait_until(lambda: f"job {job.id} phases " in log.read_text(errors="replace"), 30)
    worker = phases_of(log, job.id)
    report = work / f"{job.id}.ipynb"
    client.storage.get_file(("runs", job.id, "report.ipynb"), report)
    cells, notebook_span = notebook_sections(report)
    breakdown = {
        "queue wait (submit -> claimed)": record["started_at"] - record["created_at"],
        "claim (worker, after the message)": worker.get("claim", 0.0),
        "staging (data set, checkpoint look-up)": worker.get("staging", 0.0),
        "kernel hand-off": worker.get("kernel", 0.0),
        "papermill around the cells": worker.get("notebook", 0.0) - sum(cells.values()),
        **cells,
        "upload (adapter, result.json)": worker.get("upload", 0.0),
        "report (header, HTML, upload of both)": worker.get("report", 0.0),
        "status recorded (finish)": worker.get("finish", 0.0),
        "status propagation (recorded -> client sees it)": seen - record["finished_at"],
    }
    rows = [r for r in client.store.metrics(job.id) if "loss" in r]
    return {
        "wall": seen - started,
        "steps_per_s": steps_per_second([(r["step"], r["time"]) for r in rows]),
        "train": record["result"]["training_duration_seconds"],
        "breakdown": breakdown,
        "notebook_span": notebook_span,
        "worker_total": worker["total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", action="store_true")
    parser.add_argument("--spare", action="store_true", help="a warm spare, not forked kernels")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch's CPU threads on both sides (0: torch's default); one keeps a shared "
        "machine's figures steady",
    )
    args = parser.parse_args()
    if args.torch_threads:  # read at import by torch in the bare script and the worker's kernels
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    work = workdir()
    broker = "redis" if args.redis else "sqlite"
    if args.spare:  # read by the worker's KernelPool
        os.environ["FTKIT_FORK_KERNELS"] = "0"
        broker += ", spare kernel (a CUDA worker's way)"
    try:
        model = tiny_model(work)
        with redis_server() as url:
            settings = settings_in(work, url if args.redis else None)
            bare, jobs = [], []
            log = work / "worker"
            with worker(settings, log=log) as client:
                ds = client.upload_dataset(DATA)
                ended = 0.0
                for i in range(args.repeat):  # interleaved: drift on the machine hits both alike
                    # the worker idle (its next kernel warm) while the bare run trains, too
                    wait_warm(client, ended)
                    bare.append(bare_run(model, work / f"bare{i}", args.steps))
                    jobs.append(
                        one_job(
                            client, ds, model, args.steps, log.with_suffix(".0.log"), work, ended
                        )
                    )
                    ended = time.time()
        report(jobs, bare, args, broker)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(jobs: list[dict], bare: list[dict], args, broker: str) -> None:
    """The table, and the RESULT lines run_all.py collects."""
    med = statistics.median

    def runs(values) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    extra = [j["wall"] - b["wall"] for j, b in zip(jobs, bare)]
    speed = [j["steps_per_s"] / b["steps_per_s"] for j, b in zip(jobs, bare)]
    threads = args.torch_threads or "default"
    print(
        f"{args.steps}-step tiny-model job on {broker}, warm worker, torch threads {threads}; "
        f"median of {args.repeat} interleaved pairs:"
    )
    rows = [
        ("same work in a warm process (load, data, train, save)", [b["wall"] for b in bare]),
        ("  of which trainer set-up and train()", [b["train"] for b in bare]),
        ("ftkit job, submit -> seen ended", [j["wall"] for j in jobs]),
        ("  of which trainer set-up and train()", [j["train"] for j in jobs]),
        ("**the job beyond the work (headline)**", extra),
    ]
    for name, values in rows:
        print(f"  {name:58} {med(values):6.2f} s  (runs: {runs(values)})")
    print(
        f"  {'steps/s from step 1, job / warm process':58} {med(speed):6.3f}    (runs: {runs(speed)}; "
        f"job {med(j['steps_per_s'] for j in jobs):.1f}, warm process "
        f"{med(b['steps_per_s'] for b in bare):.1f} steps/s)"
    )
    print("  where the job's time goes (median s, min-max):")
    for name in jobs[0]["breakdown"]:
        values = [x["breakdown"].get(name, 0.0) for x in jobs]
        print(f"    {name:52} {med(values):6.2f}  ({min(values):.2f}-{max(values):.2f})")
    label = f"{args.steps}-step tiny job, {broker}, N={args.repeat}"
    print(
        "RESULT "
        + json.dumps(
            {
                f"a job beyond its work: submit -> seen ended minus the same work (load, data, "
                f"training, save) in a warm process; {label}": (
                    f"{med(extra):.2f} s (range {min(extra):.2f}-{max(extra):.2f}); job "
                    f"{med(j['wall'] for j in jobs):.2f} s vs {med(b['wall'] for b in bare):.2f} s"
                ),
                f"training speed from step 1, job / warm process; {label}": (
                    f"{med(speed):.3f} (range {min(speed):.3f}-{max(speed):.3f})"
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
