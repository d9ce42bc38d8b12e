"""Jobs: POST /train, GET /status/{id}, GET /jobs, DELETE /job/{id} (cancel), POST /retry/{id},
POST /delete/{id}, GET /download/{id}, GET /report/{id}, GET /metrics/{id}, GET /logs/{id}. Each is
one call on the public API."""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from ...client import Client, Dataset
from ...core import statuses
from ...core.rules import JOB_ID, TAG
from ...errors import ConfigError, JobActive, JobNotFound
from .. import reservations
from ..deps import get_client
from ..models import (
    CancelResponse,
    DatasetChoice,
    DeleteResponse,
    ErrorResponse,
    JobList,
    JobStatus,
    Logs,
    Metrics,
    RetryResponse,
    Status,
    TrainRequest,
    TrainResponse,
)

router = APIRouter(tags=["jobs"])
JobIdPath = PathParam(pattern=JOB_ID.pattern, description="12 hex digits")
TagQuery = Query(default=None, pattern=TAG.pattern, description="only jobs with this tag")
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no job with this id"}
}
QUIET_SECONDS = 0.5  # an ended job's last event is written just after its final status


def pick_dataset(client: Client, req: DatasetChoice) -> Dataset:
    """The reservation decides when the upload's job id is given; else the id, else the name."""
    if isinstance(req, TrainRequest) and req.job_id is not None:
        try:
            reserved = client.reserved_dataset(req.job_id)
            if client.store.get_field(req.job_id, "status") is None:  # not yet used
                reservations.check_fresh(client, req.job_id)
        except JobNotFound as exc:
            raise ConfigError(
                f"job_id {req.job_id!r} was not issued by POST /upload; leave it out to get a "
                "new one",
                field="job_id",
            ) from exc
        named = req.dataset_filename not in (None, reserved.name)
        if named or (req.dataset_id and not reserved.id.startswith(req.dataset_id)):
            raise ConfigError(
                f"job_id {req.job_id!r} was reserved for data set {reserved.name} "
                f"({reserved.id[:12]}), not this one",
                field="job_id",
            )
        return reserved
    if req.dataset_id:
        return client.get_dataset(req.dataset_id)
    if req.dataset_filename:
        return client.find_dataset(req.dataset_filename)
    upload = " (or the job_id from POST /upload)" if isinstance(req, TrainRequest) else ""
    raise ConfigError(
        f"name the data set: dataset_filename or dataset_id{upload}", field="dataset_filename"
    )


@router.post(
    "/train",
    response_model=TrainResponse,
    responses={
        404: {"model": ErrorResponse, "description": "no such uploaded data set"},
        409: {"model": ErrorResponse, "description": "the reserved job_id was used already"},
        422: {"model": ErrorResponse, "description": "an invalid field, named in loc"},
    },
)
def train(req: TrainRequest, client: Client = Depends(get_client)) -> TrainResponse:
    """Queue a training run on an uploaded data set (validated before anything is queued).
    ``resume_from`` continues from a past job's checkpoint; ``tags`` and ``note`` are for people."""
    dataset = pick_dataset(client, req)
    config = cast(BaseModel, req.config).model_dump(exclude_unset=True)
    before = time.time()
    job = client.submit(
        dataset,
        config,
        job_id=req.job_id,
        priority=req.priority,
        max_attempts=req.max_attempts,
        tags=req.tags,
        note=req.note,
        resume_from=req.resume_from,
        idempotency_key=req.idempotency_key,
        webhook=req.webhook,
    )
    status = job.status()
    created = client.store.get_field(job.id, "created_at")
    again = req.idempotency_key is not None and isinstance(created, float) and created < before
    return TrainResponse(
        job_id=job.id,
        status=status["status"],
        message=(
            f"job {job.id} was submitted before with this idempotency_key; it is {status['status']}"
            if again
            else f"job {job.id} queued: {dataset.name}, {dataset.rows} rows, "
            f"{status['config']['base_model']}"
            + (f"; {status['waiting_for']}" if status.get("waiting_for") else "")
        ),
        created_at=cast(str, status["created_at"]),  # a job just queued has its time
    )


def public(request: Request, status: Mapping[str, Any]) -> dict[str, Any]:
    """A status as an HTTP client sees it: its error, traceback, result and data set paths
    without ANSI codes or the server's folders."""
    clean = request.app.state.redact
    return {
        **status,
        **{
            k: clean.deep(status[k])
            for k in ("error", "error_traceback", "result", "dataset")
            if k in status
        },
    }


@router.get("/status/{job_id}", response_model=JobStatus, responses=NOT_FOUND)
def status(request: Request, job_id: str = JobIdPath, client: Client = Depends(get_client)) -> dict:
    """The same fields as ``job.status()`` in a notebook."""
    return public(request, client.get_job(job_id).status())


@router.get("/jobs", response_model=JobList)
def list_jobs(
    request: Request,
    status: Status | None = Query(default=None),
    tag: str | None = TagQuery,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=100_000),
    client: Client = Depends(get_client),
) -> JobList:
    """Jobs newest first, optionally with one status and one tag (read through the tag's index);
    ``offset`` pages through them."""
    found = client.jobs(status=status, limit=limit, offset=offset, tag=tag)
    return JobList(
        jobs=[public(request, s) for s in found],  # type: ignore[misc]
        total=None if tag else client.count_jobs(status),
        limit=limit,
        offset=offset,
    )


