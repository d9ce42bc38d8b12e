"""``ftkit worker / serve / submit / status / jobs / sweeps / sweep / cancel / logs / delete / gc /
download / health / validate / tiny-model / demo``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import FtkitError, JobFailed, WorkerExited

EXAMPLE_DATA = Path(__file__).parent / "examples" / "example_data.jsonl"
# The demo teaches a tiny random model two answers (LLaMA-Factory's identity.json in miniature),
# so that a minute on a laptop shows learning: the loss falls several-fold and the answers change.
DEMO_DATA = Path(__file__).parent / "examples" / "demo_data.jsonl"
DEMO_PROMPTS = ["Who are you?", "Who made you?"]
DEMO_MODEL: dict[str, Any] = {
    "hidden_size": 64,
    "layers": 2,
    "initializer_range": 0.1,
}  # see build_tiny_model
DEMO_TRAINING: dict[str, Any] = {
    "learning_rate": 1e-2,
    "batch_size": 8,
    "max_seq_length": 128,
    "logging_steps": 1,
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _prompts(text: str) -> list[str]:
    """--sample-prompts 'first prompt|second prompt'"""
    return [p.strip() for p in text.split("|") if p.strip()]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field, typed like the field."""
    for f in dataclasses.fields(TrainConfig):
        kind = next(
            (
                t
                for name, t in (("list", _prompts), ("bool", _bool), ("int", int), ("float", float))
                if name in str(f.type)
            ),
            str,
        )
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=kind,
            default=None,
            help=f"TrainConfig.{f.name} ({f.type})",
        )


def _print(value: Any, as_json: bool) -> None:
    if as_json or not isinstance(value, (dict, list)):
        print(json.dumps(value, indent=2, default=str) if not isinstance(value, str) else value)
    elif isinstance(value, dict):
        width = max((len(k) for k in value), default=0)
        for k, v in value.items():
            print(
                f"{k:<{width}}  {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}"
            )
    else:
        _print_table(value)


JOB_COLUMNS = [
    "job_id",
    "status",
    "progress",
    "current_step",
    "total_steps",
    "loss",
    "created_at",
    "worker",
]
LOSSES = ("loss", "final_loss", "eval_loss")


