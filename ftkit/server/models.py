"""Pydantic models for every request and response: the OpenAPI schema is the API's contract.

Field names follow the earlier REST design (``dataset_filename``, ``celery_workers``, ...), so its
cURL and Postman users keep working. The training configuration is generated from ``TrainConfig``
so the schema never drifts from what the library accepts; ``TrainConfig`` itself still validates.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from ..config import DPO_LOSS_TYPES, METHOD_SETTINGS, TrainConfig
from ..core.rules import (
    JOB_ID,
    MAX_NEW_TOKENS,
    MAX_NOTE,
    MAX_PROMPT_CHARS,
    MAX_TAGS,
    MAX_TEMPERATURE,
    MAX_WEBHOOK,
    METHODS,
    TAG,
)
from ..core.statuses import STATUSES
from ..trackers import TRACKERS

JobId = typing.Annotated[str, Field(pattern=JOB_ID.pattern, examples=["3f2a9c1b7d4e"])]
Status = Literal[STATUSES]  # type: ignore[valid-type]
Tag = typing.Annotated[str, Field(pattern=TAG.pattern, examples=["baseline"])]


def _describe(name: str) -> str:
    """A field's description in the schema: its name, and the values or the methods it takes."""
    takes = {"method": METHODS, "dpo_loss_type": DPO_LOSS_TYPES}.get(name)
    methods = METHOD_SETTINGS.get(name)
    return (
        f"TrainConfig.{name}"
        + (f": one of {', '.join(takes)}" if takes else "")
        + (f": a list of any of {', '.join(TRACKERS)}" if name == "report_to" else "")
        + (f" (method {' or '.join(methods)} only; unset: TRL's default)" if methods else "")
    )


def _config_model() -> type[BaseModel]:
    """Every TrainConfig field, optional: a field left out takes TrainConfig's default."""
    hints = typing.get_type_hints(TrainConfig)
    fields: dict[str, Any] = {
        f.name: (hints[f.name] | None, Field(default=None, description=_describe(f.name)))
        for f in dataclasses.fields(TrainConfig)
    }
    # strict: 1 is not true and "5" is not 5; extra keys reach TrainConfig, which names the
    # closest valid one.
    # NaN and Infinity are no value of any field (and JSON cannot carry them back).
    config = ConfigDict(strict=True, extra="allow", title="TrainConfig", allow_inf_nan=False)
    return create_model("TrainConfigIn", __config__=config, **fields)


TrainConfigIn = _config_model()


