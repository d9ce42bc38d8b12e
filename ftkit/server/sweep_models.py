"""The HTTP API's sweep bodies and answers: a grid or random sweep asked for, its runs, their
statuses and the best run (the job models are in models.py)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictFloat, StrictInt, field_validator

from ..config import TrainConfig
from ..sweep_plan import MAX_RUNS, MODES
from .models import DatasetChoice, JobId, RunOptions, TrainConfigIn

# -- sweeps --------------------------------------------------------------------------------------
Number = StrictInt | StrictFloat


class SweepRequest(DatasetChoice, RunOptions):
    """One data set trained over a grid (every combination of ``values``) or ``n`` random draws
    (from ``values`` and ``ranges``); ``config`` holds the values every run shares. Every run is
    checked before any is queued."""

    mode: Literal[MODES] = "grid"  # type: ignore[valid-type]
    values: dict[str, list[Any]] = Field(
        default_factory=dict,
        max_length=len(dataclasses.fields(TrainConfig)),
        description="TrainConfig fields, each with the values to sweep",
        examples=[{"learning_rate": [1e-4, 2e-4], "lora_r": [8, 16]}],
    )
    ranges: dict[str, tuple[Number, Number]] = Field(
        default_factory=dict,
        max_length=len(dataclasses.fields(TrainConfig)),
        description="mode=random: TrainConfig fields, each with its [low, high] (a learning "
        "rate is drawn log-uniform, an integer field whole)",
        examples=[{"learning_rate": [1e-5, 1e-3]}],
    )
    n: int | None = Field(
        default=None, ge=1, le=MAX_RUNS, strict=True, description="mode=random: how many runs"
    )
    sample_seed: int | None = Field(
        default=None, strict=True, description="mode=random: the same seed draws the same runs"
    )
    config: TrainConfigIn = Field(default_factory=TrainConfigIn)  # type: ignore[valid-type]

    @field_validator("values")
    @classmethod
    def _finite(cls, values: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """A swept value is any JSON value, so pydantic does not see a NaN or Infinity in it."""
        for name, given in values.items():
            if not all_finite(given):
                raise ValueError(f"{name}: NaN and Infinity are not values to train with")
        return values


def all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(map(all_finite, value))
    if isinstance(value, dict):
        return all(map(all_finite, value.values()))
    return True


class SweepRun(BaseModel):
    job_id: JobId
    values: dict[str, Any] = Field(description="this run's swept values")


class SweepCreated(BaseModel):
    sweep_id: JobId
    mode: str
    swept: list[str]
    sample_seed: int | None
    runs: list[SweepRun]
    message: str


class SweepSummary(BaseModel):
    sweep_id: JobId
    created_at: str | None
    mode: str | None
    swept: list[str]
    runs: int
    dataset: str | None
    tags: list[str]
    note: str | None


class SweepList(BaseModel):
    sweeps: list[SweepSummary]


class SweepRunStatus(SweepRun):
    status: str = Field(description="the job's status, or 'missing' when it was deleted")
    step: int | None
    total_steps: int | None
    final_loss: float | None
    eval_loss: float | None


class BestRun(BaseModel):
    job_id: JobId
    by: Literal["eval_loss", "final_loss"]
    value: float


class SweepDetail(SweepSummary):
    title: str
    sample_seed: int | None
    config: dict[str, Any] = Field(description="what every run shares")
    run_table: list[SweepRunStatus]
    best: BestRun | None = Field(
        description="the completed run with the lowest eval loss (else final training loss)"
    )


class SweepCancelled(BaseModel):
    sweep_id: JobId
    runs: dict[str, str] = Field(description="each run's status after the cancel")
    message: str
