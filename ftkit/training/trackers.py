"""A job's experiment trackers inside the kernel: TensorBoard, MLflow and W&B (TrainConfig.report_to).

Each is started before the model loads and dropped, with a warning in the job's log and report,
when it cannot work on this worker (not installed, not configured, unreachable). Each one's
trainer callback is guarded: a tracker that fails mid-run stops logging, says so, and the training
goes on. TensorBoard and W&B log through transformers' own callbacks, given a writer and a run
that ftkit made (the job's folder, name, tags and configuration). MLflow's run is ftkit's too: one
per job (a later attempt continues it), named by the job id, its params the TrainConfig; its
metrics go to it by run id. transformers' MLflowCallback would start a run of its own, log
TrainingArguments under names that clash with the TrainConfig's (save_steps 0 here, 500 there), and
end the run as training ends, before the worker has the report to add to it.

A multi-device job's trackers are rank 0's (its training process logs the metrics): its kernel
holds a stand-in (RankZeroTrackers) that starts nothing and hands the job's tags and note to the
plan; rank 0 starts the trackers in the same output folder and sends their table back.

The worker does the rest after the notebook (ftkit/worker/trackers.py): uploads the TensorBoard
files to storage, adds the report to the MLflow run and gives it its final status."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..config import TrainConfig, mask_url
from ..core.statuses import STOP_HANDOFF
from ..trackers import mlflow_client, scrub, tracking_uri, unreachable, warning_text, write_state
from .display import show_table
from .fencing import ORPHANED, SUPERSEDED

INSTALL = "pip install 'ftkit[trackers]' on the worker"
METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. :/]")  # what MLflow refuses in a metric's name
PENDING = 64  # MLflow batches in flight before training waits for the oldest


class Unavailable(Exception):
    """A tracker that cannot work on this worker; the message says why and what to do."""


class Trackers:
    """The job's trackers: their guarded trainer callbacks, what each does (the report's table)
    and the state the worker reads after the notebook (output_dir/trackers.json)."""

    def __init__(self, job_id: str, output_dir: str, storage: Any = None):
        self.job_id, self.output, self.storage = job_id, Path(output_dir), storage
        self.callbacks: list[Any] = []  # for the trainer (training.fit's ``callbacks``)
        self.shown: dict[str, str] = {}  # tracker -> where it logs, or why it does not
        self.state: dict[str, Any] = {"used": [], "warnings": []}
        self.tensorboard: Any = None  # transformers' TensorBoardCallback
        self.mlflow: MLflowRun | None = None
        self.wandb: Any = None  # the wandb run
        self.stopped: set[str] = set()  # trackers that failed mid-run: nothing more is sent them

    def warn(self, tracker: str, why: str) -> None:
        """Printed (the job's log keeps what the cells print) and kept for the worker (the job's
        record), scrubbed of credentials."""
        text = warning_text(tracker, why)
        print(f"tracker warning: {text}")
        self.state["warnings"].append(text)
        self.save()

    def add(self, tracker: str, callback: Any, doing: str = "logging") -> None:
        self.callbacks.append(guarded(tracker, callback, self.failed, doing))

    def failed(self, tracker: str, doing: str, why: str) -> None:
        """A guarded callback raised: it is done, and so is its tracker when it was the logging."""
        if doing == "logging":
            self.stopped.add(tracker)
        self.warn(tracker, f"stopped {doing} {why}; the training goes on")

    def save(self) -> None:
        if self.callbacks or self.state["warnings"]:  # a job without trackers leaves no file
            write_state(self.output, self.state)

    def finish(self, result: dict[str, Any] | None = None) -> None:
        """At the notebook's end: MLflow's metrics written and the adapter added to its run, the
        TensorBoard files closed, the W&B run finished. Never raises: a tracker only warns."""
        result = result or {}
        adapter = result.get("adapter_dir")
        if result.get("stopped") in (STOP_HANDOFF, SUPERSEDED, ORPHANED):
            adapter = None  # the job finishes in another run, which adds its own
        steps: list[tuple[str, Any]] = []
        # (an MLflow run that stopped mid-run would only fail again, after MLflow's retries)
        if self.mlflow is not None and "mlflow" not in self.stopped:
            mlflow = self.mlflow
            steps.append(("mlflow", lambda: mlflow.finish(adapter)))
        if self.tensorboard is not None:
            steps.append(("tensorboard", self.close_tensorboard))
        if self.wandb is not None:
            steps.append(("wandb", self.wandb.finish))
        for tracker, step in steps:
            try:
                step()
            except Exception as exc:
                self.warn(tracker, f"could not finish its run: {type(exc).__name__}: {exc}")
        self.save()

    def close_tensorboard(self) -> None:
        if self.tensorboard.tb_writer is not None:
            self.tensorboard.tb_writer.close()
            self.tensorboard.tb_writer = None


class RankZeroTrackers(Trackers):
    """A multi-device job's trackers as its kernel holds them: rank 0 of the training processes
    starts them (rank_run.py) with the tags and note kept here for the plan, and logs to them. No
    callbacks here, no state file to write, nothing to finish; rank 0's table is shown as the
    training ends (launch.py)."""

    def __init__(self, job_id: str, output_dir: str, tags: list[str], note: str):
        super().__init__(job_id, output_dir)
        self.tags, self.note = tags, note

    def save(self) -> None:
        """Rank 0 writes the state file the worker reads."""

    def finish(self, result: dict[str, Any] | None = None) -> None:
        """Rank 0 finished the trackers before its processes ended."""


def start_trackers(
    config: TrainConfig,
    job_id: str = "",
    output_dir: str = "run",
    tags: list[str] | tuple[str, ...] = (),
    note: str = "",
    reporter: Any = None,
    *,
    rank_zero: bool = False,
) -> Trackers:
    """Start each tracker of ``config.report_to``, dropping with a warning those that cannot work
    here; the table of what each does is shown when the job asks for any. A multi-device job's
    kernel gets rank 0's stand-in; rank 0 (``rank_zero``) starts them, its table sent back to the
    kernel rather than shown (no notebook display in a training process)."""
    labels = [t for t in tags if isinstance(t, str)]
    if config.devices > 1 and not rank_zero:
        stand_in = RankZeroTrackers(job_id, output_dir, labels, note or "")
        where = f"logged by rank 0 of the {config.devices} training processes (see Training)"
        if config.report_to:
            show_table(dict.fromkeys(config.report_to, where), "Experiment trackers")
        return stand_in
    trackers = Trackers(job_id, output_dir, getattr(reporter, "storage", None))
    for tracker in config.report_to:
        try:
            where = STARTERS[tracker](trackers, config, labels, note or "")
        except Exception as exc:
            why = str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"
            trackers.shown[tracker] = f"not used: {scrub(why)}"
            trackers.warn(tracker, f"not used: {why}")
        else:
            trackers.shown[tracker] = where
            trackers.state["used"].append(tracker)
    trackers.save()
    if config.report_to and not rank_zero:
        show_table(trackers.shown, "Experiment trackers")
    return trackers


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"{module} is not installed on this worker ({INSTALL})")


# -- TensorBoard -------------------------------------------------------------------------------------
def start_tensorboard(t: Trackers, config: TrainConfig, tags: list[str], note: str) -> str:
    """Event files in output_dir/tensorboard, uploaded to runs/<job_id>/tensorboard/ at each
    checkpoint (here) and when the job ends (by the worker)."""
    require("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    folder = t.output / "tensorboard"
    writer = SummaryWriter(log_dir=str(folder))
    shown = json.dumps(config.to_dict(), indent=2).splitlines()
    writer.add_text("ftkit/config", "\n".join(f"    {line}" for line in shown))  # a code block
    writer.flush()
    t.tensorboard = TensorBoardCallback(tb_writer=writer)
    # where it opens a writer again after training ends (the last evaluation's row)
    t.tensorboard.logging_dir = str(folder)
    t.add("tensorboard", t.tensorboard)
    if t.storage is None or not t.job_id:
        return f"event files in {folder}"
    t.add("tensorboard", TensorBoardUpload(t, folder), doing="uploading its files at checkpoints")
    from ..storage import Storage

    return f"event files in {t.storage.full_url(*Storage.run_parts(t.job_id, 'tensorboard'))}"


class TensorBoardUpload:
    """The event files to storage at each checkpoint save: a long run's curves show before it
    ends (the worker uploads them once more at the end)."""

    def __init__(self, trackers: Trackers, folder: Path):
        self.trackers, self.folder = trackers, folder

    def on_save(self, args, state, control, **kwargs):
        from ..storage import Storage

        writer = self.trackers.tensorboard.tb_writer
        if writer is not None:
            writer.flush()
        parts = Storage.run_parts(self.trackers.job_id, "tensorboard")
        self.trackers.storage.put_dir(self.folder, *parts)


# -- MLflow ------------------------------------------------------------------------------------------
def start_mlflow(t: Trackers, config: TrainConfig, tags: list[str], note: str) -> str:
    """The job's MLflow run at the worker's MLFLOW_TRACKING_URI (MLFLOW_EXPERIMENT_NAME, else
    MLflow's default experiment); credentials are MLflow's own variables, read by MLflow."""
    require("mlflow")
    uri = tracking_uri()
    if uri is None:
        raise Unavailable("MLFLOW_TRACKING_URI is not set in the worker's environment")
    why = unreachable(uri)
    if why:
        raise Unavailable(why)
    t.mlflow = MLflowRun.open(mlflow_client(uri), t.job_id, config, tags, note)
    t.state["mlflow"] = {"run_id": t.mlflow.run_id}
    t.add("mlflow", MLflowMetrics(t.mlflow))
    how = "continued" if t.mlflow.continued else "new"
    return (
        f"run {t.mlflow.run_id} ({how}) in experiment {t.mlflow.experiment_id} at {mask_url(uri)}"
    )


class MLflowRun:
    """One job's MLflow run, written by run id (no active run of MLflow's own to end or leak)."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, continued: bool):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.continued = continued
        self.pending: deque[Any] = deque()  # async batches in flight: waited on in order

    @classmethod
    def open(
        cls, client: Any, job_id: str, config: TrainConfig, tags: list[str], note: str
    ) -> MLflowRun:
        """The job's run: the one an earlier attempt started (tag ftkit.job_id), else a new one;
        the configuration's params it does not hold yet (a param never changes in MLflow)."""
        from mlflow.entities import Param

        experiment_id = mlflow_experiment(client)
        found = []
        if job_id:  # 12 hex characters (the worker checked): safe inside the filter
            query = f"tags.`ftkit.job_id` = '{job_id}'"
            found = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if found:
            run = found[0]
            client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = client.create_run(
                experiment_id, run_name=job_id or None, tags=run_tags(job_id, tags, note)
            )
        params = {k: v for k, v in run_params(config).items() if k not in run.data.params}
        if params:
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return cls(client, run.info.run_id, experiment_id, continued=bool(found))

    def log(self, logs: dict[str, Any], step: int) -> None:
        """A trainer log row as MLflow metrics at ``step``, sent without waiting; a failed batch
        raises when it is waited on (here, once PENDING are in flight, or at the end)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(METRIC_NAME.sub("_", key), float(value), now, step)
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            if math.isfinite(value)
        ]
        if metrics:
            self.pending.append(
                self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
            )
        while len(self.pending) > PENDING:
            self.pending.popleft().wait()

    def finish(self, adapter_dir: str | None) -> None:
        while self.pending:
            self.pending.popleft().wait()
        if adapter_dir and Path(adapter_dir).is_dir():
            self.client.log_artifacts(self.run_id, str(adapter_dir), "adapter")


class MLflowMetrics:
    """The trainer's log rows to the job's MLflow run."""

    def __init__(self, run: MLflowRun):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.run.log(logs or {}, state.global_step)


def mlflow_experiment(client: Any) -> str:
    """MLFLOW_EXPERIMENT_NAME's experiment (made when missing), else MLFLOW_EXPERIMENT_ID, else
    MLflow's default experiment (id 0)."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name)
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"


