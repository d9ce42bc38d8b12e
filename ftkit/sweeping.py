"""Sweeps: one data set trained over a grid, or random samples, of TrainConfig values (which runs:
``sweep_plan``).

Every run is checked before any is queued. The sweep is recorded in the job store beside its jobs
(each tagged ``sweep:<id>``), so it is found again after the notebook restarts, and followed,
compared and cancelled as one. It sits above the client and queues each run through it.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from .client import Client, Dataset, Job, WorkerWatch, public_status, resolve_config
from .config import TrainConfig
from .core import statuses
from .core.html import table
from .core.records import JobRecord
from .core.rules import check_attempts, check_note, check_priority, check_tags, is_job_id
from .errors import ConfigError, FtkitError, JobFailed, JobNotFound, NoWorkerWarning
from .report import Comparison
from .sweep_plan import plan

MISSING = "missing"  # a run whose job is gone (deleted), or was never queued


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


# -- queueing --------------------------------------------------------------------------------------
def create(
    client: Client,
    dataset: Dataset | str | os.PathLike,
    config: TrainConfig | dict | None = None,
    *,
    mode: str = "grid",
    n: int | None = None,
    sample_seed: int | None = None,
    tags: list[str] | None = None,
    note: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    **fields: Any,
) -> Sweep:
    """Plan the runs, check every one as submit would, then record the sweep and queue its runs.
    A bad value names its field and its run, and nothing is queued."""
    runs, spec, fixed, sample_seed = plan(mode, fields, n, sample_seed, method=_method(config))
    user_tags, note = check_tags(tags), check_note(note)
    sweep_id = new_id()
    run_tags = _run_tags(user_tags, sweep_id)
    check_priority(priority)
    check_attempts(client.settings.max_attempts if max_attempts is None else max_attempts)
    configs = _check_runs(client, config, fixed, runs)
    ds = client.resolve_dataset(dataset)
    swept = set(spec)
    record: dict[str, Any] = {
        "sweep_id": sweep_id,
        "created_at": time.time(),
        "submitted_by": getpass.getuser(),
        "mode": mode,
        "swept": spec,
        "sample_seed": sample_seed,
        "config": {k: v for k, v in configs[0].to_dict().items() if k not in swept},
        "dataset": {"id": ds.id, "name": ds.name},
        "tags": user_tags,
        "note": note,
        "runs": [{"job_id": new_id(), "values": values} for values in runs],
    }
    client.store.create_sweep(record)  # first: every queued run is found from it
    options = {"tags": run_tags, "note": note, "priority": priority, "max_attempts": max_attempts}
    _queue_runs(client, record, ds, configs, options)
    return Sweep(record, client)


def _method(config: TrainConfig | dict | None) -> Any:
    """The base configuration's method, unchecked (its checks come with the runs')."""
    if isinstance(config, TrainConfig):
        return config.method
    return (config if isinstance(config, dict) else {}).get("method", "sft")


def _run_tags(user_tags: list[str], sweep_id: str) -> list[str]:
    """The tags each run carries: the user's, and its sweep's ``sweep:<id>``."""
    try:
        return check_tags([*user_tags, f"sweep:{sweep_id}"])
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (each run also carries its sweep:<id> tag)", field="tags"
        ) from None


def _check_runs(
    client: Client,
    config: TrainConfig | dict | None,
    fixed: dict[str, Any],
    runs: list[dict[str, Any]],
) -> list[TrainConfig]:
    """Each run's configuration, checked as submit checks it; a bad value names its run."""
    # a fixed value's error is not one run's fault; a method's setting is checked with the method
    # (fixed, or the first run's: check_methods found every run's method takes it)
    first = runs[0] if runs else {}
    method = {k: v for k, v in [*first.items(), *fixed.items()] if k == "method"}
    for name, value in fixed.items():
        resolve_config(config, {**method, name: value})
    configs = []
    for i, values in enumerate(runs):
        try:
            configs.append(client.check_config(config, **fixed, **values))
        except ConfigError as exc:
            raise ConfigError(
                f"run {i + 1} of {len(runs)} ({_describe(values)}): {exc}", field=exc.field
            ) from None
    return configs


