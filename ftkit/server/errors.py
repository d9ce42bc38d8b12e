"""ftkit's error tree mapped to HTTP status codes, once, for every route.

    ConfigError        422, ``loc`` names the field (["body", "config", "lora_r"])
      JobExists        409
    DatasetError       422, with the data set's problems line by line
    JobNotFound        404
    JobActive          409  (delete a queued or running job without force)
    JobFailed          409  (e.g. no adapter to download yet)
    BrokerUnavailable  503
    StorageError       503
    MissingExtra       501
    FtkitError         400

Bodies have FastAPI's own shape (``{"detail": [{"loc", "msg", "type"}]}`` for 422s, ``{"detail":
"..."}`` otherwise), so a client reads one format whether pydantic or ftkit refused a request.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import (
    BrokerUnavailable,
    ConfigError,
    DatasetError,
    FtkitError,
    JobActive,
    JobExists,
    JobFailed,
    JobNotFound,
    MissingExtra,
    StorageError,
)

STATUS: list[tuple[type[FtkitError], int]] = [  # most specific first
    (JobExists, 409),
    (ConfigError, 422),
    (DatasetError, 422),
    (JobNotFound, 404),
    (JobActive, 409),
    (JobFailed, 409),
    (BrokerUnavailable, 503),
    (StorageError, 503),
    (MissingExtra, 501),
    (FtkitError, 400),
]


def status_of(exc: FtkitError) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def body(exc: FtkitError) -> dict:
    """The response body: field-located problems for a 422, the message otherwise."""
    if isinstance(exc, ConfigError) and not isinstance(exc, JobExists):
        field = exc.field
        in_config = field is not None and str(exc).startswith(
            ("TrainConfig.", "unknown TrainConfig")
        )
        loc = ["body", "config", field] if in_config else ["body", *([field] if field else [])]
        return {"detail": [{"loc": loc, "msg": str(exc), "type": "value_error"}]}
    if isinstance(exc, DatasetError):
        problems = [
            {
                "loc": ["body", "file", *([p.line] if getattr(p, "line", None) else [])],
                "msg": p.describe() if hasattr(p, "describe") else str(p),
                "type": f"dataset.{getattr(p, 'kind', 'invalid')}",
                **({"field": p.field} if getattr(p, "field", None) else {}),
            }
            for p in exc.problems
        ]
        head = {"loc": ["body", "file"], "msg": str(exc), "type": "dataset.invalid"}
        return {"detail": problems or [head], "summary": str(exc)}
    return {"detail": str(exc)}


def install(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FtkitError)
        return JSONResponse(body(exc), status_code=status_of(exc))

    app.add_exception_handler(FtkitError, handle)