@router.delete("/job/{job_id}", response_model=CancelResponse, responses=NOT_FOUND)
def cancel(job_id: str = JobIdPath, client: Client = Depends(get_client)) -> CancelResponse:
    """Cancel a job: a queued one at once, a running one at its next training step."""
    after = client.cancel(job_id)
    message = (
        "cancelled"
        if after == statuses.CANCELLED
        else f"cancel requested; the job stops at its next step (now {after})"
        if after not in statuses.FINAL
        else f"the job had already ended ({after})"
    )
    return CancelResponse(job_id=job_id, status=after, message=message)  # type: ignore[arg-type]


@router.post(
    "/retry/{job_id}",
    response_model=RetryResponse,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "the job has not failed or been cancelled"},
    },
)
def retry(job_id: str = JobIdPath, client: Client = Depends(get_client)) -> RetryResponse:
    """A new job with a failed or cancelled job's data set, config, tags and note, starting from
    its last kept checkpoint (from step 1 when it kept none)."""
    job = client.get_job(job_id)
    now = job.status()["status"]
    if now not in (statuses.FAILED, statuses.CANCELLED):
        raise HTTPException(
            409, f"job {job_id} is {now}: only a failed or cancelled job is retried"
        )
    status = job.retry().status()
    parent = status.get("resume_from")
    return RetryResponse(
        job_id=status["job_id"],
        status=status["status"],
        message=f"job {status['job_id']} queued: a retry of {job_id}, "
        + ("from its checkpoint" if parent else "from step 1 (it kept no checkpoint)"),
        created_at=cast(str, status["created_at"]),  # a job just queued has its time
        retry_of=job_id,
        resume_from=parent,
    )


@router.post(
    "/delete/{job_id}",
    response_model=DeleteResponse,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "queued or running, and force is not set"},
    },
)
def delete(
    job_id: str = JobIdPath,
    force: bool = Query(
        default=False, description="cancel a queued or running job first, and wait for it to stop"
    ),
    client: Client = Depends(get_client),
) -> DeleteResponse:
    """Remove a job for good: its record, metrics, logs and run folder in storage (adapter,
    checkpoints, report). DELETE /job/{id} only cancels."""
    try:
        return DeleteResponse(**client.delete(job_id, force=force))
    except JobActive as exc:
        if force:
            raise
        raise JobActive(f"{exc}; over HTTP: POST /delete/{job_id}?force=true") from None


@router.get(
    "/download/{job_id}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the adapter folder, zipped"},
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "the job has no adapter (yet)"},
    },
)
def download(job_id: str = JobIdPath, client: Client = Depends(get_client)) -> FileResponse:
    """The trained adapter as a zip, streamed from a temporary file that is removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="ftkit-download-"))
    try:
        adapter = client.download(job_id, folder / "adapter")
        archive = folder / f"adapter-{job_id}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(p for p in adapter.rglob("*") if p.is_file()):
                zf.write(file, file.relative_to(adapter).as_posix())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=archive.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


@router.get(
    "/report/{job_id}",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}}, **NOT_FOUND},
)
def report(job_id: str = JobIdPath, client: Client = Depends(get_client)) -> HTMLResponse:
    """The executed notebook, rendered. Served sandboxed: its content cannot script this origin."""
    return HTMLResponse(
        client.get_job(job_id).report_html(),
        headers={
            # framed by the job page only; sandboxed, so its content is no script of this origin
            "Content-Security-Policy": "sandbox; frame-ancestors 'self'",
            "X-Frame-Options": "SAMEORIGIN",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/metrics/{job_id}", response_model=Metrics, responses=NOT_FOUND)
def metrics(
    job_id: str = JobIdPath,
    start: int = Query(default=0, ge=0, le=10_000_000, description="rows already read"),
    client: Client = Depends(get_client),
) -> Metrics:
    """The loss history: one row per logged step."""
    return Metrics(job_id=job_id, metrics=client.get_job(job_id).metrics(start))  # type: ignore[arg-type]


@router.get("/logs/{job_id}", response_model=Logs, responses=NOT_FOUND)
def logs(
    request: Request,
    job_id: str = JobIdPath,
    n: int = Query(default=100, ge=1, le=500, description="without cursor: this many last lines"),
    cursor: int | None = Query(
        default=None,
        ge=0,
        le=2**53,
        description="only the lines after this point: 0 at first, then the cursor last returned",
    ),
    client: Client = Depends(get_client),
) -> Logs:
    """The job's output lines (what its cells print, and ftkit's events): its last ``n``, or with
    ``cursor`` every kept line after it. Follow a job by passing each reply's cursor back until a
    reply says ``ended``."""
    status = client.get_job(job_id).status()["status"]  # first: JobNotFound; reaps an orphan
    store = client.store
    lines, after = store.logs_since(job_id, cursor or 0)
    lines = request.app.state.redact.deep(lines)
    ended = status in statuses.FINAL
    if cursor is None:
        return Logs(job_id=job_id, lines=lines[-n:], cursor=after, status=status, ended=ended)
    if ended and not lines:  # read on until quiet, as job.logs(follow=True) does
        time.sleep(QUIET_SECONDS)
        lines, after = store.logs_since(job_id, after)
        lines = request.app.state.redact.deep(lines)
    return Logs(job_id=job_id, lines=lines, cursor=after, status=status, ended=ended and not lines)
