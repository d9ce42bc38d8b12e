"""What ``Job.status()`` shows of a job record: readable times, no internals. Shared by the
client, sweeps and the HTTP server, so a job reads the same everywhere."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any, cast

from ..core.records import JobStatus

TIME_FIELDS = ("created_at", "started_at", "finished_at")
HIDDEN = ("idempotency_key",)  # a client's retry token: not for whoever reads the status


def public_status(record: Mapping[str, Any]) -> JobStatus:
    """The record with readable times and without internals; fields later versions added are
    filled in for records written before them."""
    out = {k: v for k, v in record.items() if k not in HIDDEN}
    out.setdefault("tags", [])  # records from before tags and notes
    out.setdefault("note", None)
    out.setdefault("resume_from", None)  # records of jobs that continue or retry no other
    out.setdefault("retry_of", None)
    out.setdefault("webhook", None)  # announced to none (or submitted before webhooks)
    out.setdefault("webhook_delivery", None)
    out.setdefault("warnings", [])  # what went wrong around a job that ended (its HTML report)
    for key in TIME_FIELDS:
        out[key] = iso_time(record.get(key))
    started, finished = record.get("started_at"), record.get("finished_at")
    out["duration_seconds"] = round((finished or time.time()) - started, 3) if started else None
    return cast(JobStatus, out)


def iso_time(ts: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 text in UTC, to the second; None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
