"""Who is asking: the bearer token, or a dashboard session; checked before a body is read.

With ``FTKIT_API_TOKEN`` unset everything is open (the default binds to loopback only). With it
set, a request needs ``Authorization: Bearer <token>``, or the session cookie the page sets once
the token has been typed into its sign-in form. The cookie holds a random session id (see
sessions.py), is HttpOnly and SameSite=Strict; csrf.py refuses what other origins send with it.

``AuthGate`` runs before routing, so an unauthenticated request gets its 401 before its body is
read or parsed (a malformed body from a stranger is a 401, not a 422). The pages (the dashboard,
its job pages, the docs, sign-in and sign-out) answer a stranger with the sign-in form instead.
"""

from __future__ import annotations

import hmac
from typing import Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi import send_json
from .sessions import Session, Sessions

COOKIE = "ftkit_session"
SCOPE_KEY = "ftkit.auth"  # (kind, session) for the routes after the gate
PAGES = ("/", "/login", "/logout", "/docs")  # and what is under /ui/ and /docs/
Kind = Literal["open", "bearer", "session"]
bearer = HTTPBearer(auto_error=False, description="the server's FTKIT_API_TOKEN")
UNAUTHORIZED = "missing or wrong API token: send 'Authorization: Bearer $FTKIT_API_TOKEN'"


def token_ok(expected: str | None, offered: str | None) -> bool:
    if not expected:
        return True
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def cookie(headers: dict[bytes, bytes], name: str = COOKIE) -> str | None:
    from http.cookies import SimpleCookie

    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a malformed Cookie header is no session
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None


def identify(
    token: str | None, sessions: Sessions, headers: dict[bytes, bytes]
) -> tuple[Kind | None, Session | None]:
    """(how the request is authenticated, its session): a wrong bearer token is refused even
    with a good cookie, so a script's mistake is never hidden by a browser's session."""
    session = sessions.get(cookie(headers))
    if not token:
        return "open", session
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return ("bearer" if token_ok(token, auth[7:]) else None), None
    return ("session", session) if session is not None else (None, None)


def is_page(path: str) -> bool:
    return path in PAGES or path.startswith(("/ui/", "/docs/"))


class AuthGate:
    """ASGI middleware: identify every request; refuse an unauthenticated API call with 401."""

    def __init__(self, app: ASGIApp, *, token: str | None, sessions: Sessions):
        self.app, self.token, self.sessions = app, token, sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind, session = identify(self.token, self.sessions, dict(scope["headers"]))
        scope[SCOPE_KEY] = (kind, session)
        if kind is None and not is_page(scope["path"]):
            await send_json(
                send, 401, {"detail": UNAUTHORIZED}, ((b"www-authenticate", b"Bearer"),)
            )
            return
        await self.app(scope, receive, send)


def auth_of(request: Request) -> tuple[Kind | None, Session | None]:
    return request.scope.get(SCOPE_KEY, (None, None))


def signed_in(request: Request) -> bool:
    return auth_of(request)[0] is not None


def require_token(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """The routes' dependency: the gate has already refused strangers; this names the scheme in
    the OpenAPI schema and refuses anything that reached a route without passing the gate."""
    if not signed_in(request):
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
