"""Every error ftkit raises, in one tree, each carrying the facts a user needs to act.

    FtkitError
    ├── ConfigError          a TrainConfig or Settings value is wrong (names the field and the fix)
    │   └── JobExists        a job with the requested id exists already
    ├── DatasetError         a data set cannot be used (names the file, line and field)
    ├── JobNotFound          no job or data set with that id
    ├── JobActive            a queued or running job asked to go (delete without force=True)
    ├── BrokerUnavailable    Redis (or the SQLite file) cannot be reached (names host:port)
    ├── StorageError         storage cannot be read or written (names the URL)
    │   └── StorageUnavailable   ... because it did not answer (an outage: worth waiting out)
    ├── MissingExtra         an optional dependency is not installed (names the extra)
    ├── OutOfMemory          training ran out of GPU memory (names batch size and sequence length)
    ├── JobFailed            Job.wait(raise_on_failure=True) on a job that failed
    ├── WorkerExited         ... or while a local worker this process started has exited
    └── WebhookError         a webhook request fails ftkit.webhooks.verify (says which check)

    NoWorkerWarning          (a UserWarning) Job.wait() sees no worker listening on the queue,
                             or none with the devices a job asks for (submit says so too)
    └── WorkerExitedWarning  ... or a local worker it started has exited (code, log's last lines)

Lower-level errors (redis, fsspec, papermill) are converted at the boundary with
``raise ... from exc`` so callers need one ``except FtkitError``.
"""

from __future__ import annotations


class FtkitError(Exception):
    """Base class of every ftkit error."""


class JobActive(FtkitError):
    """A job that is queued or running cannot be deleted without ``force=True`` (which cancels it
    first)."""


class ConfigError(FtkitError, ValueError):
    """A configuration value is invalid; ``field`` names it where one value is to blame (an HTTP
    layer reports it as the field of a 422)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class JobExists(ConfigError):
    """A job with the requested id exists already (ids are chosen once)."""


class DatasetError(FtkitError, ValueError):
    """A data set cannot be used; ``problems`` lists what is wrong, line by line."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = problems or []


class JobNotFound(FtkitError, KeyError):
    """No job (or data set) with the given id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"


class BrokerUnavailable(FtkitError, ConnectionError):
    """The queue/job store cannot be reached."""


class StorageError(FtkitError, OSError):
    """Storage cannot be read or written."""


class StorageUnavailable(StorageError):
    """Storage did not answer after a few quick retries: a network or service outage, which a
    worker waits out, as distinct from a missing file or a refused credential."""


class MissingExtra(FtkitError, ImportError):
    """An optional dependency is missing; the message names the pip extra."""


class OutOfMemory(FtkitError, RuntimeError):
    """Training ran out of (GPU) memory; the message names the batch size, sequence length and fixes."""


class JobFailed(FtkitError, RuntimeError):
    """A job ended failed (raised only when asked for)."""


class WorkerExited(FtkitError, RuntimeError):
    """A local worker this process started has exited (raised by ``wait(raise_on_failure=True)``);
    the message holds its exit code and its log's last lines."""


class NoWorkerWarning(UserWarning):
    """No worker has been listening on the queue for a few heartbeats, or none has the devices
    the job asks for: the job cannot start."""


class WorkerExitedWarning(NoWorkerWarning):
    """A local worker this process started has exited: its exit code and its log's last lines."""


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{module} is not installed; install it with: pip install 'ftkit[{extra}]'"
        ) from exc


class WebhookError(FtkitError, ValueError):
    """A webhook request that ``ftkit.webhooks.verify`` will not accept: unsigned, signed with
    another secret, changed after signing, or signed too long ago (a replay)."""
