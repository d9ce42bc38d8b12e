"""Sweeps: one data set trained over a grid, or random samples, of TrainConfig values.

Every run is checked before any is queued. The sweep is recorded in the job store beside its jobs
(each tagged ``sweep:<id>``), so it is found again after the notebook restarts, and followed,
compared and cancelled as one. It sits above the client and queues each run through it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import html
import itertools
import math
import os
import random
import secrets
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from .client import (
    Client,
    Dataset,
    Job,
    WorkerWatch,
    check_attempts,
    check_note,
    check_priority,
    check_tags,
    public_status,
    resolve_config,
)
from .config import TrainConfig
from .core import statuses
from .core.records import JobRecord
from .core.rules import is_job_id
from .errors import ConfigError, FtkitError, JobFailed, JobNotFound, NoWorkerWarning
from .report import Comparison

MODES = ("grid", "random")
MAX_RUNS = 256  # a typo in a grid should not queue a million jobs
LOG_SCALE = ("learning_rate",)  # sampled log-uniform: its order of magnitude is what matters
LIST_VALUED = ("sample_prompts",)  # a list is this field's value: a list of lists sweeps it
MISSING = "missing"  # a run whose job is gone (deleted), or was never queued


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# -- planning: which runs ----------------------------------------------------------------------------
def _kind(name: str) -> str:
    """How a range of this field is sampled: 'int', 'float', or '' (no range: choose from a list)."""
    kind = str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))
    return "" if "bool" in kind else "int" if "int" in kind else "float" if "float" in kind else ""


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def split_fields(
    mode: str, fields: dict[str, Any]
) -> tuple[dict[str, list[Any]], dict[str, tuple[float, float]], dict[str, Any]]:
    """(lists to choose from, ranges to sample, fixed values), each named field once."""
    names = TrainConfig.field_names()
    choices: dict[str, list[Any]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    fixed: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in names:
            TrainConfig.from_dict({name: value})  # the unknown-key error, with the closest name
        if isinstance(value, tuple):
            if mode != "random":
                raise ConfigError(
                    f"{name}={value!r} is a range: ranges are sampled with mode='random', n=...; "
                    f"a grid takes a list of values, e.g. {name}=[{', '.join(map(repr, value))}]",
                    field=name,
                )
            ranges[name] = _check_range(name, value)
        elif isinstance(value, list) and (
            name not in LIST_VALUED or (value and all(isinstance(v, list) for v in value))
        ):
            if not value:
                raise ConfigError(f"{name}=[]: give at least one value", field=name)
            if len({repr(v) for v in value}) < len(value):
                raise ConfigError(f"{name}={value!r} lists a value twice", field=name)
            choices[name] = value
        else:
            fixed[name] = value
    if not choices and not ranges:
        raise ConfigError(
            "a sweep needs at least one field with several values: a list (a grid, e.g. "
            "learning_rate=[1e-4, 2e-4]) or a range with mode='random' (learning_rate=(1e-5, 1e-3))"
        )
    return choices, ranges, fixed


def _check_range(name: str, value: tuple) -> tuple[float, float]:
    kind = _kind(name)
    if not kind:
        raise ConfigError(
            f"{name}={value!r}: a range is for a numeric field; give a list of values to choose "
            f"from, e.g. {name}=[...]",
            field=name,
        )
    number = int if kind == "int" else (int, float)
    if (
        len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, number) for v in value)
        or any(isinstance(v, float) and not math.isfinite(v) for v in value)
    ):
        what = "two whole numbers" if kind == "int" else "two numbers"
        raise ConfigError(f"{name}={value!r}: a range is (low, high), {what}", field=name)
    low, high = value
    if not low < high:
        raise ConfigError(
            f"{name}={value!r}: a range's low end must be below its high end", field=name
        )
    for end, at in (("low", low), ("high", high)):
        try:
            TrainConfig.from_dict({name: at})  # every draw lies between two valid ends
        except ConfigError as exc:
            raise ConfigError(f"{name}={value!r}: its {end} end: {exc}", field=name) from None
    return low, high


def grid(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the listed values, in the order the fields were given."""
    count = math.prod(len(v) for v in choices.values())
    if count > MAX_RUNS:
        raise ConfigError(f"the grid has {count} runs: at most {MAX_RUNS} in one sweep")
    return [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]


