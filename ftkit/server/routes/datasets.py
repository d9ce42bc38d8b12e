"""POST /upload: a data set streamed to disk, validated line by line, stored, and a job id
reserved for the training run that follows. DELETE /dataset/{id}: a data set removed again,
unless a queued or running job still needs it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from ...client import Client
from ...core import statuses
from .. import reservations
from ..deps import get_client
from ..limits import receive_file
from ..models import DatasetDeleted, ErrorResponse, UploadResponse

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
    await run_in_threadpool(reservations.sweep, client)
    warnings = [w.get("message", "") for w in dataset.profile.get("warnings", [])][:20]
    if dataset.name != received.filename:  # known content: stored once, under its first name
        warnings.insert(
            0,
            f"this content was uploaded before as {dataset.name!r} and is stored once, under "
            f"that name: train on it with dataset_id, job_id or dataset_filename="
            f"{dataset.name!r} ({received.filename!r} names no data set)",
        )
    return UploadResponse(
        status="success",
        job_id=job_id,
        dataset_id=dataset.id,
        filename=dataset.name,
        uploaded_at=dataset.uploaded_at,
        format=dataset.format,
        rows=dataset.rows,
        size_bytes=dataset.size_bytes,
        warnings=warnings,
    )


@router.delete(
    "/dataset/{dataset_id}",
    response_model=DatasetDeleted,
    responses={
        404: {"model": ErrorResponse, "description": "no data set with this id"},
        409: {"model": ErrorResponse, "description": "queued or running jobs use it (named)"},
    },
)
def delete_dataset(
    dataset_id: str = PathParam(
        pattern=r"^[0-9a-f]{8,64}$", description="its id (sha256, or 8+ leading characters)"
    ),
    client: Client = Depends(get_client),
) -> DatasetDeleted:
    """Remove an uploaded data set (its file and metadata) and the job ids reserved for it.
    Refused, naming them, while queued or running jobs train on it; ended jobs keep their
    records (a retry of one then fails to find its data)."""
    dataset = client.get_dataset(dataset_id)
    users = users_of(client, dataset.id)
    if users:
        shown = ", ".join(users[:20]) + (f" and {len(users) - 20} more" if len(users) > 20 else "")
        raise HTTPException(
            409,
            f"data set {dataset.name} ({dataset.id[:12]}) is used by queued or running jobs "
            f"{shown}: cancel them first (DELETE /job/{{id}})",
        )
    freed = client.storage.size("datasets", dataset.id)
    client.storage.remove("datasets", dataset.id)
    dropped = reservations.drop_for(client, dataset.id)
    return DatasetDeleted(
        dataset_id=dataset.id, filename=dataset.name, bytes=freed, reservations_removed=dropped
    )


def users_of(client: Client, dataset_id: str, page: int = 500) -> list[str]:
    """Ids of the queued and running jobs that train on this data set."""
    found = []
    for status in (statuses.QUEUED, *statuses.ACTIVE):
        offset = 0
        while True:
            jobs = client.jobs(status=status, limit=page, offset=offset)
            found += [
                j["job_id"]
                for j in jobs
                if isinstance(j.get("dataset"), dict) and j["dataset"].get("id") == dataset_id
            ]
            if len(jobs) < page:
                break
            offset += page
    return found
