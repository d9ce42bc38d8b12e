"""Job ids reserved by POST /upload expire: a reservation is a file in storage, and without an
end every upload would leave one behind for good.

A reservation older than ``RESERVATION_SECONDS`` is refused by POST /train (upload again for a
fresh id) and removed by the next upload's sweep (at most one sweep per ``SWEEP_EVERY`` seconds
per server, so an upload never lists the folder each time). Deleting a data set removes the
reservations made for it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

from ..client import Client
from ..core.rules import is_job_id
from ..errors import ConfigError, StorageError

RESERVATION_SECONDS = 7 * 24 * 3600
SWEEP_EVERY = 600.0
FOLDER = "reservations"
_last_sweep: dict[int, float] = {}
_lock = threading.Lock()


def expired(meta: dict[str, Any], now: float | None = None) -> bool:
    """Older than RESERVATION_SECONDS, or with no readable time (a hand-written record)."""
    try:
        reserved = dt.datetime.fromisoformat(str(meta.get("reserved_at"))).timestamp()
    except ValueError:
        return True
    return (now if now is not None else time.time()) - reserved > RESERVATION_SECONDS


def check_fresh(client: Client, job_id: str) -> None:
    """Refuse (and remove) an expired reservation of ``job_id``, naming the field."""
    meta = client.storage.reservation(job_id)
    if expired(meta):
        client.storage.remove(FOLDER, f"{job_id}.json")
        days = RESERVATION_SECONDS // 86400
        raise ConfigError(
            f"job_id {job_id!r} was reserved more than {days} days ago and has expired: upload "
            "the data set again for a fresh one, or leave job_id out",
            field="job_id",
        )


def all_reservations(client: Client) -> list[tuple[str, dict[str, Any]]]:
    """(job id, record) of every reservation; unreadable ones read as expired records."""
    found = []
    for name in client.storage.listdir(FOLDER):
        job_id = name.rsplit("/", 1)[-1].removesuffix(".json")
        if not is_job_id(job_id):
            continue
        try:
            meta = json.loads(client.storage.read_text(FOLDER, f"{job_id}.json"))
        except (StorageError, OSError, ValueError):
            meta = {}
        found.append((job_id, meta if isinstance(meta, dict) else {}))
    return found


def sweep(client: Client, *, force: bool = False) -> int:
    """Remove the expired reservations (at most once per SWEEP_EVERY unless ``force``)."""
    with _lock:
        last = _last_sweep.get(id(client), 0.0)
        if not force and time.monotonic() - last < SWEEP_EVERY and last:
            return 0
        _last_sweep[id(client)] = time.monotonic()
    removed = 0
    for job_id, meta in all_reservations(client):
        if expired(meta):
            client.storage.remove(FOLDER, f"{job_id}.json")
            removed += 1
    return removed


def drop_for(client: Client, dataset_id: str) -> int:
    """Remove the reservations made for one data set; how many."""
    removed = 0
    for job_id, meta in all_reservations(client):
        if meta.get("dataset_id") == dataset_id:
            client.storage.remove(FOLDER, f"{job_id}.json")
            removed += 1
    return removed