def run_tags(job_id: str, tags: list[str], note: str) -> dict[str, str]:
    """ftkit's tags on the run: the job id, the job's tags (space-separated, as the report shows
    them) and its note as the run's description."""
    values = {"ftkit.job_id": job_id, "ftkit.tags": " ".join(tags), "mlflow.note.content": note}
    return {k: v for k, v in values.items() if v}


def run_params(config: TrainConfig) -> dict[str, str]:
    """The TrainConfig as MLflow params: strings, lists as JSON, each within MLflow's limit."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    values = {
        k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in config.to_dict().items()
    }
    return {k: v[:MAX_PARAM_VAL_LENGTH] for k, v in values.items()}


# -- W&B ---------------------------------------------------------------------------------------------
def start_wandb(t: Trackers, config: TrainConfig, tags: list[str], note: str) -> str:
    """The job's W&B run (project WANDB_PROJECT, else "ftkit"; id and name the job id, so a later
    attempt resumes it), logged by transformers' WandbCallback. WANDB_MODE=offline keeps it on the
    worker, under WANDB_DIR or the run's folder (then uploaded to runs/<job_id>/wandb/)."""
    require("wandb")
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode not in ("offline", "dryrun", "disabled") and not has_wandb_key():
        raise Unavailable(
            "WANDB_API_KEY is not set in the worker's environment (or set WANDB_MODE=offline "
            "to keep the run's files on the worker)"
        )
    import wandb
    from transformers.integrations import WandbCallback

    own_dir = not os.environ.get("WANDB_DIR")
    t.wandb = wandb.init(
        project=os.environ.get("WANDB_PROJECT") or "ftkit",
        name=t.job_id or None,
        id=t.job_id or None,
        resume="allow" if t.job_id else None,
        tags=tags or None,
        notes=note or None,
        config={"ftkit": config.to_dict()},  # apart from the TrainingArguments the callback adds
        dir=str(t.output) if own_dir else None,
    )
    offline = mode in ("offline", "dryrun")
    t.state["wandb"] = {"offline": offline and own_dir}  # the worker uploads such a run's files
    t.add("wandb", WandbCallback())
    if not offline:
        return f"run {t.wandb.id}: {t.wandb.url or mode}"
    if own_dir and t.storage is not None and t.job_id:
        from ..storage import Storage

        where = t.storage.full_url(*Storage.run_parts(t.job_id, "wandb"))
        return f"offline run {t.wandb.id}, its files copied to {where} as the job ends"
    return f"offline run {t.wandb.id} in {Path(t.wandb.dir).parent}"


