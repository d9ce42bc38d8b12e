"""POST /upload: a data set streamed to disk, validated line by line, stored, and a job id
reserved for the training run that follows."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from ...client import Client
from ..deps import get_client
from ..limits import receive_file
from ..models import ErrorResponse, UploadResponse

router = APIRouter(tags=["data sets"])

MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSONL, JSON, CSV, TSV, TXT or Parquet (optionally .gz)",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/upload",
    response_model=UploadResponse,
    openapi_extra=MULTIPART_BODY,
    responses={
        413: {"model": ErrorResponse, "description": "larger than the upload limit"},
        422: {"model": ErrorResponse, "description": "the data's problems, line by line"},
    },
)
async def upload(
    request: Request,
    format: str | None = Query(default=None, max_length=20, description="else detected"),
    max_seq_length: int = Query(default=2048, ge=8, le=1_000_000),
    client: Client = Depends(get_client),
) -> UploadResponse:
    """Stream the multipart part ``file`` to disk, validate it, store it (content-addressed), and
    reserve the ``job_id`` that POST /train will use."""
    scratch = Path(client.settings.scratch_dir).expanduser() / "uploads"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        received = await receive_file(
            request.stream(), request.headers.get("content-type", ""), Path(folder)
        )
        dataset = await run_in_threadpool(
            client.upload_dataset,
            received.path,
            name=received.filename,
            format=format,
            max_seq_length=max_seq_length,
        )
    job_id = await run_in_threadpool(client.reserve_job_id, dataset)
    return UploadResponse(
        status="success",
        job_id=job_id,
        dataset_id=dataset.id,
        filename=dataset.name,
        uploaded_at=dataset.uploaded_at,
        format=dataset.format,
        rows=dataset.rows,
        size_bytes=dataset.size_bytes,
        warnings=[w.get("message", "") for w in dataset.profile.get("warnings", [])][:20],
    )
