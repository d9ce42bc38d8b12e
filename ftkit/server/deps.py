"""What a route asks for: the one Client the app was made with."""

from __future__ import annotations

from fastapi import Request

from ..client import Client


def get_client(request: Request) -> Client:
    return request.app.state.client