class DatasetChoice(BaseModel):
    """Which uploaded data set: by the file's name or by its id."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_filename: str | None = Field(
        default=None, max_length=200, description="an uploaded file's name (the newest upload)"
    )
    dataset_id: str | None = Field(
        default=None, max_length=64, description="an uploaded data set's id (sha256, 8+ chars)"
    )


class RunOptions(BaseModel):
    """What ``submit`` takes beside the configuration: they change nothing that trains."""

    model_config = ConfigDict(allow_inf_nan=False)

    tags: list[str] | None = Field(
        default=None,
        description=f"find the job again with GET /jobs?tag=...; at most {MAX_TAGS}, each "
        f"matching {TAG.pattern}",
    )
    note: str | None = Field(default=None, description=f"for people; {MAX_NOTE} characters")
    priority: int = Field(default=0, ge=-100, le=100)
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=100,
        strict=True,
        description="how often a run is tried when its worker dies (default: the server's "
        "FTKIT_MAX_ATTEMPTS, else 3)",
    )


class TrainRequest(DatasetChoice, RunOptions):
    """Which data set (by the uploaded file's name or its id) and how to train on it."""

    job_id: JobId | None = Field(
        default=None, description="the id that POST /upload reserved for this training run"
    )
    config: TrainConfigIn = Field(default_factory=TrainConfigIn)  # type: ignore[valid-type]
    resume_from: JobId | None = Field(
        default=None,
        description="a past job whose last kept checkpoint (save_steps) this run starts from",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="sent again (a retried request), it returns the job it made the first time",
    )
    webhook: str | None = Field(
        default=None,
        max_length=MAX_WEBHOOK,
        description="an http(s) URL the worker POSTs the job's end to, signed with its "
        "FTKIT_WEBHOOK_SECRET (README: Webhooks); default: the server's FTKIT_WEBHOOK_URL, "
        '"" for none',
        examples=["https://hooks.example.com/ftkit"],
    )


class TrainResponse(BaseModel):
    job_id: JobId
    status: Status = Field(description="queued; a job found by its idempotency_key may be further")
    message: str
    created_at: str


class RetryResponse(TrainResponse):
    retry_of: JobId
    resume_from: JobId | None = Field(
        description="the job whose checkpoint it starts from (None: from step 1, none was kept)"
    )


class DeleteResponse(BaseModel):
    job_id: JobId
    status: Status = Field(description="the job's status when it was deleted")
    finished_at: str | None
    tags: list[str]
    bytes: int = Field(description="bytes freed in storage (its run folder)")


class UploadResponse(BaseModel):
    status: Literal["success"]
    job_id: JobId = Field(description="reserved for the training run: pass it to POST /train")
    dataset_id: str
    filename: str
    uploaded_at: str
    format: str
    rows: int
    size_bytes: int
    warnings: list[str] = []


class DatasetDeleted(BaseModel):
    dataset_id: str
    filename: str
    bytes: int = Field(description="bytes freed in storage")
    reservations_removed: int = Field(description="job ids reserved for it, now released")


class JobResult(BaseModel):
    """What a completed job left behind (``core.records.JobResult``)."""

    model_config = ConfigDict(extra="allow")

    output_dir: str | None = None
    adapter_dir: str | None = None
    training_duration_seconds: float | None = None
    dataset_size: int | None = None
    report: str | None = None
    global_step: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    trainable_parameters: int | None = None
    backend: str | None = None
    samples: list[dict[str, Any]] = Field(
        default=[], description="sample prompts answered before and after training"
    )

    @field_validator("*", mode="wrap")
    @classmethod
    def _as_written(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        """Written by a worker anyone with the queue's URL could run: a field in the wrong shape
        reads as unset, not as a server error."""
        try:
            return handler(value)
        except ValidationError:
            assert info.field_name is not None
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)


# Fields a record may hold in any shape (anyone with the queue's URL writes records): they read as
# unset when malformed. The job's id and status are checked as they are.
JOB_STATUS_CHECKED = (
    "max_attempts", "priority", "tags", "note", "resume_from", "retry_of", "config", "dataset",
    "queued_at", "eta_seconds", "eval_loss", "error_cell", "error_traceback", "host", "report",
    "cancel_requested", "stop", "started_from", "queue_ref", "submitted_by", "model",
    "dataset_profile", "warnings", "signature", "webhook", "webhook_delivery",
)  # fmt: skip


class JobStatus(BaseModel):
    """What ``job.status()`` returns (``core.records.JobStatus``); fields beyond these pass
    through unchanged."""

    model_config = ConfigDict(extra="allow")

    job_id: JobId
    status: Status
    progress: float = 0.0
    current_step: int | None = 0
    total_steps: int | None = None
    loss: float | None = None
    result: JobResult | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None
    worker: str | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    priority: int | None = None
    tags: list[str] = []
    note: str | None = None
    resume_from: str | None = Field(default=None, description="the job it continues from")
    retry_of: str | None = Field(default=None, description="the job it retries")
    config: dict[str, Any] | None = Field(default=None, description="its TrainConfig, whole")
    dataset: dict[str, Any] | None = None
    queued_at: float | None = Field(default=None, description="seconds since the epoch")
    eta_seconds: float | None = None
    eval_loss: float | None = None
    error_cell: int | None = Field(default=None, description="the notebook cell that raised")
    error_traceback: str | None = None
    host: str | None = None
    report: str | None = Field(default=None, description="the executed notebook's URL")
    cancel_requested: bool | None = None
    stop: str | None = Field(default=None, description="a stop request: cancel, timeout, handoff")
    started_from: str | None = Field(
        default=None, description="a continued job: 'adapter' or the checkpoint it resumed"
    )
    queue_ref: str | None = None
    submitted_by: str | None = None
    model: dict[str, str] | None = Field(default=None, description="an uploaded base model")
    dataset_profile: dict[str, Any] | None = None
    warnings: list[str] = []
    signature: str | None = None
    webhook: str | None = Field(default=None, description="where its end is announced")
    webhook_delivery: dict[str, Any] | None = Field(
        default=None,
        description="how its end was announced: id, type, state (pending, delivered, failed, "
        "refused, abandoned), attempts, outcome",
    )
    waiting_for: str | None = Field(
        default=None,
        description="a queued job no live worker can run: why, e.g. 'waiting for a worker with "
        "4 devices; the largest has 2' (null when one can)",
    )

    @field_validator(*JOB_STATUS_CHECKED, mode="wrap")
    @classmethod
    def _as_written(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        """A record is data anyone with the queue's URL may have written: one of these fields in
        the wrong shape reads as unset, not as a server error."""
        try:
            return handler(value)
        except ValidationError:
            assert info.field_name is not None
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int | None = Field(
        description="jobs with this status (all jobs without a filter); null with a tag, which is "
        "not counted: a page with fewer than limit jobs is the last"
    )
    limit: int
    offset: int


class CancelResponse(BaseModel):
    job_id: JobId
    status: Status
    message: str


class MetricRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    epoch: float | None = None


class Metrics(BaseModel):
    job_id: JobId
    metrics: list[MetricRow]


class Logs(BaseModel):
    job_id: JobId
    lines: list[str]
    cursor: int = Field(
        description="pass it back as ?cursor= to get only the lines after these (opaque)"
    )
    status: Status = Field(description="the job's status, read before the lines")
    ended: bool = Field(
        description="with ?cursor=: the job had ended and every line was read; stop following"
    )


class WaitingJob(BaseModel):
    """A queued job that no live worker can run (``core.records.WaitingJob``)."""

    job_id: str
    reason: str = Field(examples=["waiting for a worker with 4 devices; the largest has 2"])


class Health(BaseModel):
    """``Client.health()`` in the earlier design's shape, which its users read."""

    # Model fields under the earlier design's names, and the client's key each one serves.
    RENAMED: ClassVar[dict[str, str]] = {
        "redis_connected": "broker_connected",
        "celery_workers": "workers",
    }
    # Client.health() keys not served: not in the earlier shape, and the queue's and storage's
    # places (and the warning naming them) would tell a stranger how the server is laid out.
    NOT_SERVED: ClassVar[tuple[str, ...]] = ("queue", "storage", "warning", "signed_messages")

    status: Literal["healthy", "degraded", "unhealthy"]
    broker: str
    redis_connected: bool = Field(description="the queue's broker answers (Redis or SQLite)")
    workers: int
    celery_workers: int = Field(description="the same count, under the earlier design's name")
    queue_depth: int
    waiting_jobs: list[WaitingJob] = Field(
        default=[],
        description="queued jobs that no live worker can run (too few devices), each with why; "
        "while there are any the status is degraded",
    )


# -- trying a completed job's model ---------------------------------------------------------------
class GenerateRequest(BaseModel):
    """One prompt for a completed job's model, answered by the base model and by the tuned one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, examples=["Who are you?"], description="the "
        "user's message, through the tokenizer's chat template (the rendered text comes back)"
    )  # fmt: skip
    system: str | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="a system message before it"
    )
    temperature: float = Field(
        default=0.0, ge=0.0, le=MAX_TEMPERATURE, strict=True,
        description="0: greedy, the same prompt gives the same answer; above: sampled",
    )  # fmt: skip
    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS, strict=True)


class GenerationSettings(BaseModel):
    temperature: float
    max_new_tokens: int
    sampling: Literal["greedy", "sampled"]
    system: str | None
    device: str = Field(description="where the server ran it: cpu, or cuda")


class GenerateResponse(BaseModel):
    job_id: JobId
    prompt: str
    rendered_prompt: str = Field(description="what the model read: the chat template applied")
    base: str = Field(description="the base model's answer (the adapter switched off)")
    tuned: str = Field(description="the fine-tuned model's answer")
    settings: GenerationSettings
    seconds: float = Field(description="both answers' generation time")


class Problem(BaseModel):
    """One entry of an error's ``detail``: FastAPI's shape, so every 422 reads the same."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int] = []
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str | list[Problem]
