"""The command line's arguments: one small function per subcommand, and the menu that lists them
in the order ``ftkit --help`` shows."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable

from ..config import DPO_LOSS_TYPES, TrainConfig
from ..core.rules import METHODS
from ..placement import SHARDINGS
from . import datasets, demo, jobs, service

DESCRIPTION = """``ftkit worker / serve / submit / status / jobs / sweeps / sweep / cancel / logs / delete / gc /
download / health / workers / validate / tiny-model / demo``."""

Arguments = Callable[[argparse.ArgumentParser], None]
Command = Callable[[argparse.Namespace], int]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _prompts(text: str) -> list[str]:
    """--sample-prompts 'first prompt|second prompt'"""
    return [p.strip() for p in text.split("|") if p.strip()]


def _names(text: str) -> list[str]:
    """--report-to 'tensorboard,mlflow' (TrainConfig says which names it takes)"""
    return [n.strip() for n in text.split(",") if n.strip()]


# fields with a fixed set of values: --help lists them, and argparse refuses any other
CHOICES = {"method": METHODS, "dpo_loss_type": DPO_LOSS_TYPES, "sharding": SHARDINGS}
PARSERS = {"report_to": _names}  # a list that is not of prompts


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field, typed like the field."""
    for f in dataclasses.fields(TrainConfig):
        kind = PARSERS.get(f.name) or next(
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
            choices=CHOICES.get(f.name),
            help=f"TrainConfig.{f.name} ({f.type})",
        )


def _worker(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpus", help="comma-separated GPU indices: one worker process each (or per group)"
    )
    p.add_argument(
        "--gpus-per-worker",
        type=int,
        default=None,
        metavar="N",
        help="one worker per N consecutive GPUs of --gpus: its jobs may use all N",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        metavar="N",
        help="train on the CPU in N processes (gloo): tests, CPU clusters, a laptop",
    )
    p.add_argument(
        "--drain",
        action="store_true",
        help="on SIGINT/SIGTERM finish the running job instead of handing it back",
    )


def _serve(p: argparse.ArgumentParser) -> None:
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


def _submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a data set file or an uploaded data set's id")
    p.add_argument(
        "--wait", action="store_true", help="wait for the job and print its final status"
    )
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--tag", action="append", default=None, help="a tag (repeat for more)")
    p.add_argument("--note", default=None, help="a note kept with the job")
    p.add_argument(
        "--resume-from",
        default=None,
        metavar="JOB",
        help="continue a past job (its checkpoint, else its adapter): e.g. DPO after SFT",
    )
    p.add_argument(
        "--webhook",
        default=None,
        metavar="URL",
        help="POST the job's end here, signed (default FTKIT_WEBHOOK_URL; '' for none)",
    )
    _add_config_options(p)


def _one_job(p: argparse.ArgumentParser) -> None:
    p.add_argument("job")


def _jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--tag", default=None, help="only jobs submitted with this tag")


def _sweeps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--tag", default=None, help="only sweeps submitted with this tag")


def _sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("job")
    p.add_argument("-n", type=int, default=50, help="how many of the last lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")


def _delete(p: argparse.ArgumentParser) -> None:
    p.add_argument("job")
    p.add_argument("--force", action="store_true", help="cancel a queued or running job first")


def _gc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--older-than", required=True, help="an age: 30d, 12h, 90m, 45s, 2w")
    p.add_argument("--status", default=None, help="only jobs that ended so: completed, failed...")
    p.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")


def _download(p: argparse.ArgumentParser) -> None:
    p.add_argument("job")
    p.add_argument("dest")


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--format", default=None)
    p.add_argument("--columns", default=None, help='JSON mapping, e.g. {"instruction": "question"}')
    p.add_argument("--max-seq-length", type=int, default=2048)


def _tiny_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir")


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default="./storage/demo-llama")
    p.add_argument("--max-steps", type=int, default=60)


# name, help, arguments, command: in the order ``ftkit --help`` lists them
COMMANDS: list[tuple[str, str, Arguments, Command]] = [
    ("worker", "run a worker (one per GPU, or per group of GPUs)", _worker, service.cmd_worker),
    ("serve", "the HTTP API (/docs) and the web dashboard (/)", _serve, service.cmd_serve),
    ("submit", "upload a data set (if a path) and queue a job", _submit, jobs.cmd_submit),
    ("status", "one job's status", _one_job, jobs.cmd_status),
    ("jobs", "list jobs, newest first", _jobs, jobs.cmd_jobs),
    ("sweeps", "list sweeps, newest first", _sweeps, jobs.cmd_sweeps),
    (
        "sweep",
        "one sweep's runs: their values, status, step and losses",
        _sweep,
        jobs.cmd_sweep,
    ),
    ("cancel", "cancel a job", _one_job, jobs.cmd_cancel),
    ("logs", "a job's output lines and events", _logs, jobs.cmd_logs),
    (
        "delete",
        "delete a job: its record, metrics, logs and run folder",
        _delete,
        jobs.cmd_delete,
    ),
    (
        "gc",
        "delete ended jobs older than an age, and say what that frees",
        _gc,
        jobs.cmd_gc,
    ),
    ("download", "download a job's adapter", _download, jobs.cmd_download),
    (
        "health",
        "broker, live workers, queue depth, jobs no worker can run",
        _no_arguments,
        service.cmd_health,
    ),
    (
        "workers",
        "the live workers: host, devices, GPU, current job",
        _no_arguments,
        service.cmd_workers,
    ),
    (
        "validate",
        "check a data set and print its profile and problems",
        _validate,
        datasets.cmd_validate,
    ),
    (
        "tiny-model",
        "save a tiny random Llama model + tokenizer for tests and demos",
        _tiny_model,
        demo.cmd_tiny_model,
    ),
    ("demo", "run one tiny job end to end on this machine", _demo, demo.cmd_demo),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftkit", description=DESCRIPTION)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, summary, arguments, command in COMMANDS:
        p = sub.add_parser(name, help=summary)
        arguments(p)
        p.set_defaults(fn=command)
    return parser
