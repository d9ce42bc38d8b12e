"""Commands about jobs and sweeps: submit, status, jobs, sweeps, sweep, cancel, logs, delete, gc,
download. Each is a thin call into the public API (``import ftkit``), printed."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import TrainConfig
from ..core import statuses
from .output import SWEEP_COLUMNS, human_size, print_table, print_value


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (the others keep their defaults)."""
    return {f: getattr(args, f) for f in TrainConfig.field_names() if getattr(args, f) is not None}


def cmd_submit(args: argparse.Namespace) -> int:
    import ftkit

    job = ftkit.submit(
        args.data,
        idempotency_key=args.idempotency_key,
        tags=args.tag,
        note=args.note,
        resume_from=args.resume_from,
        webhook=args.webhook,
        **config_fields(args),
    )
    if args.wait:
        status = job.wait()
        print_value(status, args.json)
        return 0 if status["status"] == statuses.COMPLETED else 1
    print(job.id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import ftkit

    print_value(ftkit.get_job(args.job).status(), args.json)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import ftkit

    print_value(ftkit.jobs(status=args.status, limit=args.limit, tag=args.tag), args.json)
    return 0


def cmd_sweeps(args: argparse.Namespace) -> int:
    import ftkit

    rows = ftkit.sweeps(limit=args.limit, tag=args.tag)
    if args.json:
        print_value(rows, True)
    else:
        print_table(rows, SWEEP_COLUMNS)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import ftkit

    sweep = ftkit.get_sweep(args.sweep)
    rows = sweep.status()
    if args.json:
        print_value(list(rows), True)
        return 0
    print(sweep.title)
    print_table(rows, rows.columns)
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
    print(f"deleted job {row['job_id']} ({row['status']}), freed {human_size(row['bytes'])}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    import ftkit

    rows = ftkit.client().gc(args.older_than, status=args.status, dry_run=args.dry_run)
    if args.json:
        print_value(rows, True)
        return 0
    for row in rows:
        print(
            f"{row['job_id']}  {row['status']:<9}  ended {row['finished_at'] or '-'}  "
            f"{human_size(row['bytes'])}"
        )
    total = human_size(sum(r["bytes"] for r in rows))
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {total} from {len(rows)} job{'s' if len(rows) != 1 else ''}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    import ftkit

    print(ftkit.download(args.job, args.dest))
    return 0
