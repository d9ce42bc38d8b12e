"""/docs: Swagger UI served from this server, never from a CDN.

A script from a CDN would run in the signed-in origin (and leave /docs blank offline), so Swagger
UI's files come from the ``fastapi-offline`` wheel (a pinned Swagger UI 5 bundle, part of the
``server`` extra) and are served under /docs/assets/. The page's CSP (csrf.py) loads nothing
from elsewhere, and Swagger UI's online validator badge is off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from .auth import signed_in

router = APIRouter(include_in_schema=False)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def assets_folder() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:
        return None
    return Path(fastapi_offline.__file__).parent / "static"


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    from . import page

    if not signed_in(request):
        return page.sign_in()
    if assets_folder() is None:
        return HTMLResponse(
            "<p>Swagger UI is not installed: pip install 'ftkit[server]'. The schema is at "
            "<a href='/openapi.json'>/openapi.json</a>.</p>",
            status_code=501,
        )
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="ftkit API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/docs/assets/{name}")
def asset(name: str) -> FileResponse:
    """One of Swagger UI's files (public code, the same for everyone: no sign-in needed)."""
    folder = assets_folder()
    if name not in ASSETS or folder is None:
        raise HTTPException(404, "no such file")
    return FileResponse(
        folder / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"}
    )
