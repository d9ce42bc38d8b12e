"""Webhooks: a job's end, announced by the worker that saw it, signed so the receiver can trust it.

Everything here is plain functions over bytes and records, shared by the worker that sends
(``ftkit.worker.notify``) and the receiver that checks (``verify``). The wire format:

- a POST of one JSON event, ``{"object": "event", "id", "type", "created_at", "data"}``, its
  types OpenAI's (``fine_tuning.job.succeeded``, ``.failed``, ``.cancelled``), its ``data`` read
  like ``job.status()`` (ISO 8601 times) with no secret in it;
- ``Ftkit-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` under
  FTKIT_WEBHOOK_SECRET (Stripe's scheme), signed again at each attempt, so a receiver can refuse
  what is older than a few minutes (a replay) and what another key signed;
- ``Ftkit-Event-Id``, the same at every attempt: a receiver drops what it has seen.

Where a worker may send is decided here too (``destination``): the hosts of
FTKIT_WEBHOOK_ALLOWED_HOSTS, or without that list public addresses only, since a webhook is a
request made from inside the worker's network on behalf of whoever submitted the job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import re
import socket
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from ._version import __version__
from .core import statuses
from .errors import WebhookError

# A job's final status and the event that announces it (OpenAI's names for the same three ends).
EVENTS = {
    statuses.COMPLETED: "fine_tuning.job.succeeded",
    statuses.FAILED: "fine_tuning.job.failed",
    statuses.CANCELLED: "fine_tuning.job.cancelled",
}
SIGNATURE_HEADER = "Ftkit-Signature"
ID_HEADER = "Ftkit-Event-Id"
TYPE_HEADER = "Ftkit-Event-Type"
TIMEOUT = 10.0  # seconds each attempt may take to connect and to answer
LONGEST_WAIT = 60.0  # the back-off doubles up to this
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
PASSWORD_IN_URL = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")


class DestinationRefused(WebhookError):
    """This worker will not call the webhook's host (FTKIT_WEBHOOK_ALLOWED_HOSTS, or a private
    address with no list): the request is never made."""


# -- the event --------------------------------------------------------------------------------------
def event(record: Mapping[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """The event that announces an ended job's record: where its report and adapter are, how it
    ended, what people called it. Passwords in any URL or message are masked."""
    found = record.get("result")
    result: dict[str, Any] = found if isinstance(found, dict) else {}
    final_loss = result.get("final_loss") if result else record.get("loss")
    data = {
        "job_id": record.get("job_id"),
        "status": record.get("status"),
        "final_loss": final_loss,
        "error": record.get("error"),
        "report": record.get("report") or result.get("report"),
        "adapter": result.get("adapter_dir"),
        "tags": record.get("tags") or [],
        "note": record.get("note"),
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
        "attempt": record.get("attempt"),
        "worker": record.get("worker"),
        "retry_of": record.get("retry_of"),
        "resume_from": record.get("resume_from"),
    }
    return {
        "object": "event",
        "id": event_id or new_event_id(),
        "type": EVENTS[record["status"]],
        "created_at": int(time.time()),
        "data": {k: masked(v) for k, v in data.items()},
    }


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex[:24]


def iso(ts: Any) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC, as ``job.status()`` shows them."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def masked(value: Any) -> Any:
    """A value with every ``scheme://user:password@`` password shown as ``***``."""
    if isinstance(value, str):
        return PASSWORD_IN_URL.sub(r"\1:***@", value)
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def body_of(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), allow_nan=False, default=str).encode()


