"""Dashboard sessions and the sign-in throttle, held in this server's memory.

The cookie holds a random session id, never the token: signing out ends the session here, and a
stolen cookie stops working when it expires (``SESSION_SECONDS`` after sign-in) or the server
restarts. Each session has its own CSRF token, which the page sends with the requests it makes.
A client that keeps typing wrong tokens waits longer and longer before it may try again.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600  # a working day; then the token is typed again
MAX_SESSIONS = 1000  # the oldest go first: memory stays bounded whoever signs in
FREE_FAILURES = 5  # wrong tokens allowed before the first wait
FIRST_WAIT, MAX_WAIT = 30.0, 900.0  # seconds; doubled at each further failure
MAX_CLIENTS = 10_000


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    expires: float


class Sessions:
    """Session ids issued at sign-in, each with its expiry and CSRF token."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def start(self) -> Session:
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clock() + SESSION_SECONDS
        )
        with self._lock:
            self._by_id[session.id] = session
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, ended or expired)."""
        if not session_id:
            return None
        with self._lock:
            session = self._by_id.get(session_id)
            if session is not None and session.expires <= self.clock():
                del self._by_id[session_id]
                return None
        return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)


class LoginThrottle:
    """Per client: ``FREE_FAILURES`` wrong tokens, then a wait before each further try that
    doubles from ``FIRST_WAIT`` up to ``MAX_WAIT``. A right token clears the count."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # n, blocked until
        self._lock = threading.Lock()

    def wait(self, client: str) -> int:
        """Seconds this client must still wait before trying again (0: it may try now)."""
        with self._lock:
            _, until = self._failures.get(client, (0, 0.0))
        return max(0, math.ceil(until - self.clock()))

    def failed(self, client: str) -> None:
        with self._lock:
            n = self._failures.pop(client, (0, 0.0))[0] + 1
            extra = n - FREE_FAILURES + 1  # the FREE_FAILURES-th failure starts the first wait
            until = (
                self.clock() + min(MAX_WAIT, FIRST_WAIT * 2 ** min(extra - 1, 16))
                if extra > 0
                else 0
            )
            self._failures[client] = (n, until)
            while len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
