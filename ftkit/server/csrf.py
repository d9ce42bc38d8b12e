"""Requests other origins forge, and pages other origins frame.

SameSite=Strict does not stop a page on another port of the same host (a notebook's output, a
dev server): a different port is the same *site*, so the browser sends the cookie. So a request
that changes something (any method but GET, HEAD, OPTIONS) is refused with 403 when the browser
says it comes from elsewhere (``Sec-Fetch-Site`` other than ``same-origin``, or an ``Origin``
that is not this server's), and, when it rides on the session cookie, unless the browser says it
comes from here or it carries the session's CSRF token (``X-CSRF-Token``, which the page holds).
``Authorization: Bearer`` clients (scripts, curl) never send the cookie and are unaffected.

Every HTML answer also refuses to be framed (``X-Frame-Options`` and CSP ``frame-ancestors``),
so the dashboard's buttons cannot be clicked through a decoy, and its CSP loads nothing from
outside this server.
"""

from __future__ import annotations

import hmac
import logging
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .asgi import send_json
from .auth import SCOPE_KEY

log = logging.getLogger("ftkit.server.csrf")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSRF_HEADER = b"x-csrf-token"
PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def own_origin(scope: Scope, headers: dict[bytes, bytes]) -> str:
    host = headers.get(b"host", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}".lower()


def same_host(origin: str, scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """The Origin is this server: the same scheme and host:port, or (behind a TLS proxy that
    passes Host on) https with the same host:port."""
    if origin == own_origin(scope, headers):
        return True
    parts = urlsplit(origin)
    host = headers.get(b"host", b"").decode("latin-1").lower()
    return parts.scheme == "https" and bool(host) and parts.netloc == host


def refusal(scope: Scope, headers: dict[bytes, bytes], trusted: tuple[str, ...]) -> str | None:
    """Why a state-changing request is refused as cross-origin, or None to let it through."""
    kind, session = scope.get(SCOPE_KEY, (None, None))
    if kind == "bearer":
        return None
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower() or None
    origin = headers.get(b"origin", b"").decode("latin-1").lower() or None
    from_trusted = origin is not None and origin in trusted
    if origin is not None and not from_trusted and not same_host(origin, scope, headers):
        return f"a request from {origin[:100]} may not change anything here"
    if site not in (None, "same-origin") and not from_trusted:
        return f"a {site} request may not change anything here"
    if site == "same-origin" or origin is not None:
        return None
    offered = headers.get(CSRF_HEADER, b"").decode("latin-1")
    if session is not None and offered and hmac.compare_digest(offered, session.csrf):
        return None
    if kind == "session":
        return "a request with the session cookie needs its Origin (or the page's CSRF token)"
    return None  # no cookie, no browser signs: a script on an open server


class SameOriginOnly:
    """ASGI middleware: refuse forged state-changing requests (403), before their body is read."""

    def __init__(self, app: ASGIApp, *, trusted_origins: list[str] | None = None):
        self.app = app
        self.trusted = tuple(o.lower().rstrip("/") for o in trusted_origins or ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            why = refusal(scope, dict(scope["headers"]), self.trusted)
            if why is not None:
                log.warning("refused %s %s: %s", scope["method"], scope["path"], why)
                await send_json(send, 403, {"detail": f"cross-origin request refused: {why}"})
                return
        await self.app(scope, receive, send)


class NoFraming:
    """ASGI middleware: every HTML answer refuses framing and loads only from this server,
    unless its route set a policy of its own (the sandboxed report, framed by the job page)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                kind = dict((n.lower(), v) for n, v in headers).get(b"content-type", b"")
                if kind.startswith(b"text/html"):
                    if b"content-security-policy" not in names:
                        headers.append((b"content-security-policy", PAGE_POLICY.encode()))
                    if b"x-frame-options" not in names:
                        headers.append((b"x-frame-options", b"DENY"))
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, framed)