def _queue_runs(
    client: Client,
    record: dict[str, Any],
    ds: Dataset,
    configs: list[TrainConfig],
    options: dict[str, Any],
) -> None:
    """Submit every run with its reserved id; should one fail, take back what was queued."""
    queued: list[str] = []
    try:
        for run, cfg in zip(record["runs"], configs):
            client.submit(ds, cfg, job_id=run["job_id"], **options)
            queued.append(run["job_id"])
    except BaseException as exc:
        undone = _roll_back(client, record, queued)
        add_note = getattr(exc, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(undone)
        raise


def _roll_back(client: Client, record: dict[str, Any], queued: list[str]) -> str:
    """Undo a sweep that could not queue every run: cancel and delete the runs queued so far, then
    its record; what could not be undone is named."""
    left = []
    for job_id in queued:
        try:
            client.cancel(job_id)
            client.delete(job_id)
        except FtkitError:
            left.append(job_id)  # picked up by a worker meanwhile: asked to stop
    try:
        client.store.delete_sweep(record["sweep_id"])
    except FtkitError:
        left.append(f"the sweep's record {record['sweep_id']}")
    where = (
        f"sweep {record['sweep_id']}: run {len(queued) + 1} of {len(record['runs'])} was not queued"
    )
    if not left:
        return f"{where}; the {len(queued)} runs queued before it were cancelled and deleted"
    return f"{where}; left behind (cancel asked where running): {', '.join(left)}"


def get(client: Client, sweep_id: str) -> Sweep:
    if not is_job_id(sweep_id):
        raise JobNotFound(f"no sweep {sweep_id!r}: sweep ids are 12 hex digits")
    return Sweep({**client.store.get_sweep(sweep_id), "sweep_id": sweep_id}, client)


def recent(client: Client, limit: int = 20, *, tag: str | None = None) -> list[dict[str, Any]]:
    """One row per sweep, newest first: what was swept, how many runs, tags."""
    if tag is not None:
        tag = check_tags([tag])[0]
    rows = []
    for record in client.store.list_sweeps(limit, tag=tag):
        if is_job_id(record.get("sweep_id")):
            rows.append(Sweep(record, client).summary())
    return rows


# -- a sweep ---------------------------------------------------------------------------------------
class RunTable(list):
    """Rows of dicts (one per run) that show as a table in a notebook."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str], title: str = ""):
        super().__init__(rows)
        self.columns, self.title = columns, title

    def _repr_html_(self) -> str:
        return table_html(self, self.columns, self.title)


def cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in ("final_loss", "eval_loss") and isinstance(value, (int, float)):
        return f"{value:.4f}"
    return str(value)


def table_html(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> str:
    """Runs as a table, each row marked with its status (``data-status``) for styles and tests."""
    return table(
        rows,
        columns,
        caption=title,
        css_class="ftkit-table ftkit-sweep",
        cell=cell,
        row_attrs=lambda row: {"data-status": row.get("status", "")},
    )


class Sweep:
    """A handle on one sweep; its runs are read live from the job store."""

    # How a sweep shows itself in a cell: the layer above (``ftkit/__init__``, with the panels)
    # registers a live table here, so this module knows no widgets.
    cell_view: ClassVar[Callable[[Sweep, dict[str, Any]], dict[str, Any] | None] | None] = None

    def __init__(self, record: dict[str, Any], client: Client):
        self.id: str = record["sweep_id"]
        self.record, self._client = record, client
        names = set(TrainConfig.field_names())
        self.runs: list[tuple[str, dict[str, Any]]] = []  # (job id, swept values); a record is data
        for run in _list(record.get("runs")):
            if isinstance(run, dict) and is_job_id(run.get("job_id")):
                values = _dict(run.get("values"))
                self.runs.append((run["job_id"], {k: v for k, v in values.items() if k in names}))
        swept = _dict(record.get("swept"))
        self.swept = [k for k in swept if k in names]

    @property
    def tag(self) -> str:
        return f"sweep:{self.id}"

    @property
    def jobs(self) -> list[Job]:
        return [Job(job_id, self._client) for job_id, _ in self.runs]

    def __repr__(self) -> str:
        return f"<ftkit.Sweep {self.id}: {self.record.get('mode')} over {', '.join(self.swept)}, {len(self.runs)} runs>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """In a notebook, a sweep shows a live table of its runs (None: the HTML below)."""
        view = type(self).cell_view
        return view(self, kwargs) if view is not None else None

    def _repr_html_(self) -> str:
        return self.status()._repr_html_()

    @property
    def title(self) -> str:
        mode = self.record.get("mode")
        seed = self.record.get("sample_seed")
        how = f"random (sample_seed {seed})" if mode == "random" else str(mode)
        return f"sweep {self.id}: {how} over {', '.join(self.swept)}, {len(self.runs)} runs"

    def summary(self) -> dict[str, Any]:
        created = self.record.get("created_at")
        dataset = _dict(self.record.get("dataset"))
        return {
            "sweep_id": self.id,
            "created_at": None
            if not isinstance(created, (int, float))
            else dt.datetime.fromtimestamp(created, dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": self.record.get("mode"),
            "swept": self.swept,
            "runs": len(self.runs),
            "dataset": dataset.get("name"),
            "tags": [t for t in _list(self.record.get("tags")) if isinstance(t, str)],
            "note": self.record.get("note"),
        }

    def _records(self) -> dict[str, JobRecord]:
        """Each run's job record (those that exist); a run whose worker died is reaped on sight, as
        Job.status does."""
        found = {}
        for job_id, _ in self.runs:
            try:
                record = self._client.store.get(job_id)
                if record["status"] in statuses.ACTIVE and self._client.reap_if_orphaned(record):
                    record = self._client.store.get(job_id)
            except JobNotFound:
                continue
            found[job_id] = record
        return found

    def status(self) -> RunTable:
        """One row per run: its swept values, status, step, and final (else latest) and eval loss."""
        records = self._records()
        rows = []
        for job_id, values in self.runs:
            record = records.get(job_id)
            row: dict[str, Any] = {"job_id": job_id, **values}
            if record is None:
                row.update(
                    status=MISSING, step=None, total_steps=None, final_loss=None, eval_loss=None
                )
            else:
                result = _dict(record.get("result"))
                row.update(
                    status=record.get("status"),
                    step=record.get("current_step") or 0,
                    total_steps=record.get("total_steps"),
                    final_loss=result.get("final_loss", record.get("loss")),
                    eval_loss=record.get("eval_loss"),
                )
            rows.append(row)
        columns = [
            "job_id",
            *self.swept,
            "status",
            "step",
            "total_steps",
            "final_loss",
            "eval_loss",
        ]
        return RunTable(rows, columns, self.title)

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool = True,
        poll: float = 1.0,
        raise_on_failure: bool = False,
    ) -> RunTable:
        """Block until every run has ended (a bar counts them); the final table."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watch, warned, bar = WorkerWatch(self._client), False, None
        try:
            while True:
                rows = self.status()
                ended = sum(r["status"] in (*statuses.FINAL, MISSING) for r in rows)
                if progress:
                    bar = _update_bar(bar, self.id, ended, len(rows))
                if ended == len(rows):
                    break
                if not warned and (message := watch.check()):
                    warnings.warn(f"sweep {self.id}: {message}", NoWorkerWarning, stacklevel=2)
                    warned = True
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"sweep {self.id}: {len(rows) - ended} of {len(rows)} runs still going "
                        f"after {timeout} s"
                    )
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()
        failed = [r["job_id"] for r in rows if r["status"] == statuses.FAILED]
        if raise_on_failure and failed:
            raise JobFailed(f"sweep {self.id}: {len(failed)} runs failed: {', '.join(failed)}")
        return rows

    def compare(self) -> Comparison:
        """The runs side by side (the values that differ, final metrics), their loss curves
        overlaid, and the best completed run named (by eval loss where measured, else final loss)."""
        records = self._records()
        ids = [job_id for job_id, _ in self.runs if job_id in records]
        return Comparison(
            [public_status(records[i]) for i in ids],
            [self._client.store.metrics(i) for i in ids],
        )

    def cancel(self) -> dict[str, str]:
        """Ask every run that has not ended to stop; each run's status after."""
        return {
            job_id: self._client.cancel(job_id)
            if r["status"] not in statuses.FINAL
            else r["status"]
            for job_id, r in self._records().items()
        }

    def delete(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Delete every run (as Job.delete does; ``force`` cancels running ones first), then the
        sweep's record; what was freed, per run. Nothing goes while a run is active without force."""
        from .errors import JobActive

        records = self._records()
        active = [i for i, r in records.items() if r["status"] not in statuses.FINAL]
        if active and not force:
            raise JobActive(
                f"sweep {self.id}: {len(active)} runs are queued or running ({', '.join(active)}): "
                "cancel the sweep first, or delete it with force=True"
            )
        freed = [self._client.delete(job_id, force=force) for job_id in records]
        self._client.store.delete_sweep(self.id)
        return freed


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _update_bar(bar, sweep_id: str, ended: int, total: int):
    from tqdm.auto import tqdm

    if bar is None:
        bar = tqdm(total=total, desc=f"sweep {sweep_id}", unit="run")
    bar.n = ended
    bar.refresh()
    return bar