# -- signing and verifying ---------------------------------------------------------------------------
def signature(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Ftkit-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def headers_for(body: bytes, event: Mapping[str, Any], secret: str | None) -> dict[str, str]:
    """One attempt's headers, signed now (without a secret: unsigned, and ``verify`` refuses)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"ftkit-webhook/{__version__}",
        ID_HEADER: str(event["id"]),
        TYPE_HEADER: str(event["type"]),
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(body, secret, int(time.time()))
    return headers


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    tolerance: float = 300,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """For a receiver: the event a request carries, once its ``Ftkit-Signature`` shows that a
    worker holding ``secret`` signed this very body less than ``tolerance`` seconds ago;
    WebhookError naming the check that failed otherwise. ``headers``: any mapping (the name is
    matched without regard to case)."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    value = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
    if not value:
        raise WebhookError(
            f"no {SIGNATURE_HEADER} header: the request is unsigned (the sending worker has no "
            "FTKIT_WEBHOOK_SECRET), or it did not come from ftkit"
        )
    pairs = [item.strip().partition("=") for item in value.split(",")]
    stamps = [v for k, _, v in pairs if k == "t"]
    macs = [v for k, _, v in pairs if k == "v1" and HEX_DIGEST.fullmatch(v)]
    if len(stamps) != 1 or not stamps[0].isdigit() or not macs:
        raise WebhookError(f"{SIGNATURE_HEADER} is not t=<unix time>,v1=<hex digest>")
    timestamp = int(stamps[0])
    expected = signature(raw, secret, timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, m) for m in macs):
        raise WebhookError(
            "signature does not match: the body was changed, or another FTKIT_WEBHOOK_SECRET "
            "signed it"
        )
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        raise WebhookError(
            f"signed {age:.0f} s from now, outside the {tolerance:g} s tolerance: a replayed "
            "request, or clocks that disagree"
        )
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise WebhookError(f"the signed body is not JSON: {exc}") from exc


# -- where a worker may send -------------------------------------------------------------------------
def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` is on the list: a name as given, or under a ``*.example.com`` entry."""
    host = host.lower().rstrip(".")
    return any(
        host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed
    )


def destination(url: str, allowed: tuple[str, ...]) -> str:
    """The address to connect to for ``url``, resolved once and then used (a host name that
    resolves elsewhere a moment later is not called). DestinationRefused when the host is not on
    ``allowed``, or, with no list, when any of its addresses is not public (loopback, private,
    link-local such as cloud metadata, multicast, reserved); OSError when it does not resolve."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if allowed and not host_allowed(host, allowed):
        raise DestinationRefused(f"host {host} is not in FTKIT_WEBHOOK_ALLOWED_HOSTS")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in found]
    if not allowed:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global or ip.is_multicast:
                raise DestinationRefused(
                    f"host {host} is at {address}, not a public address: this worker calls "
                    "other addresses only for hosts named in FTKIT_WEBHOOK_ALLOWED_HOSTS"
                )
    return addresses[0]


def post(url: str, body: bytes, headers: Mapping[str, str], address: str) -> int:
    """One POST to ``url`` through ``address``, its HTTP status (redirects are not followed, and
    the answer's body is never read beyond a little, nor kept); OSError or HTTPException when
    no answer came within TIMEOUT."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    conn: http.client.HTTPConnection
    if parts.scheme.lower() == "https":
        context = ssl.create_default_context()  # the certificate must name the URL's host
        conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)

    def pinned(_: Any, timeout: Any = None, source: Any = None) -> socket.socket:
        return socket.create_connection((address, port), timeout, source)

    conn._create_connection = pinned  # type: ignore[attr-defined]  # the address checked above
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read(65536)
        return response.status
    finally:
        conn.close()


# -- retrying ----------------------------------------------------------------------------------------
def delays(first: float, budget: float) -> Iterator[float]:
    """The waits between attempts: ``first``, doubling up to LONGEST_WAIT, while they add up to
    at most ``budget`` seconds."""
    waited, delay = 0.0, first
    while delay > 0 and waited + delay <= budget:
        yield delay
        waited += delay
        delay = min(delay * 2, LONGEST_WAIT)


def worth_retrying(status: int) -> bool:
    """A receiver's answer that may change: it timed out, was busy, or failed on its side. Any
    other 3xx or 4xx (a wrong URL, a refused signature) will not, so it is not asked again."""
    return status in (408, 425, 429) or status >= 500


def where(url: str) -> str:
    """A webhook URL as logs show it: scheme, host and port, not the path (it may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
