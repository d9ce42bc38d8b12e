"""Sweeps: POST /sweep, GET /sweeps, GET /sweep/{id}, DELETE /sweep/{id} (cancel). Each is one
call on ftkit.sweeping; a sweep's runs are ordinary jobs (tagged ``sweep:<id>``) for the routes
of jobs."""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from ...client import Client
from ...config import TrainConfig
from ...core import statuses
from ...core.rules import JOB_ID, TAG
from ...errors import ConfigError, JobExists
from ...report import best_row
from ...sweeping import MISSING, create, get, recent
from .. import errors
from ..deps import get_client
from ..models import ErrorResponse
from ..sweep_models import (
    BestRun,
    SweepCancelled,
    SweepCreated,
    SweepDetail,
    SweepList,
    SweepRequest,
    SweepRun,
    SweepRunStatus,
    SweepSummary,
)
from .jobs import pick_dataset

router = APIRouter(tags=["sweeps"])
SweepIdPath = PathParam(pattern=JOB_ID.pattern, description="12 hex digits")
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no sweep with this id"}
}
OUTSIDE_CONFIG = ("mode", "n", "sample_seed", "tags", "note", "priority", "max_attempts")


@router.post(
    "/sweep",
    response_model=SweepCreated,
    responses={
        404: {"model": ErrorResponse, "description": "no such uploaded data set"},
        422: {"model": ErrorResponse, "description": "an invalid field (or run), named in loc"},
    },
)
def create_sweep(req: SweepRequest, client: Client = Depends(get_client)) -> SweepCreated:
    """Queue one run per combination of ``values`` (mode=grid), or ``n`` runs drawn from
    ``values`` and ``ranges`` (mode=random). Every run is checked first: one bad run is a 422
    naming its field and its values, and nothing is queued."""
    dataset = pick_dataset(client, req)
    config = cast(BaseModel, req.config).model_dump(exclude_unset=True)
    try:
        fields = swept_fields(req, config)
        sweep = create(
            client,
            dataset,
            config,
            mode=req.mode,
            n=req.n,
            sample_seed=req.sample_seed,
            tags=req.tags,
            note=req.note,
            priority=req.priority,
            max_attempts=req.max_attempts,
            **fields,
        )
    except ConfigError as exc:
        if isinstance(exc, JobExists):
            raise
        where = located(errors.field_of(exc), req, config)
        raise RequestValidationError(
            [{"loc": where, "msg": errors.message(exc), "type": "value_error"}]
        ) from exc
    return SweepCreated(
        sweep_id=sweep.id,
        mode=req.mode,
        swept=sweep.swept,
        sample_seed=sweep.record.get("sample_seed"),
        runs=[SweepRun(job_id=job_id, values=values) for job_id, values in sweep.runs],
        message=f"{sweep.title} queued on {dataset.name}; its runs carry the tag {sweep.tag}",
    )


def swept_fields(req: SweepRequest, config: dict[str, Any]) -> dict[str, Any]:
    """The keyword fields ftkit.sweep takes: a list is swept, a (low, high) tuple is a range.
    Each name is a TrainConfig field, named once."""
    names = TrainConfig.field_names()
    for name in (*req.values, *req.ranges):
        if name not in names:
            TrainConfig.from_dict({name: None})  # the unknown-key error, with the closest name
        if name in config:
            raise ConfigError(
                f"{name} is fixed in config and swept too: give it in one place", field=name
            )
    both = sorted(set(req.values) & set(req.ranges))
    if both:
        raise ConfigError(f"{both[0]} is in values and in ranges: give it in one", field=both[0])
    return {
        **{name: list(values) for name, values in req.values.items()},
        **{name: tuple(ends) for name, ends in req.ranges.items()},
    }


def located(field: str | None, req: SweepRequest, config: dict[str, Any]) -> list[str]:
    """Where in the request body a refused field was given."""
    if field is None:
        return ["body"]
    if field in OUTSIDE_CONFIG:
        return ["body", field]
    for part, given in (("values", req.values), ("ranges", req.ranges), ("config", config)):
        if field in given:
            return ["body", part, field]
    return ["body", "config", field]


@router.get("/sweeps", response_model=SweepList)
def list_sweeps(
    tag: str | None = Query(default=None, pattern=TAG.pattern, description="only with this tag"),
    limit: int = Query(default=20, ge=1, le=200),
    client: Client = Depends(get_client),
) -> SweepList:
    """Sweeps newest first: what each swept, how many runs, its data set, tags and note."""
    return SweepList(sweeps=[summary(row) for row in recent(client, limit, tag=tag)])


@router.get("/sweep/{sweep_id}", response_model=SweepDetail, responses=NOT_FOUND)
def sweep_detail(sweep_id: str = SweepIdPath, client: Client = Depends(get_client)) -> SweepDetail:
    """One sweep: a row per run (its swept values, status, step, final and eval loss) and the
    best completed run so far. Each run is also a job: GET /status/{job_id}."""
    sweep = get(client, sweep_id)
    rows = [run_row(row, values) for row, (_, values) in zip(sweep.status(), sweep.runs)]
    config = sweep.record.get("config")
    return SweepDetail(
        **summary(sweep.summary()).model_dump(),
        title=sweep.title,
        sample_seed=_whole(sweep.record.get("sample_seed")),
        config=config if isinstance(config, dict) else {},
        run_table=rows,
        best=best_run(rows),
    )


@router.delete("/sweep/{sweep_id}", response_model=SweepCancelled, responses=NOT_FOUND)
def cancel_sweep(
    sweep_id: str = SweepIdPath, client: Client = Depends(get_client)
) -> SweepCancelled:
    """Ask every run that has not ended to stop (a queued one at once, a running one at its next
    step); each run's status after. The sweep and its runs stay, to compare."""
    sweep = get(client, sweep_id)
    asked = sum(row["status"] not in (*statuses.FINAL, MISSING) for row in sweep.status())
    after = sweep.cancel()
    return SweepCancelled(
        sweep_id=sweep.id,
        runs=after,
        message=f"cancel asked of {asked} of {len(sweep.runs)} runs; the others had ended",
    )


# -- a sweep's record is data: only well-formed values reach a response ---------------------------
def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summary(row: dict[str, Any]) -> SweepSummary:
    return SweepSummary(
        sweep_id=row["sweep_id"],
        created_at=row["created_at"],
        mode=_text(row["mode"]),
        swept=row["swept"],
        runs=row["runs"],
        dataset=_text(row["dataset"]),
        tags=row["tags"],
        note=_text(row["note"]),
    )


def best_run(rows: list[SweepRunStatus]) -> BestRun | None:
    """As Sweep.compare names it: the lowest eval loss where measured, else final loss."""
    best, by = best_row([r.model_dump() for r in rows])
    if best is None or by is None:
        return None
    return BestRun(job_id=best["job_id"], by=cast(Any, by), value=best[by])


def run_row(row: dict[str, Any], values: dict[str, Any]) -> SweepRunStatus:
    status = row.get("status")
    return SweepRunStatus(
        job_id=row["job_id"],
        values=values,
        status=status if isinstance(status, str) else MISSING,
        step=_whole(row.get("step")),
        total_steps=_whole(row.get("total_steps")),
        final_loss=_number(row.get("final_loss")),
        eval_loss=_number(row.get("eval_loss")),
    )
