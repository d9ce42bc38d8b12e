"""Every error ftkit raises, in one tree, each carrying the facts a user needs to act.

    FtkitError
    ├── ConfigError          a TrainConfig or Settings value is wrong (names the field and the fix)
    ├── DatasetError         a data set cannot be used (names the file, line and field)
    ├── JobNotFound          no job or data set with that id
    ├── BrokerUnavailable    Redis (or the SQLite file) cannot be reached (names host:port)
    ├── StorageError         storage cannot be read or written (names the URL)
    ├── MissingExtra         an optional dependency is not installed (names the extra)
    └── JobFailed            Job.wait(raise_on_failure=True) on a job that failed

Lower-level errors (redis, fsspec, papermill) are converted at the boundary with
``raise ... from exc`` so callers need one ``except FtkitError``.
"""

from __future__ import annotations


class FtkitError(Exception):
    """Base class of every ftkit error."""


class ConfigError(FtkitError, ValueError):
    """A configuration value is invalid."""


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


class MissingExtra(FtkitError, ImportError):
    """An optional dependency is missing; the message names the pip extra."""


class JobFailed(FtkitError, RuntimeError):
    """A job ended failed (raised only when asked for)."""


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{module} is not installed; install it with: pip install 'ftkit[{extra}]'"
        ) from exc
