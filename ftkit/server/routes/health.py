"""GET /health: broker, live workers and queue depth, in the earlier design's shape."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ...client import Client
from ..deps import get_client
from ..models import Health, WaitingJob

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(client: Client = Depends(get_client)) -> JSONResponse:
    """200 while the broker answers (``degraded`` without live workers, or with queued jobs that
    none of them can run), 503 when it does not."""
    h = client.health()
    body = Health(
        status=h["status"],
        broker=h["broker"],
        redis_connected=h["broker_connected"],
        workers=h["workers"],
        celery_workers=h["workers"],
        queue_depth=h["queue_depth"],
        waiting_jobs=[WaitingJob(**w) for w in h["waiting_jobs"]],
    )
    return JSONResponse(body.model_dump(), status_code=503 if h["status"] == "unhealthy" else 200)
