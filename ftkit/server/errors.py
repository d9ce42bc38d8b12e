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

Messages reach strangers: ANSI codes and the server's folders are taken out (redact.py), and a
local ``base_model`` that cannot be used gets one answer, whatever is or is not at that path, so a
token holder cannot map the server's disk with it. A request body pydantic refuses is answered
without echoing non-finite numbers (NaN, Infinity), which JSON cannot carry.

Bodies have FastAPI's own shape (``{"detail": [{"loc", "msg", "type"}]}`` for 422s, ``{"detail":
"..."}`` otherwise), so a client reads one format whether pydantic or ftkit refused a request.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
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


BASE_MODEL_REFUSED = (
    "base_model: not a model folder this server may read. Give the path of a folder with a "
    "config.json under the server's allowed model folders (FTKIT_ALLOWED_MODEL_DIRS), or a hub "
    "id such as org/name"
)


# what ftkit says of a local base_model it cannot use, alone or for one run of a sweep
BASE_MODEL_ERROR = re.compile(r"((?:run \d+ of \d+ \(.*\): )?)base_model ", re.S)


def message(exc: FtkitError) -> str:
    """What a client is told: one answer for an unusable local base_model (missing, not a
    folder, no config.json or outside the allowed folders alike), else the message."""
    text = str(exc)
    found = BASE_MODEL_ERROR.match(text) if isinstance(exc, ConfigError) else None
    return found.group(1) + BASE_MODEL_REFUSED if found else text


def field_of(exc: ConfigError) -> str | None:
    return "base_model" if message(exc).endswith(BASE_MODEL_REFUSED) else exc.field


def body(exc: FtkitError) -> dict:
    """The response body: field-located problems for a 422, the message otherwise."""
    if isinstance(exc, ConfigError) and not isinstance(exc, JobExists):
        field, text = field_of(exc), message(exc)
        in_config = field is not None and (
            text.startswith(("TrainConfig.", "unknown TrainConfig"))
            or text.endswith(BASE_MODEL_REFUSED)
        )
        loc = ["body", "config", field] if in_config else ["body", *([field] if field else [])]
        return {"detail": [{"loc": loc, "msg": text, "type": "value_error"}]}
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


def finite(value: Any) -> Any:
    """A JSON-safe copy: a non-finite float becomes its name ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def install(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FtkitError)
        return JSONResponse(request.app.state.redact.deep(body(exc)), status_code=status_of(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = finite(jsonable_encoder(finite(list(exc.errors()))))
        return JSONResponse({"detail": request.app.state.redact.deep(detail)}, status_code=422)

    app.add_exception_handler(FtkitError, handle)
    app.add_exception_handler(RequestValidationError, invalid)
