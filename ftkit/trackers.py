"""What the configuration, the kernel and the worker share about a job's experiment trackers:
which there are (and what TrainConfig.report_to takes), the state file the kernel (a multi-device
job's rank 0) leaves in the run's output folder (which trackers log, the MLflow run, the
warnings), the credentials no warning may show, and MLflow's client as the worker's environment
configures it.

The kernel's side is ftkit/training/trackers.py, the worker's ftkit/worker/trackers.py."""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The experiment trackers a job can log to (TrainConfig.report_to), through transformers' own
# integrations where they fit; each one's credentials come from the worker's environment only.
TRACKERS = ("tensorboard", "mlflow", "wandb")
STATE_FILE = "trackers.json"
# The trackers' credentials: their libraries read them from the worker's environment, and every
# warning ftkit writes is scrubbed of their values (a library's error message may quote one).
SECRET_VARIABLES = (
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
    "AWS_SECRET_ACCESS_KEY",  # an MLflow artifact store on S3
    "AWS_SESSION_TOKEN",
)
URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^@\s/]+@")  # scheme://user:PASSWORD@host
MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")
MAX_WARNINGS, MAX_WARNING = 10, 400
PROBE_SECONDS = 5.0  # a tracking server that does not accept a connection within this is away


def report_to_problem(report_to: Any) -> str | None:
    """Why TrainConfig refuses ``report_to`` (None when it takes it): a list of known trackers,
    each once (a typo would log nowhere, silently). A multi-device job takes them too: rank 0 of
    its training processes logs."""
    if isinstance(report_to, str) or not isinstance(report_to, (list, tuple)):
        example = f"[{report_to!r}]" if report_to in TRACKERS else "['tensorboard', 'mlflow']"
        return f"give a list of trackers, e.g. report_to={example}"
    for name in report_to:
        if name not in TRACKERS:
            close = difflib.get_close_matches(str(name), TRACKERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{name!r} is not a tracker ftkit knows{hint}; use any of {', '.join(TRACKERS)}"
        if report_to.count(name) > 1:
            return f"names {name!r} twice"
    return None


def scrub(text: str, env: dict[str, str] | None = None) -> str:
    """``text`` fit to show: each tracker credential of the environment replaced by ***, and the
    password of any URL in it."""
    e = os.environ if env is None else env
    for name in SECRET_VARIABLES:
        value = e.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return URL_PASSWORD.sub(r"\1***@", text)


def warning_text(tracker: str, why: str) -> str:
    """One tracker warning as the job's log, record and report show it: scrubbed and bounded."""
    return scrub(f"{tracker}: {' '.join(str(why).split())}")[:MAX_WARNING]


def write_state(output_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """The kernel's account of its trackers, replaced whole (the worker never reads half a file)."""
    path = Path(output_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state, default=str))
    partial.replace(path)


def read_state(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The state the kernel left, as the worker may act on it: known tracker names, an MLflow run
    id of the right form, short warnings; {} when there is none or it is not JSON."""
    try:
        raw = json.loads((Path(output_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    used, warnings = of_type(raw, "used", list), of_type(raw, "warnings", list)
    run_id = of_type(raw, "mlflow", dict).get("run_id")
    return {
        "used": [name for name in used if name in TRACKERS],
        "warnings": [scrub(w)[:MAX_WARNING] for w in warnings if isinstance(w, str)][:MAX_WARNINGS],
        "mlflow_run_id": run_id
        if isinstance(run_id, str) and MLFLOW_RUN_ID.fullmatch(run_id)
        else None,
        "wandb_offline": of_type(raw, "wandb", dict).get("offline") is True,
    }


def of_type(raw: dict[str, Any], key: str, kind: type) -> Any:
    """raw[key] when it is a ``kind``, else an empty one."""
    value = raw.get(key)
    return value if isinstance(value, kind) else kind()


def tracking_uri() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def unreachable(uri: str) -> str | None:
    """Why an HTTP tracking server cannot be used, when it does not accept a connection within
    PROBE_SECONDS: MLflow's own client would retry for minutes before it said so. None otherwise
    (a reachable server, or a store that is no server)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=PROBE_SECONDS):
            return None
    except OSError as exc:
        where = f"{parts.scheme}://{parts.hostname}:{port}"
        return f"the tracking server {where} is unreachable ({type(exc).__name__}: {exc})"


def is_file_store(uri: str) -> bool:
    """A file: URI or a folder path (not "databricks", not sqlite:///...)."""
    return uri.startswith(("file:", "/", "~", "."))


def mlflow_client(uri: str) -> Any:
    """MLflow's client for ``uri``. A local file store is what the worker was given: MLflow 3
    refuses it unless told that is intended (MLFLOW_ALLOW_FILE_STORE), which the worker's
    environment may still say otherwise."""
    if is_file_store(uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)
