"""Cleaning up after runs: delete one job (its record, metrics, logs and run folder) or collect
every ended job older than an age (``ftkit gc``). Used through ``Client`` and ``Job``."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from .core import statuses
from .errors import ConfigError, JobActive, JobNotFound
from .storage import Storage

Client = Any  # ftkit.client.Client, which sits above this room and hands itself in

AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(value: str | float | int) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = AGE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"age {value!r}: give a number and a unit, e.g. 30d, 12h, 90m, 45s or 2w",
            field="older_than",
        )
    return float(match[1]) * UNIT_SECONDS[match[2]]


def delete_job(
    client: Client, job_id: str, *, force: bool = False, timeout: float = 120.0
) -> dict[str, Any]:
    """Remove a job and all it left behind; what was freed. A queued or running job is refused
    unless ``force``, which cancels it and waits (up to ``timeout`` s) for it to end first, so no
    worker writes to a record that is gone."""
    record = client.store.get(job_id)
    if record["status"] not in statuses.FINAL:
        if not force:
            raise JobActive(
                f"job {job_id} is {record['status']}: cancel it first, or delete it with "
                "force=True (which cancels it and waits for it to stop)"
            )
        record = _cancel_and_wait(client, job_id, timeout)
    parts = Storage.run_parts(job_id)
    freed = client.storage.size(*parts)
    client.storage.remove(*parts)  # first: should it fail, the record still says what to remove
    client.store.delete(job_id)
    return _row(record, freed)


def _cancel_and_wait(client: Client, job_id: str, timeout: float) -> dict[str, Any]:
    job = client.get_job(job_id)
    deadline = time.monotonic() + timeout
    while True:
        client.store.request_cancel(job_id)  # again after a reaper put it back in the queue
        status = job.status()  # reaps it when its worker is gone
        if status["status"] in statuses.FINAL:
            return client.store.get(job_id)
        if time.monotonic() > deadline:
            raise JobActive(
                f"job {job_id} is still {status['status']} {timeout:g} s after it was asked to "
                "stop; nothing was deleted"
            )
        time.sleep(0.2)


def collect(
    client: Client,
    older_than: str | float,
    *,
    status: str | None = None,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Delete every ended job (of ``status`` when given) that ended more than ``older_than`` ago;
    with ``dry_run``, only say which and how many bytes. Queued and running jobs are never
    collected."""
    age = parse_age(older_than)
    if status is not None and status not in statuses.FINAL:
        raise ConfigError(
            f"status {status!r}: only ended jobs are collected ({', '.join(statuses.FINAL)})",
            field="status",
        )
    cutoff = time.time() - age
    rows = []
    for s in (status,) if status else statuses.FINAL:
        for record in client.store.list_jobs(status=s, limit=1_000_000):
            ended = record.get("finished_at") or record.get("created_at") or 0
            if ended >= cutoff:
                continue
            if dry_run:
                rows.append(_row(record, client.storage.size(*Storage.run_parts(record["job_id"]))))
                continue
            try:
                rows.append(delete_job(client, record["job_id"]))
            except JobNotFound:
                continue  # deleted meanwhile by someone else
    return sorted(rows, key=lambda r: r["job_id"])


def _row(record: dict[str, Any], freed: int) -> dict[str, Any]:
    finished = record.get("finished_at")
    return {
        "job_id": record["job_id"],
        "status": record["status"],
        "finished_at": None
        if finished is None
        else dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(timespec="seconds"),
        "tags": record.get("tags") or [],
        "bytes": freed,
    }
