"""Bearer-token authentication: one dependency for every route, the page and the docs.

With ``FTKIT_API_TOKEN`` unset everything is open (the default binds to loopback only). With it
set, a request needs ``Authorization: Bearer <token>``, or the cookie the page sets once the token
has been typed into its sign-in form. The cookie is HttpOnly and SameSite=Strict, so another site
can neither read it nor make the browser send it.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

COOKIE = "ftkit_token"
bearer = HTTPBearer(auto_error=False, description="the server's FTKIT_API_TOKEN")


def token_ok(request: Request, offered: str | None) -> bool:
    expected: str | None = request.app.state.token
    if not expected:
        return True
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    offered = credentials.credentials if credentials else request.cookies.get(COOKIE)
    if not token_ok(request, offered):
        raise HTTPException(
            401,
            "missing or wrong API token: send 'Authorization: Bearer $FTKIT_API_TOKEN'",
            headers={"WWW-Authenticate": "Bearer"},
        )
