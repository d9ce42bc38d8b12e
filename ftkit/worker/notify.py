"""A job's end, announced to its webhook from a thread of its own: the job has ended before the
first attempt, so no receiver, slow, down or refusing, can hold a job up or change how it ended.

Whichever worker first sees a job's end announces it (the worker that ran it, one that refused
it, the one that takes the queue message of a job cancelled while queued, or a reaper that gave
up on it), once: the announcement is claimed on the record (``webhook_delivery``, a
compare-and-set) before anything is sent. Every attempt, its outcome and the next wait are
events in the job's log. A worker that shuts down makes one last attempt for each pending
delivery and then gives it up ("abandoned"): nothing is kept to retry later."""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

from .. import webhooks
from ..core.records import WebhookDelivery
from ..core.retry import through_outages
from ..core.rules import check_webhook
from ..errors import ConfigError, FtkitError, JobNotFound
from ..spec import RecordRefused, verify_signature
from .runtime import Runtime

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 15.0  # seconds a stopping worker gives its pending deliveries' last attempts


class Notices:
    """The worker's deliveries in flight, one thread each. ``FTKIT_WEBHOOK_BACKOFF_SECONDS`` (the
    first wait, 1) and ``FTKIT_WEBHOOK_RETRY_SECONDS`` (how long to keep trying, 600) shape the
    retries."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.stopping = threading.Event()
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.first = float(os.environ.get("FTKIT_WEBHOOK_BACKOFF_SECONDS") or 1.0)
        self.budget = float(os.environ.get("FTKIT_WEBHOOK_RETRY_SECONDS") or 600.0)

    def announce(self, job_id: str) -> None:
        """Announce the job's end, if it has ended, has a webhook and nobody announced it yet.
        Returns at once and never raises."""
        thread = threading.Thread(
            target=self._run, args=(job_id,), name=f"ftkit-webhook-{job_id}", daemon=True
        )
        with self.lock:
            self.threads.add(thread)
        thread.start()

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """At shutdown: each pending delivery makes one more attempt now, then gives up."""
        self.stopping.set()
        deadline = time.monotonic() + grace
        with self.lock:
            pending = list(self.threads)
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, job_id: str) -> None:
        try:
            claimed = self.claim(job_id)
            if claimed is not None:
                Delivery(self, job_id, *claimed).run()
        except Exception:  # a delivery must never take a worker down
            log.exception("announcing the end of job %s failed", job_id)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def claim(self, job_id: str) -> tuple[str, dict[str, Any]] | None:
        """The webhook and the event to send, once this worker holds the announcement; None when
        there is nothing to announce, or another worker announced it."""
        rt = self.rt
        try:
            record = through_outages(rt.store.get, job_id)  # a thread of its own: it may wait
        except JobNotFound:
            return None  # deleted meanwhile
        status = record.get("status")
        if status not in webhooks.EVENTS or record.get("webhook_delivery") is not None:
            return None
        if not record.get("webhook"):
            return None
        try:
            url = trusted_webhook(record, rt.settings.queue_secret)
        except FtkitError as exc:
            note(rt, job_id, f"webhook not called: {exc}")
            return None
        event = webhooks.event(record)
        delivery: WebhookDelivery = {
            "id": event["id"],
            "type": event["type"],
            "state": "pending",
            "attempts": 0,
            "outcome": None,
        }
        if not through_outages(
            rt.store.transition,
            job_id,
            status,
            allowed=(status,),
            expect={"webhook_delivery": None},
            webhook_delivery=delivery,
        ):
            return None  # another worker holds it
        return url, event


def trusted_webhook(record: Mapping[str, Any], secret: str | None) -> str:
    """The record's webhook, as its client signed it (with a secret) and well formed: a record
    someone changed after submit announces nothing, anywhere."""
    try:
        verify_signature(record, secret)
    except RecordRefused as exc:
        raise RecordRefused(f"the job's record does not verify ({exc})") from exc
    try:
        url = check_webhook(record.get("webhook"))
    except ConfigError as exc:
        raise RecordRefused(f"the job's {exc}") from exc
    assert url is not None
    return url


class Delivery:
    """One event to one webhook: attempts with doubling waits until one is answered 2xx, the
    receiver answers what will not change, the time allowed is used, or the worker stops."""

    def __init__(self, notices: Notices, job_id: str, url: str, event: dict[str, Any]):
        self.notices, self.rt, self.job_id = notices, notices.rt, job_id
        self.url, self.event, self.body = url, event, webhooks.body_of(event)
        self.where = webhooks.where(url)
        self.attempts = 0

    def run(self) -> None:
        waits = webhooks.delays(self.notices.first, self.notices.budget)
        what = f"webhook {self.event['type']} to {self.where}"
        while True:
            self.attempts += 1
            outcome, verdict = self.attempt()
            if verdict == "delivered":
                return self.end("delivered", outcome, f"{what}: delivered ({outcome})")
            if verdict == "refused":
                return self.end(verdict, outcome, f"{what}: not called: {outcome}")
            if verdict != "retry":
                return self.end(verdict, outcome, f"{what}: not delivered ({outcome}); no retry")
            wait = next(waits, None)
            if self.notices.stopping.is_set():
                why = f"{what}: abandoned after {self.attempts} attempts ({outcome}): the worker stopped"
                return self.end("abandoned", outcome, why)
            if wait is None:
                why = f"{what}: gave up after {self.attempts} attempts ({outcome})"
                return self.end("failed", outcome, why)
            self.record("pending", outcome)
            note(
                self.rt,
                self.job_id,
                f"{what}: attempt {self.attempts} failed ({outcome}); next in {wait:g} s",
            )
            self.notices.stopping.wait(wait)  # a stopping worker tries once more at once

    def attempt(self) -> tuple[str, str]:
        """One POST, signed now: its outcome in words, and delivered, retry, failed or refused."""
        headers = webhooks.headers_for(self.body, self.event, self.rt.settings.webhook_secret)
        try:
            address = webhooks.destination(self.url, self.rt.settings.webhook_allowed_hosts)
            status = webhooks.post(self.url, self.body, headers, address)
        except webhooks.DestinationRefused as exc:
            return str(exc), "refused"
        except (OSError, http.client.HTTPException) as exc:
            return failure(exc), "retry"
        if 200 <= status < 300:
            return f"HTTP {status}, attempt {self.attempts}", "delivered"
        return f"HTTP {status}", "retry" if webhooks.worth_retrying(status) else "failed"

    def end(self, state: str, outcome: str, message: str) -> None:
        self.record(state, outcome)
        note(self.rt, self.job_id, message)

    def record(self, state: str, outcome: str) -> None:
        delivery = {
            "id": self.event["id"],
            "type": self.event["type"],
            "state": state,
            "attempts": self.attempts,
            "outcome": outcome,
        }
        try:
            self.rt.store.update(self.job_id, webhook_delivery=delivery)
        except Exception as exc:  # deleted, or Redis away: the events and the log still say
            log.warning("job %s: could not record its webhook delivery: %s", self.job_id, exc)


def failure(exc: BaseException) -> str:
    """Why an attempt got no answer, in words (never the receiver's body)."""
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {webhooks.TIMEOUT:g} s"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def note(rt: Runtime, job_id: str, message: str) -> None:
    """An event in the job's log, and a line in the worker's; a store that is away costs the
    event, never the delivery."""
    log.info("job %s: %s", job_id, message)
    try:
        rt.store.add_event(job_id, message)
    except Exception as exc:
        log.warning("job %s: could not log %r: %s", job_id, message, exc)
