"""One way to wait out an outage: a job's claim, its final status, its kernel's start and its
trained adapter must not be lost to a minute without Redis or S3."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import BrokerUnavailable, StorageUnavailable

log = logging.getLogger("ftkit.retry")
T = TypeVar("T")

# What each outage is, how long a call waits it out by default, and how its back-off grows.
OUTAGES: dict[type[Exception], tuple[str, float, float]] = {
    BrokerUnavailable: ("job store", 0.2, 5.0),
    StorageUnavailable: ("storage", 0.5, 10.0),
}


def through_outages(
    fn: Callable[..., T],
    *args: Any,
    patience: float = 600.0,
    outage: type[Exception] | tuple[type[Exception], ...] = BrokerUnavailable,
    **kwargs: Any,
) -> T:
    """Call ``fn``, retrying with back-off while it raises ``outage`` (BrokerUnavailable: a Redis
    restart; StorageUnavailable: S3 away; or both) for up to ``patience`` seconds. Any other
    error, a permanent one (a missing file, refused credentials), is raised at once."""
    outages = outage if isinstance(outage, tuple) else (outage,)
    delay = min(OUTAGES[o][1] for o in outages)
    longest = max(OUTAGES[o][2] for o in outages)
    deadline = time.monotonic() + patience
    while True:
        try:
            return fn(*args, **kwargs)
        except outages as exc:
            if time.monotonic() > deadline:
                raise
            what = next(OUTAGES[o][0] for o in outages if isinstance(exc, o))
            log.warning("%s unreachable, retrying in %.1f s: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, longest)