def _text(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in LOSSES and isinstance(value, (int, float)):
        return f"{value:.4f}"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _print_table(rows: list[dict[str, Any]], cols: list[str] = JOB_COLUMNS) -> None:
    cells = [[_text(c, r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import run_worker

    if args.gpus:
        return _run_worker_per_gpu(args.gpus.split(","), args.drain)
    run_worker(drain=args.drain)
    return 0


def _run_worker_per_gpu(gpus: list[str], drain: bool) -> int:
    """One worker process per GPU, each seeing only its device."""
    procs = []
    for gpu in gpus:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu.strip()}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ftkit.cli", "worker", *(["--drain"] if drain else [])],
                env=env,
            )
        )

    def forward(signum, _frame):
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API and web dashboard (the ``server`` extra)."""
    from .errors import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "server")
    from .server.app import serve

    origins = [o.strip() for o in (args.cors_origins or "").split(",") if o.strip()]
    serve(
        args.host,
        args.port,
        cors_origins=origins or None,
        max_upload_bytes=args.max_upload_mb << 20,
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import ftkit

    fields = {
        f: getattr(args, f) for f in TrainConfig.field_names() if getattr(args, f) is not None
    }
    job = ftkit.submit(
        args.data, idempotency_key=args.idempotency_key, tags=args.tag, note=args.note, **fields
    )
    if args.wait:
        status = job.wait()
        _print(status, args.json)
        return 0 if status["status"] == "completed" else 1
    print(job.id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import ftkit

    _print(ftkit.get_job(args.job).status(), args.json)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import ftkit

    _print(ftkit.jobs(status=args.status, limit=args.limit, tag=args.tag), args.json)
    return 0


def cmd_sweeps(args: argparse.Namespace) -> int:
    import ftkit

    rows = ftkit.sweeps(limit=args.limit, tag=args.tag)
    if args.json:
        _print(rows, True)
    else:
        _print_table(rows, ["sweep_id", "created_at", "mode", "swept", "runs", "dataset", "tags"])
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import ftkit

    sweep = ftkit.get_sweep(args.sweep)
    rows = sweep.status()
    if args.json:
        _print(list(rows), True)
        return 0
    print(sweep.title)
    _print_table(rows, rows.columns)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    import ftkit

    print(ftkit.cancel(args.job))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    import ftkit

    job = ftkit.get_job(args.job)
    if not args.follow:
        print("\n".join(job.logs(args.n)))
        return 0
    for line in job.logs(follow=True):
        print(line, flush=True)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    import ftkit

    row = ftkit.client().delete(args.job, force=args.force)
    print(f"deleted job {row['job_id']} ({row['status']}), freed {_size(row['bytes'])}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    import ftkit

    rows = ftkit.client().gc(args.older_than, status=args.status, dry_run=args.dry_run)
    if args.json:
        _print(rows, True)
        return 0
    for row in rows:
        print(
            f"{row['job_id']}  {row['status']:<9}  ended {row['finished_at'] or '-'}  "
            f"{_size(row['bytes'])}"
        )
    total = _size(sum(r["bytes"] for r in rows))
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {total} from {len(rows)} job{'s' if len(rows) != 1 else ''}")
    return 0


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    power = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**power:.1f} {('KB', 'MB', 'GB')[power - 1]}"


def cmd_download(args: argparse.Namespace) -> int:
    import ftkit

    print(ftkit.download(args.job, args.dest))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import ftkit

    health = ftkit.health()
    _print(health, args.json)
    return 0 if health["status"] != "unhealthy" else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from .data import inspect_dataset

    columns = _columns(args.columns)
    profile = inspect_dataset(
        args.file, format=args.format, columns=columns, max_seq_length=args.max_seq_length
    )
    print(json.dumps(profile.to_dict(), indent=2, default=str) if args.json else profile.summary())
    return 0 if profile.ok else 1


def _columns(text: str | None) -> dict[str, str] | None:
    """--columns '{"instruction": "question"}': JSON, checked as upload_dataset(columns=) checks it."""
    from .data import checked_columns
    from .errors import DatasetError

    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"--columns is not valid JSON ({exc.msg} at character {exc.pos + 1}): write it as "
            """'{"instruction": "question", "output": "answer"}' (double quotes inside single)"""
        ) from None
    return checked_columns(value)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .tinymodel import build_tiny_model

    print(build_tiny_model(args.dir))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Tiny model, bundled data, a local worker, one job: what it learned, and where its outputs went."""
    import ftkit

    from .tinymodel import build_tiny_model, is_model_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = Path(args.model_dir).resolve()
    if not is_model_dir(model_dir):
        print(f"building a tiny Llama model in {model_dir}")
        build_tiny_model(model_dir, **DEMO_MODEL)
    client = ftkit.client()
    print(f"queue: {client.settings.broker}, storage: {client.settings.storage}")
    # A 64-wide model's matrices are too small to split between threads; on a busy machine
    # OpenMP threads waiting on each other make it several times slower.
    worker = client.start_local_worker(
        env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    )
    print(f"started a local worker (pid {worker.pid}, log: {worker.log})")
    try:
        ds = ftkit.upload_dataset(DEMO_DATA)
        print(f"uploaded {ds.name}: {ds.rows} rows, format {ds.format}")
        job = ftkit.submit(
            ds,
            base_model=str(model_dir),
            max_steps=args.max_steps,
            sample_prompts=DEMO_PROMPTS,
            **DEMO_TRAINING,
        )
        print(f"submitted job {job.id}")
        try:
            status = job.wait(raise_on_failure=True)
        except WorkerExited as exc:
            print(f"\n{exc}", file=sys.stderr)
            return 1
        except JobFailed as exc:
            print(f"\n{exc}\nreport: {job.status().get('report')}\nworker log: {worker.log}")
            return 1
        print(f"job {job.id}: {status['status']}")
        for warning in status.get("warnings") or []:
            print(f"warning: {warning}")
        _print_what_was_learned(status["result"])
        return 0
    finally:
        worker.stop(timeout=30)


def _print_what_was_learned(result: Mapping[str, Any] | None) -> None:
    if not result:
        return
    first, last = result["first_loss"], result["final_loss"]
    print(
        f"loss {first:.3f} -> {last:.3f} (first -> last step, {1 - last / first:.0%} lower) "
        f"in {result['training_duration_seconds']:.1f} s of training"
    )
    for sample in result.get("samples") or []:
        print(f"prompt: {sample['prompt']}")
        print(f"  before: {sample['base model']!r}")
        print(f"  after:  {sample['fine-tuned']!r}")
    print(f"report:  {result['report']}")
    print(f"adapter: {result['adapter_dir']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftkit", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a worker (one per GPU)")
    p.add_argument("--gpus", help="comma-separated GPU indices: one worker process each")
    p.add_argument(
        "--drain",
        action="store_true",
        help="on SIGINT/SIGTERM finish the running job instead of handing it back",
    )
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser("serve", help="the HTTP API (/docs) and the web dashboard (/)")
    p.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--cors-origins",
        default=os.environ.get("FTKIT_CORS_ORIGINS"),
        help="comma-separated origins allowed to call the API from a browser (default: none)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=int(os.environ.get("FTKIT_MAX_UPLOAD_MB", "2048")),
        help="largest data set upload accepted, in MiB (default 2048: 2 GiB)",
    )
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("submit", help="upload a data set (if a path) and queue a job")
    p.add_argument("data", help="a data set file or an uploaded data set's id")
    p.add_argument(
        "--wait", action="store_true", help="wait for the job and print its final status"
    )
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--tag", action="append", default=None, help="a tag (repeat for more)")
    p.add_argument("--note", default=None, help="a note kept with the job")
    _add_config_options(p)
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("status", help="one job's status")
    p.add_argument("job")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--status", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--tag", default=None, help="only jobs submitted with this tag")
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("sweeps", help="list sweeps, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--tag", default=None, help="only sweeps submitted with this tag")
    p.set_defaults(fn=cmd_sweeps)

    p = sub.add_parser("sweep", help="one sweep's runs: their values, status, step and losses")
    p.add_argument("sweep")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job")
    p.set_defaults(fn=cmd_cancel)

    p = sub.add_parser("logs", help="a job's output lines and events")
    p.add_argument("job")
    p.add_argument("-n", type=int, default=50, help="how many of the last lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    p.set_defaults(fn=cmd_logs)

    p = sub.add_parser("delete", help="delete a job: its record, metrics, logs and run folder")
    p.add_argument("job")
    p.add_argument("--force", action="store_true", help="cancel a queued or running job first")
    p.set_defaults(fn=cmd_delete)

    p = sub.add_parser("gc", help="delete ended jobs older than an age, and say what that frees")
    p.add_argument("--older-than", required=True, help="an age: 30d, 12h, 90m, 45s, 2w")
    p.add_argument("--status", default=None, help="only jobs that ended so: completed, failed...")
    p.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    p.set_defaults(fn=cmd_gc)

    p = sub.add_parser("download", help="download a job's adapter")
    p.add_argument("job")
    p.add_argument("dest")
    p.set_defaults(fn=cmd_download)

    p = sub.add_parser("health", help="broker, live workers, queue depth")
    p.set_defaults(fn=cmd_health)

    p = sub.add_parser("validate", help="check a data set and print its profile and problems")
    p.add_argument("file")
    p.add_argument("--format", default=None)
    p.add_argument("--columns", default=None, help='JSON mapping, e.g. {"instruction": "question"}')
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser(
        "tiny-model", help="save a tiny random Llama model + tokenizer for tests and demos"
    )
    p.add_argument("dir")
    p.set_defaults(fn=cmd_tiny_model)

    p = sub.add_parser("demo", help="run one tiny job end to end on this machine")
    p.add_argument("--model-dir", default="./storage/demo-llama")
    p.add_argument("--max-steps", type=int, default=60)
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command != "worker":
        logging.getLogger("huey").setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except FtkitError as exc:
        print(f"ftkit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