def has_wandb_key() -> bool:
    """WANDB_API_KEY, or a `wandb login` on this machine (its netrc entry for the W&B host)."""
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


STARTERS = {"tensorboard": start_tensorboard, "mlflow": start_mlflow, "wandb": start_wandb}


# -- guards ------------------------------------------------------------------------------------------
def guarded(tracker: str, inner: Any, failed: Any, doing: str = "logging") -> Any:
    """``inner`` (a trainer callback, or any object with some of its hooks) as a transformers
    TrainerCallback that never raises: its first failure goes to ``failed(tracker, doing, why)``
    and ends its calls."""
    from transformers import TrainerCallback

    class Guarded(TrainerCallback):
        def __init__(self) -> None:
            self.tracker, self.inner, self.doing = tracker, inner, doing
            self.on_failure, self.failed = failed, False

        def __repr__(self) -> str:
            return f"Guarded({type(self.inner).__name__})"

    for event in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
        setattr(Guarded, event, forward(event))
    return Guarded()


def forward(event: str) -> Any:
    """A guarded callback's hook ``event``: the inner callback's, any exception a warning."""

    def hook(self, args, state, control, **kwargs):
        method = getattr(self.inner, event, None)
        if self.failed or method is None:
            return None
        try:
            return method(args, state, control, **kwargs)
        except Exception as exc:
            self.failed = True
            why = f"at step {state.global_step} ({event}: {type(exc).__name__}: {exc})"
            self.on_failure(self.tracker, self.doing, why)
            return None

    hook.__name__ = event
    return hook
