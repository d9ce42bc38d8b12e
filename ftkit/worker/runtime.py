"""What the worker's threads share: its connections and identity (``Runtime``), and the one way
a step of a job waits out an outage (``patiently``). The bottom of the worker package: every
other part of it takes a Runtime, none of them owns it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..core.retry import through_outages
from ..errors import BrokerUnavailable, StorageUnavailable
from ..jobstore import JobStore
from ..placement import Offer
from ..storage import Storage


@dataclass
class Runtime:
    """The worker's connections and identity, shared by the task thread and the heartbeat."""

    settings: Settings
    store: JobStore
    storage: Storage
    worker_id: str
    scratch: Path
    huey: Any = None
    kernels: Any = None  # KernelPool
    kernel: Any = None  # the running job's kernel manager
    notices: Any = None  # Notices: the webhook deliveries in flight
    current_job: str | None = None
    claiming: str | None = None  # the job being claimed, until it is current_job
    jobs_done: int = 0
    offer: Offer = field(default_factory=Offer)  # the devices one job may use here
    holds: Any = None  # routing.Holds: messages of jobs left to a larger worker, until they go back
    started_at: float = field(default_factory=time.time)


def patiently(fn: Any, *args: Any) -> Any:
    """A step of a job that waits out a storage outage and a broker outage both (staging and
    upload write events as they go): each step is safe to repeat, and a Redis restart is never the
    job's fault."""
    return through_outages(fn, *args, outage=(StorageUnavailable, BrokerUnavailable))
