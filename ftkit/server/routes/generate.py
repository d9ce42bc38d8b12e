"""Try a completed job's model over HTTP: POST /jobs/{job_id}/generate answers a prompt as the
base model and as the tuned one, as ``job.chat()`` does in a notebook.

Where it runs: in this server's process, not on a worker. A worker's GPU belongs to the queue: a
prompt must neither wait behind hours of training nor take memory from the job training there.
The server reads the same job store and storage as the workers, so it puts the adapter on its base
model as a notebook does; it needs the worker extra (torch, transformers, peft: else 501) and the
job's base model (the same folder, or the hub model in its cache: else 503).

One model is kept loaded, the last job asked for: a request for another job loads that one in its
place (the first one's memory freed). Requests take turns (one lock: PEFT's adapter switch, which
gives the base model's answer, is the model's own state); one that waits longer than WAIT_SECONDS
gets a 503 with Retry-After, so prompts queueing here cannot hold every request thread that the
rest of the API needs.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from ...client import Client, Job
from ...errors import MissingExtra, StorageError
from ..deps import get_client
from ..models import ErrorResponse, GenerateRequest, GenerateResponse
from .jobs import NOT_FOUND, JobIdPath

router = APIRouter(tags=["jobs"])
WAIT_SECONDS = 60.0


class LoadedModel:
    """The one model this server keeps loaded, and the lock requests take turns with."""

    def __init__(self, wait_seconds: float = WAIT_SECONDS):
        self.lock = threading.Lock()
        self.wait_seconds = wait_seconds
        self.job_id: str | None = None
        self.model: Any = None  # a ftkit.training.chat.ChatModel

    def answer(self, job: Job, req: GenerateRequest) -> dict[str, Any]:
        """The job's model's two answers, loading it first when another job's is loaded."""
        if not self.lock.acquire(timeout=self.wait_seconds):
            raise HTTPException(
                503,
                f"the server's model was busy for {self.wait_seconds:.0f} s with other "
                "prompts; try again",
                headers={"Retry-After": "10"},
            )
        try:
            if self.job_id != job.id:
                self.close()
                self.model, self.job_id = load(job), job.id
            return self.model.answer(
                req.prompt,
                system=req.system,
                temperature=req.temperature,
                max_new_tokens=req.max_new_tokens,
            )
        finally:
            self.lock.release()

    def close(self) -> None:
        """Free the loaded model's memory (the lock held)."""
        model, self.model, self.job_id = self.model, None, None
        if model is not None:
            model.close()


def load(job: Job) -> Any:
    """The job's ChatModel, or what this server lacks to load it, said as such."""
    try:
        return job.chat_model()
    except MissingExtra as exc:
        raise MissingExtra(
            f"this server runs the model itself and cannot: {exc} (where ftkit serve runs)"
        ) from None
    except FileNotFoundError as exc:
        raise StorageError(
            f"this server runs the model itself and cannot read the job's base model: {exc}. "
            "Give it the folder the workers read (or the hub model in its cache)"
        ) from None


@router.post(
    "/jobs/{job_id}/generate",
    response_model=GenerateResponse,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "the job is not completed: no model to try"},
        422: {"model": ErrorResponse, "description": "a setting out of range, named in loc"},
        501: {"model": ErrorResponse, "description": "the server lacks torch/transformers/peft"},
        503: {"model": ErrorResponse, "description": "busy with other prompts, or no base model"},
    },
)
def generate(
    request: Request,
    req: GenerateRequest,
    job_id: str = JobIdPath,
    client: Client = Depends(get_client),
) -> GenerateResponse:
    """A completed job's model answers one prompt twice: as the base model (its adapter switched
    off) and as the fine-tuned model, each given the same text (the chat template applied, which
    comes back as ``rendered_prompt``). ``temperature`` 0 is greedy. It runs on this server, not on
    a worker, whose GPU belongs to training; the first prompt for a job loads its model."""
    job = client.get_job(job_id)
    job.check_completed()  # 404, then 409, before any wait for the model
    answer = request.app.state.loaded_model.answer(job, req)
    return GenerateResponse(job_id=job_id, **answer)
