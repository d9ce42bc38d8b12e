"""``ftkit worker / submit / status / jobs / cancel / download / health / validate / tiny-model / demo``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import FtkitError

EXAMPLE_DATA = Path(__file__).parent / "examples" / "example_data.jsonl"


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


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        "job_id",
        "status",
        "progress",
        "current_step",
        "total_steps",
        "loss",
        "created_at",
        "worker",
    ]
    cells = [
        [
            ("" if r.get(c) is None else f"{r[c]:.4f}" if c == "loss" else str(r.get(c)))
            for c in cols
        ]
        for r in rows
    ]
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


def cmd_submit(args: argparse.Namespace) -> int:
    import ftkit

    fields = {
        f: getattr(args, f) for f in TrainConfig.field_names() if getattr(args, f) is not None
    }
    job = ftkit.submit(args.data, idempotency_key=args.idempotency_key, **fields)
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

    _print(ftkit.jobs(status=args.status, limit=args.limit), args.json)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    import ftkit

    print(ftkit.cancel(args.job))
    return 0


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

    columns = json.loads(args.columns) if args.columns else None
    profile = inspect_dataset(
        args.file, format=args.format, columns=columns, max_seq_length=args.max_seq_length
    )
    print(json.dumps(profile.to_dict(), indent=2, default=str) if args.json else profile.summary())
    return 0 if profile.ok else 1


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .tinymodel import build_tiny_model

    print(build_tiny_model(args.dir))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Tiny model, bundled data, a local worker, one job, and where its outputs went."""
    import ftkit

    from .tinymodel import build_tiny_model, is_model_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = Path(args.model_dir).resolve()
    if not is_model_dir(model_dir):
        print(f"building a tiny Llama model in {model_dir}")
        build_tiny_model(model_dir)
    client = ftkit.client()
    print(f"queue: {client.settings.broker}, storage: {client.settings.storage}")
    log_path = Path(client.settings.scratch_dir).expanduser() / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", "worker"],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    print(f"started a local worker (log: {log_path})")
    try:
        ds = ftkit.upload_dataset(EXAMPLE_DATA)
        print(f"uploaded {ds.name}: {ds.rows} rows, format {ds.format}")
        job = ftkit.submit(
            ds,
            base_model=str(model_dir),
            max_steps=args.max_steps,
            learning_rate=1e-3,
            batch_size=4,
            max_seq_length=256,
        )
        print(f"submitted job {job.id}")
        status = job.wait()
        print(
            f"job {job.id}: {status['status']}"
            + (f" ({status['error']})" if status["error"] else "")
        )
        if status["status"] != "completed":
            print(f"report: {status.get('report')}\nworker log: {log_path}")
        if status["status"] == "completed":
            result = status["result"]
            print(
                f"loss {result['first_loss']:.3f} -> {result['final_loss']:.3f} in {result['training_duration_seconds']:.1f} s"
            )
            print(f"report:  {result['report']}")
            print(f"adapter: {result['adapter_dir']}")
        return 0 if status["status"] == "completed" else 1
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


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

    p = sub.add_parser("submit", help="upload a data set (if a path) and queue a job")
    p.add_argument("data", help="a data set file or an uploaded data set's id")
    p.add_argument(
        "--wait", action="store_true", help="wait for the job and print its final status"
    )
    p.add_argument("--idempotency-key", default=None)
    _add_config_options(p)
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("status", help="one job's status")
    p.add_argument("job")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--status", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job")
    p.set_defaults(fn=cmd_cancel)

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
    p.add_argument("--model-dir", default="./storage/tiny-llama")
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
