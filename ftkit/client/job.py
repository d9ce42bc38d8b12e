"""A handle on one job: follow it (status, metrics, logs, a progress bar), stop or retry it, and
collect what it made (adapter, report, a loaded model)."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, overload

from ..core import statuses
from ..core.records import JobStatus
from ..errors import (
    ConfigError,
    JobFailed,
    JobNotFound,
    NoWorkerWarning,
    WorkerExited,
    WorkerExitedWarning,
)
from ..storage import Storage
from .status import public_status
from .workers import WorkerWatch

# ftkit.client.client.Client, which sits above this module and hands itself in (it makes Jobs).
Client = Any


class Job:
    """A handle on one job; every call reads the live record."""

    def __init__(self, job_id: str, client: Client):
        self.id = job_id
        self._client = client

    @property
    def client(self) -> Client:
        """The connection this job is read through (the panels start worker watches with it)."""
        return self._client

    def __repr__(self) -> str:
        return f"<ftkit.Job {self.id}>"

    # How a job shows itself in a notebook cell: the layer above (``ftkit/__init__``, with the panels)
    # registers its live monitor here, so the client knows no widgets.
    cell_view: ClassVar[Callable[[Job, dict[str, Any]], dict[str, Any] | None] | None] = None

    # ``job.chat()``'s panel, registered by the same layer: (job, options) -> the panel.
    chat_view: ClassVar[Callable[[Job, dict[str, Any]], Any] | None] = None

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """In a notebook, a job shows its live monitor (None: IPython falls back to the repr)."""
        view = type(self).cell_view
        return view(self, kwargs) if view is not None else None

    def status(self) -> JobStatus:
        """The live record as people read it; an active job whose worker died is requeued first.
        A queued job that no live worker can run says why in ``waiting_for``."""
        record = self._client.store.get(self.id)
        if record["status"] in statuses.ACTIVE and self._client.reap_if_orphaned(record):
            record = self._client.store.get(self.id)
        return public_status(record, self._client.store.workers)

    def metrics(self, start: int = 0) -> list[dict[str, Any]]:
        """Logged rows ({"step", "loss", "learning_rate", "epoch", ...}), from index ``start`` on."""
        return self._client.store.metrics(self.id, start)

    @overload
    def logs(self, n: int = ..., *, follow: Literal[False] = ...) -> list[str]: ...
    @overload
    def logs(
        self, n: int = ..., *, follow: Literal[True], poll: float = ..., timeout: float | None = ...
    ) -> Iterator[str]: ...

    def logs(
        self,
        n: int = 50,
        *,
        follow: bool = False,
        poll: float = 0.5,
        timeout: float | None = None,
    ) -> list[str] | Iterator[str]:
        """The job's last ``n`` output lines: what its cells print (stdout and stderr) and ftkit's
        events. ``follow=True``: every kept line, then each new one as it comes, until the job
        ends (or ``timeout`` s pass: TimeoutError)."""
        if not follow:
            return self._client.store.logs(self.id, n)
        return self._follow(poll, timeout)

    def _follow(self, poll: float, timeout: float | None) -> Iterator[str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor, ended = 0, False
        while True:
            lines, cursor = self._client.store.logs_since(self.id, cursor)
            yield from lines
            if ended and not lines:
                return
            if ended:
                continue
            if self.status()["status"] in statuses.FINAL:
                # The final event is written just after the final status: read on until quiet.
                ended = True
                time.sleep(poll)
            elif not lines:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still running after {timeout} s of logs")
                time.sleep(poll)

    def cancel(self) -> str:
        return self._client.cancel(self.id)

    def retry(self) -> Job:
        """A new job with this failed or cancelled job's data set, config, tags, note and webhook, starting
        from its last kept checkpoint; when it kept none, from where this job started (step 1, or
        the job it continued). Its ``retry_of`` names this job."""
        from ..lineage import newest_checkpoint

        record = self._client.store.get(self.id)
        if record["status"] not in (statuses.FAILED, statuses.CANCELLED):
            raise ConfigError(
                f"job {self.id} is {record['status']}: only a failed or cancelled job is retried"
            )
        kept = newest_checkpoint(self._client.storage, self.id, to_continue=True) is not None
        return self._client.submit(
            record["dataset"]["id"],
            record["config"],
            priority=record.get("priority") or 0,
            max_attempts=record.get("max_attempts"),
            tags=record.get("tags") or None,
            note=record.get("note"),
            resume_from=self.id if kept else record.get("resume_from"),
            webhook=record.get("webhook") or "",  # its own, not today's default
            _retry_of=self.id,
        )

    def delete(self, *, force: bool = False) -> dict[str, Any]:
        """Remove this job and everything it left in the store and in storage (see Client.delete)."""
        return self._client.delete(self.id, force=force)

    def download(self, dest: str | os.PathLike) -> Path:
        return self._client.download(self.id, dest)

    def report_html(self) -> str:
        """The rendered run report as one HTML page; JobNotFound while there is none yet."""
        record = self._client.store.get(self.id)
        parts = Storage.run_parts(self.id, "report.html")
        if not self._client.storage.exists(*parts):
            raise JobNotFound(f"job {self.id} has no report yet (status {record['status']})")
        return self._client.storage.read_text(*parts)

    def report(self):
        """The rendered run report, shown inline in a notebook (an isolated frame)."""
        import html

        from IPython.display import HTML

        body = self.report_html()
        # sandbox="": the report shows data set text and model output; it runs no script here.
        return HTML(
            f'<iframe sandbox="" srcdoc="{html.escape(body, quote=True)}" '
            "style='width:100%;height:800px;border:1px solid #ddd'></iframe>"
        )

    def load(self, *, device: str | None = None):
        """(model, tokenizer): the base model with this job's adapter applied (PEFT), ready to generate
        on this machine. The adapter is downloaded once into the local cache."""
        from ..training.inference import load_tuned

        return load_tuned(self.status()["config"]["base_model"], self._adapter_dir(), device=device)

    def generate(self, prompt: str, *, max_new_tokens: int = 64) -> str:
        """A quick check: the fine-tuned model's answer to one user message (greedy)."""
        from ..training import generate

        if not hasattr(self, "_loaded"):
            self._loaded = self.load()
        model, tokenizer = self._loaded
        return generate(
            model, tokenizer, {"messages": [{"role": "user", "content": prompt}]}, max_new_tokens
        )

    def chat_model(self, *, device: str | None = None):
        """One load of the base model with this job's adapter (``ftkit.training.chat.ChatModel``),
        answering each prompt as the base model and as the tuned one; ``close()`` frees it.
        ``device``: default the CUDA GPU where there is one, else the CPU. Refused for a job that
        is not completed (it has no adapter to try)."""
        from ..training.chat import ChatModel

        base_model = self._base_model()
        return ChatModel.load(base_model, self._adapter_dir(), device=device)

    def chat(
        self,
        *,
        temperature: float = 0.0,
        max_new_tokens: int = 64,
        system: str = "",
        device: str | None = None,
    ) -> Any:
        """Try the tuned model in this notebook: a chat panel that shows its answer beside the base
        model's for each prompt, with the chat template and the generation settings in view
        (temperature 0: greedy). It loads the model once, in this process (the GPU where there is
        one, else ``device``), and frees it when closed."""
        view = type(self).chat_view
        if view is None:  # registered by ftkit/__init__, which importing this module runs
            raise RuntimeError("the chat panel is registered by `import ftkit`")
        options = dict(
            temperature=temperature, max_new_tokens=max_new_tokens, system=system, device=device
        )
        return view(self, options)

    def check_completed(self) -> None:
        """JobFailed (409 over HTTP), saying the status and what to do, unless the job completed."""
        now = self.status()["status"]
        if now == statuses.COMPLETED:
            return
        todo = {
            statuses.FAILED: f"see job.status()['error'], fix it and job.retry() ({self.id})",
            statuses.CANCELLED: "submit it again, or continue it with resume_from",
        }.get(now, "wait for it to finish: job.wait()")
        raise JobFailed(
            f"job {self.id} is {now}: only a completed job has a tuned model to try; {todo}"
        )

    def _base_model(self) -> str:
        """The base model to put the adapter on, as a worker reads it from the record (which anyone
        with the broker's URL may write): signed when this client has the queue secret, a local
        folder inside FTKIT_ALLOWED_MODEL_DIRS when they are set, an uploaded folder fetched from
        storage by its digest."""
        from ..spec import JobSpec, RecordRefused, check_model_path, verify_signature

        self.check_completed()
        record = self._client.store.get(self.id)
        settings = self._client.settings
        verify_signature(record, settings.queue_secret)
        spec = JobSpec.from_record(record)
        if spec.model is not None:
            cache = Path(settings.scratch_dir).expanduser() / "models"
            return str(self._client.storage.fetch_model(spec.model, cache)[0])
        try:
            check_model_path(spec.config.base_model, settings.allowed_model_dirs)
        except ConfigError as exc:
            raise RecordRefused(f"{exc} here") from exc
        return spec.config.base_model

    def merge(self, dest: str | os.PathLike) -> Path:
        """Save the base model with the adapter merged in, as a full model (save_pretrained)."""
        from ..training.inference import merge_into

        model, tokenizer = self.load()
        return merge_into(model, tokenizer, Path(dest).expanduser())

    def _adapter_dir(self) -> Path:
        cache = Path(self._client.settings.scratch_dir).expanduser() / "adapters" / self.id
        if not (cache / "adapter_config.json").is_file():
            self.download(cache)
        return cache

    @property
    def report_path(self) -> str | None:
        """The executed notebook's URL (or local path), once the job has ended."""
        return self._client.store.get_field(self.id, "report")

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool = True,
        poll: float = 0.5,
        raise_on_failure: bool = False,
    ) -> JobStatus:
        """Block until the job ends (with a progress bar, redrawn every ``poll`` seconds); the final
        status. The end itself is seen at once, not at the next poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        watch, warned = WorkerWatch(self._client), set()
        with self._client.store.end_watch(self.id) as sleep:
            try:
                while True:
                    status = self.status()
                    if progress:
                        bar = _update_bar(bar, status)
                    if status["status"] in statuses.FINAL:
                        break
                    exited = watch.exited()
                    if exited is not None and raise_on_failure:
                        raise WorkerExited(f"job {self.id} is {status['status']}: {exited}")
                    message = exited or watch.check() or status.get("waiting_for")
                    if message is not None and message not in warned:
                        category = WorkerExitedWarning if exited else NoWorkerWarning
                        warnings.warn(
                            f"job {self.id} is {status['status']}: {message}",
                            category,
                            stacklevel=2,
                        )
                        warned.add(message)
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(
                            f"job {self.id} still {status['status']} after {timeout} s"
                        )
                    sleep(poll)
            finally:
                if bar is not None:
                    bar.close()
        if raise_on_failure and status["status"] == statuses.FAILED:
            raise JobFailed(f"job {self.id} failed: {status['error']}")
        return status


def _update_bar(bar: Any, status: JobStatus) -> Any:
    from tqdm.auto import tqdm

    total = status.get("total_steps") or 0
    if bar is None:
        bar = tqdm(total=total or None, desc=f"job {status['job_id']}", unit="step")
    if total and bar.total != total:
        bar.total = total
    bar.n = status.get("current_step") or 0
    loss = status.get("loss")
    bar.set_postfix_str(
        f"{status['status']}" + (f" loss={loss:.4f}" if loss is not None else ""), refresh=False
    )
    bar.refresh()
    return bar
