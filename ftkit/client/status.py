"""What ``Job.status()`` shows of a job record: readable times, no internals. Shared by the
client, sweeps and the HTTP server, so a job reads the same everywhere."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from ..core.records import JobStatus
from ..core.statuses import QUEUED
from ..placement import Need, Offer, waiting_reason

TIME_FIELDS = ("created_at", "started_at", "finished_at")
HIDDEN = ("idempotency_key",)  # a client's retry token: not for whoever reads the status


# The live workers' heartbeats, read only when a status needs them (a multi-device job queued).
Workers = Callable[[], Sequence[Mapping[str, Any]]]


def public_status(record: Mapping[str, Any], workers: Workers | None = None) -> JobStatus:
    """The record with readable times and without internals; fields later versions added are
    filled in for records written before them. With ``workers``, a queued job that no live
    worker can run says why in ``waiting_for``."""
    out = {k: v for k, v in record.items() if k not in HIDDEN}
    out["waiting_for"] = waiting_for(record, workers) if workers is not None else None
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


def waiting_for(record: Mapping[str, Any], workers: Workers) -> str | None:
    """Why a queued job cannot start on any live worker ("waiting for a worker with 4 devices;
    the largest has 2"), or None: it is not queued, or a live worker can run it. The workers are
    read only for a job that needs more than one device (or GPUs only)."""
    if record.get("status") != QUEUED:
        return None
    config = record.get("config")
    need = Need.of(config if isinstance(config, dict) else {})
    if need == Need():
        return None
    return waiting_reason(need, [Offer.of(dict(w)) for w in workers()])