def sample(
    choices: dict[str, list[Any]], ranges: dict[str, tuple[float, float]], n: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` draws: a list is a choice, a range is uniform (log-uniform for a learning rate; whole
    numbers for an integer field). Fields are drawn in name order, so the same seed gives the same
    runs whatever order the fields were given in."""
    rng = random.Random(seed)
    order = list(choices) + list(ranges)
    runs = []
    for _ in range(n):
        drawn: dict[str, Any] = {}
        for name in sorted(order):
            if name in choices:
                drawn[name] = rng.choice(choices[name])
                continue
            low, high = ranges[name]
            if _kind(name) == "int":
                drawn[name] = rng.randint(int(low), int(high))
                continue
            if name in LOG_SCALE and low > 0:
                x = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                x = rng.uniform(low, high)
            drawn[name] = min(max(float(f"{x:.4g}"), low), high)  # readable, still in range
        runs.append({name: drawn[name] for name in order})
    return runs


def plan(
    mode: str, fields: dict[str, Any], n: int | None, sample_seed: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], int | None]:
    """(each run's swept values, the spec to record, the fixed values, the seed drawn with)."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: one of {', '.join(MODES)}", field="mode")
    if mode == "grid" and (n is not None or sample_seed is not None):
        raise ConfigError(
            "n and sample_seed are for mode='random'; a grid runs every combination", field="n"
        )
    choices, ranges, fixed = split_fields(mode, fields)
    spec: dict[str, Any] = {name: {"values": values} for name, values in choices.items()}
    if mode == "grid":
        return grid(choices), spec, fixed, None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RUNS:
        raise ConfigError(
            f"n={n!r}: mode='random' needs the number of runs, from 1 to {MAX_RUNS}", field="n"
        )
    if sample_seed is None:
        sample_seed = secrets.randbelow(2**32)  # recorded: the draw can be made again
    elif isinstance(sample_seed, bool) or not isinstance(sample_seed, int):
        raise ConfigError(f"sample_seed={sample_seed!r}: must be an integer", field="sample_seed")
    for name, (low, high) in ranges.items():
        scale = "int" if _kind(name) == "int" else "log" if name in LOG_SCALE else "linear"
        spec[name] = {"range": [low, high], "scale": scale}
    return sample(choices, ranges, n, sample_seed), spec, fixed, sample_seed


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
    runs, spec, fixed, sample_seed = plan(mode, fields, n, sample_seed)
    user_tags, note = check_tags(tags), check_note(note)
    sweep_id = new_id()
    try:
        run_tags = check_tags([*user_tags, f"sweep:{sweep_id}"])
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (each run also carries its sweep:<id> tag)", field="tags"
        ) from None
    check_priority(priority)
    check_attempts(client.settings.max_attempts if max_attempts is None else max_attempts)
    for name, value in fixed.items():  # a fixed value's error is not one run's fault
        resolve_config(config, {name: value})
    configs = []
    for i, values in enumerate(runs):
        try:
            configs.append(client.check_config(config, **fixed, **values))
        except ConfigError as exc:
            raise ConfigError(
                f"run {i + 1} of {len(runs)} ({_describe(values)}): {exc}", field=exc.field
            ) from None
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
    queued: list[str] = []
    try:
        for run, cfg in zip(record["runs"], configs):
            client.submit(
                ds,
                cfg,
                job_id=run["job_id"],
                tags=run_tags,
                note=note,
                priority=priority,
                max_attempts=max_attempts,
            )
            queued.append(run["job_id"])
    except BaseException as exc:
        undone = _roll_back(client, record, queued)
        add_note = getattr(exc, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(undone)
        raise
    return Sweep(record, client)


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
    head = "".join(
        f"<th style='text-align:left;padding:2px 8px'>{html.escape(c)}</th>" for c in columns
    )
    body = "".join(
        f"<tr data-status='{html.escape(str(r.get('status', '')))}'>"
        + "".join(
            f"<td style='padding:2px 8px'>{html.escape(cell(c, r.get(c)))}</td>" for c in columns
        )
        + "</tr>"
        for r in rows
    )
    caption = f"<caption style='text-align:left'>{html.escape(title)}</caption>" if title else ""
    return (
        f"<table class='ftkit-table ftkit-sweep'>{caption}<thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
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
