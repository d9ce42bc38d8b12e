"""A sweep's plan: which runs it makes. A grid takes every combination of listed values; a random
sweep draws ``n`` runs from lists and ``(low, high)`` ranges, reproducibly from its seed. Each
named field is checked against TrainConfig here, before any client is involved.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import secrets
from typing import Any

from .config import METHOD_SETTINGS, TrainConfig
from .errors import ConfigError

MODES = ("grid", "random")
MAX_RUNS = 256  # a typo in a grid should not queue a million jobs
# sampled log-uniform: their order of magnitude is what matters
LOG_SCALE = ("learning_rate", "beta")
LIST_VALUED = ("sample_prompts", "report_to")  # a list is the value: a list of lists sweeps it


def _kind(name: str) -> str:
    """How a range of this field is sampled: 'int', 'float', or '' (no range: choose from a list)."""
    kind = str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))
    return "" if "bool" in kind else "int" if "int" in kind else "float" if "float" in kind else ""


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
    # a method's setting is checked as its method takes it; whether the sweep's method takes it
    # at all is check_methods' question
    taker = {"method": METHOD_SETTINGS[name][0]} if name in METHOD_SETTINGS else {}
    for end, at in (("low", low), ("high", high)):
        try:
            TrainConfig.from_dict({**taker, name: at})  # every draw lies between two valid ends
        except ConfigError as exc:
            raise ConfigError(f"{name}={value!r}: its {end} end: {exc}", field=name) from None
    return low, high


def check_methods(fields: dict[str, Any], method: Any = "sft") -> None:
    """A method's setting (swept or fixed) in a sweep where some run uses a method that does not
    take it is refused before any run is drawn, with TrainConfig's message. ``method``: the
    configuration's, where ``fields`` does not set it; a list of methods sweeps it."""
    given = fields.get("method", method)
    for one_method in given if isinstance(given, list) else [given]:
        for name, takers in METHOD_SETTINGS.items():
            value = fields.get(name)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            example = next((v for v in values if v is not None), None)
            if example is not None and one_method not in takers:
                TrainConfig.from_dict({"method": one_method, name: example})


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
    mode: str,
    fields: dict[str, Any],
    n: int | None,
    sample_seed: int | None,
    *,
    method: Any = "sft",
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], int | None]:
    """(each run's swept values, the spec to record, the fixed values, the seed drawn with).
    ``method``: the base configuration's, where ``fields`` does not set one."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: one of {', '.join(MODES)}", field="mode")
    if mode == "grid" and (n is not None or sample_seed is not None):
        raise ConfigError(
            "n and sample_seed are for mode='random'; a grid runs every combination", field="n"
        )
    choices, ranges, fixed = split_fields(mode, fields)
    check_methods(fields, method)
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
