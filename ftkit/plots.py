"""Small inline-SVG figures that the report and the panels share: no plotting library in the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# TRL's preference metrics (DPO, ORPO, KTO) that the panels, the web page and compare() show: how
# far the chosen answer's reward is above the rejected one's, and how often it is above at all.
PREFERENCE_METRICS = ("rewards/margins", "rewards/accuracies")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def series(metrics: Sequence[Mapping[str, Any]], name: str) -> list[tuple[float, float]]:
    """(step, value) of one metric, in the order logged; rows without it (or garbled) left out."""
    return [
        (m["step"], m[name]) for m in metrics if _number(m.get("step")) and _number(m.get(name))
    ]


def latest(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The last logged value of each preference metric a job logged (none for an SFT job)."""
    found = {}
    for name in PREFERENCE_METRICS:
        points = series(metrics, name)
        if points:
            found[name] = points[-1][1]
    return found


def preference_line(metrics: Sequence[Mapping[str, Any]]) -> str:
    """'margin 0.412 · accuracy 0.75' from the last logged values; '' before any is logged."""
    last = latest(metrics)
    parts = [
        f"{label} {last[name]:.3f}"
        for name, label in zip(PREFERENCE_METRICS, ("margin", "accuracy"))
        if name in last
    ]
    return " · ".join(parts)


def curves_svg(
    metrics: Sequence[Mapping[str, Any]],
    lines: Sequence[tuple[str, str]],
    *,
    width: int = 460,
    height: int = 160,
    css_class: str = "ftkit-loss",
    empty: str = "",
    title: str = "",
) -> str:
    """Metrics over steps as inline SVG: one polyline per (metric name, colour) logged, on shared
    axes; ``empty`` where none of them was logged yet."""
    drawn = {name: series(metrics, name) for name, _ in lines}
    points = [p for pts in drawn.values() for p in pts]
    if not points:
        return empty
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    pad = 30

    def xy(step: float, value: float) -> str:
        x = pad + (step - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
        y = height - pad - (value - y0) / ((y1 - y0) or 1) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    polylines = []
    for name, color in lines:
        if drawn[name]:
            pts = " ".join(xy(s, v) for s, v in drawn[name])
            polylines.append(
                f"<polyline class='ftkit-{name.replace('/', '-')}' fill='none' stroke='{color}' "
                f"stroke-width='2' points='{pts}'/>"
            )
    label = f"<text x='{width - pad}' y='14' font-size='11' text-anchor='end'>{title}</text>"
    return (
        f"<svg class='{css_class}' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
        f"<rect width='100%' height='100%' fill='white' stroke='#ddd'/>{''.join(polylines)}"
        f"{label if title else ''}<text x='{pad}' y='14' font-size='11'>max {y1:.3f}</text>"
        f"<text x='{pad}' y='{height - 8}' font-size='11'>min {y0:.3f} · steps {x0}–{x1}</text></svg>"
    )


def loss_svg(metrics: Sequence[Mapping[str, Any]], width: int = 460, height: int = 160) -> str:
    """The loss curve (train, and eval where logged) as inline SVG: no plotting library in the client."""
    return curves_svg(
        metrics,
        (("loss", "#1f77b4"), ("eval_loss", "#d62728")),
        width=width,
        height=height,
        empty="<i>the loss curve appears with the first logged step</i>",
    )


def margins_svg(metrics: Sequence[Mapping[str, Any]], width: int = 460, height: int = 160) -> str:
    """A preference job's rewards/margins curve (chosen minus rejected reward, rising as the
    preference is learned), and eval_rewards/margins where evaluated; '' for an SFT job."""
    return curves_svg(
        metrics,
        (("rewards/margins", "#2ca02c"), ("eval_rewards/margins", "#9467bd")),
        width=width,
        height=height,
        css_class="ftkit-margins",
        title="rewards/margins",
    )
