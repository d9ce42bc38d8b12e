"""The shapes that travel between packages, typed so that mypy checks every reader and writer:
the job record as stored, what ``Job.status()`` shows of it, a worker's heartbeat, the health of
the queue and a finished job's result. The HTTP server's models declare the same fields (a test
holds them together).

They are TypedDicts, not classes: a record is JSON written by anyone with the queue's URL, read
back as a dict and checked where it is used, and ``status()["loss"]`` keeps working as it always
has.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from .statuses import Status


class DatasetRef(TypedDict, total=False):
    """The uploaded data set a job trains on, as ``Dataset.to_dict()`` writes it into the record
    (its profile stays with the data set)."""

    id: str
    name: str
    url: str
    format: str
    rows: int
    sha256: str
    uploaded_at: str  # ISO 8601
    size_bytes: int
    columns: dict[str, str] | None


# One sample prompt, answered by the base model, the parent job (when the run started from one)
# and the fine-tuned one (``show_samples``): its keys are the report table's headings, spaces
# and all.
Sample = TypedDict(
    "Sample",
    {"prompt": str, "source": str, "base model": str, "parent job": str, "fine-tuned": str},
    total=False,
)


class JobResult(TypedDict, total=False):
    """What a completed job left behind, written by its worker (``job_result``)."""

    output_dir: str
    adapter_dir: str
    report: str
    training_duration_seconds: float
    dataset_size: int | None
    global_step: int
    first_loss: float | None
    final_loss: float | None
    trainable_parameters: int | None
    backend: str | None
    samples: list[Sample]


class WebhookDelivery(TypedDict, total=False):
    """How a job's end was announced to its webhook (``ftkit.worker.notify``): written once, by
    the worker that claims the announcement, then after each attempt."""

    id: str  # the event's id, the same at every attempt (Ftkit-Event-Id)
    type: str  # fine_tuning.job.succeeded, .failed or .cancelled
    state: Literal["pending", "delivered", "failed", "refused", "abandoned"]
    attempts: int
    outcome: str | None  # the last attempt's: "HTTP 204", "connection refused", ...


class JobRecord(TypedDict, total=False):
    """A job as the job store holds it: every field any code path writes (tests/test_jobs.py
    reads back real records to hold this true). Times are seconds since the epoch."""

    # written at submit (Client.submit), the queue reference by the store with the message
    job_id: str
    status: Status
    created_at: float
    queued_at: float  # also each time it is queued again
    max_attempts: int
    attempt: int  # counts up each time it is queued again
    priority: int
    idempotency_key: str | None
    submitted_by: str
    tags: list[str]
    note: str | None
    config: dict[str, Any]  # its TrainConfig, whole
    resume_from: str  # only on a job that continues another
    retry_of: str  # only on a retry of another job
    webhook: str  # only on a job announced to one (signed with the spec)
    model: dict[str, str] | None  # a local base-model folder uploaded to storage
    dataset: DatasetRef
    dataset_profile: dict[str, Any]
    warnings: list[str]
    signature: str | None  # with FTKIT_QUEUE_SECRET: ftkit.spec.sign, checked by the worker
    queue_ref: str  # which queue message runs it (jobstore.huey_layout)
    # claimed and run by a worker
    worker: str | None
    host: str
    started_at: float | None
    started_from: str  # the checkpoint (or "adapter") a job resumed from
    # progress, written by the kernel as it trains
    progress: float  # percent
    current_step: int
    total_steps: int | None
    loss: float | None
    eval_loss: float
    eta_seconds: float | None
    # stop requests: cancel, timeout, hand-back (core.statuses.STOP_REASONS)
    cancel_requested: bool
    stop: str | None
    # the end
    finished_at: float | None
    error: str | None
    error_cell: int | None  # the notebook cell that failed, with its traceback
    error_traceback: str
    result: JobResult | None
    report: str | None  # the report notebook's URL
    webhook_delivery: WebhookDelivery  # once a worker announces its end to its webhook


class JobStatus(TypedDict, total=False):
    """What ``Job.status()`` returns (``client.status.public_status``): the record without its
    idempotency key, times as ISO 8601 text, and how long it ran. Fields later versions added
    (tags, note, resume_from, retry_of, webhook, webhook_delivery, warnings) are always there."""

    job_id: str
    status: Status
    created_at: str | None
    queued_at: float  # seconds since the epoch, as stored (the reaper's clock)
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None  # so far, while it runs
    max_attempts: int
    attempt: int
    progress: float  # percent
    current_step: int
    total_steps: int | None
    eta_seconds: float | None
    loss: float | None
    eval_loss: float
    error: str | None
    error_cell: int  # the notebook cell that raised, when one did
    error_traceback: str
    worker: str | None
    host: str
    result: JobResult | None
    report: str | None  # the executed notebook's URL
    cancel_requested: bool
    stop: str | None  # a stop request: core.statuses.STOP_REASONS
    started_from: str  # a continued job: "adapter" or the checkpoint it resumed
    queue_ref: str | None
    priority: int
    submitted_by: str
    tags: list[str]
    note: str | None
    config: dict[str, Any]
    resume_from: str | None
    retry_of: str | None
    webhook: str | None
    webhook_delivery: WebhookDelivery | None
    model: dict[str, str] | None
    dataset: DatasetRef
    dataset_profile: dict[str, Any]
    warnings: list[str]
    signature: str | None
    # a queued job no live worker can run: why ("waiting for a worker with 4 devices; the
    # largest has 2"); None otherwise. Computed as it is read, never stored.
    waiting_for: str | None


class WorkerInfo(TypedDict, total=False):
    """A live worker's last heartbeat, as the worker sends it and the job store adds to it."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    noted_at: float
    queue: str
    secret_fingerprint: str | None
    cuda_visible_devices: str | None
    device_kind: str  # "cuda" or "cpu": what one job trains on here
    devices: int  # how many of them one job may use (ftkit worker --gpus-per-worker, --cpu-devices)
    gpu: str | None
    gpu_memory: str | None
    current_job: str | None
    kernel_pid: int | None
    jobs_done: int
    warm_kernel: bool
    last_seen: float  # written by the job store with each heartbeat


class WaitingJob(TypedDict):
    """A queued job that no live worker can run, and why (``Health.waiting_jobs``)."""

    job_id: str
    reason: str


class Health(TypedDict):
    """Whether jobs can run now: the broker answers, how many workers listen, and which queued
    jobs none of them can run."""

    status: Literal["healthy", "degraded", "unhealthy"]
    broker: str
    broker_connected: bool
    workers: int
    queue_depth: int
    queue: str
    storage: str
    warning: str | None
    signed_messages: bool
    waiting_jobs: list[WaitingJob]  # the oldest queued jobs no live worker can run
