"""The FastAPI application behind ``ftkit serve``: the routers, auth, limits and error mapping.

It holds one ``Client`` (the public API) and nothing else: the queue, job store and storage stay
the single source of truth, shared with notebooks and workers; several servers can run at once.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from ..client import Client
from . import errors
from .auth import AuthGate, require_token
from .csrf import NoFraming, SameOriginOnly
from .limits import BodyLimit
from .models import ErrorResponse
from .redact import Redactor
from .routes import datasets, generate, health, jobs, sweeps
from .sessions import LoginThrottle, Sessions

log = logging.getLogger("ftkit.server")
# 2 GiB: a fine-tuning set of a million long chat examples in JSONL is about 1-2 GB (Parquet and
# gzip far less), and every upload is validated line by line and kept until deleted. Larger
# sets: raise it with FTKIT_MAX_UPLOAD_MB (or --max-upload-mb), or upload_dataset() from a
# notebook on a machine that reaches the storage.
MAX_UPLOAD_BYTES = 2 << 30
MAX_BODY_BYTES = 1 << 20  # every other request: 1 MiB


def default_upload_limit() -> int:
    raw = os.environ.get("FTKIT_MAX_UPLOAD_MB", "")
    return int(raw) << 20 if raw.isdigit() and int(raw) > 0 else MAX_UPLOAD_BYTES


DESCRIPTION = """Drive ftkit from scripts, CI and other languages: upload a data set, train (or
sweep a grid), follow the job and its logs, download the adapter, try the tuned model beside its
base model, retry or delete. The same queue, job store and storage as the notebooks.

With `FTKIT_API_TOKEN` set on the server, send `Authorization: Bearer <token>`."""


def create_app(
    client: Client | None = None,
    *,
    token: str | None = None,
    max_upload_bytes: int | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    cors_origins: list[str] | None = None,
    login_throttle: LoginThrottle | None = None,
) -> FastAPI:
    """The app; ``token`` (default: $FTKIT_API_TOKEN) turns bearer-token auth on everywhere;
    ``max_upload_bytes`` defaults to $FTKIT_MAX_UPLOAD_MB MiB, else 2 GiB."""
    from .._version import __version__
    from . import docs, page

    auth = [Depends(require_token)]
    app = FastAPI(
        title="ftkit",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # served below, behind the same auth as everything else
        redoc_url=None,
        openapi_url=None,
        responses={401: {"model": ErrorResponse, "description": "FTKIT_API_TOKEN is set"}},
    )
    app.state.client = client or Client()
    app.state.token = token if token is not None else os.environ.get("FTKIT_API_TOKEN") or None
    app.state.sessions = Sessions()
    app.state.login_throttle = login_throttle or LoginThrottle()
    settings = app.state.client.settings
    app.state.redact = Redactor(str(settings.storage), str(settings.scratch_dir))
    app.state.loaded_model = generate.LoadedModel()  # POST /jobs/{id}/generate's one model
    errors.install(app)
    for module in (datasets, jobs, sweeps, health, generate):
        app.include_router(module.router, dependencies=auth)
    app.include_router(page.router)
    app.include_router(docs.router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    # Innermost first: body limits, then forged requests, then who asks; framing headers on all.
    upload_limit = max_upload_bytes if max_upload_bytes is not None else default_upload_limit()
    app.add_middleware(
        BodyLimit, limit=max_body_bytes, upload_limit=upload_limit, upload_path="/upload"
    )
    app.add_middleware(SameOriginOnly, trusted_origins=cors_origins)
    app.add_middleware(AuthGate, token=app.state.token, sessions=app.state.sessions)
    if cors_origins:  # off unless asked for: browsers then refuse other sites' scripts
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(NoFraming)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    cors_origins: list[str] | None = None,
    max_upload_bytes: int | None = None,
) -> None:
    """Run the app with uvicorn (blocks). Warns loudly when it listens beyond loopback openly."""
    import uvicorn

    app = create_app(cors_origins=cors_origins, max_upload_bytes=max_upload_bytes)
    if not app.state.token and not is_loopback(host):
        banner = "!" * 78
        print(
            f"{banner}\nWARNING: ftkit serve listens on {host}:{port} WITHOUT authentication.\n"
            "Anyone who reaches this port can upload data, start and cancel jobs, and download\n"
            "adapters. Set FTKIT_API_TOKEN=<a long random secret> and restart.\n"
            f"{banner}",
            file=sys.stderr,
            flush=True,
        )
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)
