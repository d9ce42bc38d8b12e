"""Small inline-SVG figures that the report and the panels share: no plotting library in the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def loss_svg(metrics: Sequence[Mapping[str, Any]], width: int = 460, height: int = 160) -> str:
    """The loss curve (train, and eval where logged) as inline SVG: no plotting library in the client."""
    series = {
        "loss": [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None],
        "eval_loss": [
            (m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None
        ],
    }
    points = series["loss"] + series["eval_loss"]
    if not points:
        return "<i>the loss curve appears with the first logged step</i>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    pad = 30

    def xy(step: float, loss: float) -> str:
        x = pad + (step - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
        y = height - pad - (loss - y0) / ((y1 - y0) or 1) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for name, color in (("loss", "#1f77b4"), ("eval_loss", "#d62728")):
        if series[name]:
            pts = " ".join(xy(s, v) for s, v in series[name])
            lines.append(
                f"<polyline class='ftkit-{name}' fill='none' stroke='{color}' stroke-width='2' points='{pts}'/>"
            )
    return (
        f"<svg class='ftkit-loss' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
        f"<rect width='100%' height='100%' fill='white' stroke='#ddd'/>{''.join(lines)}"
        f"<text x='{pad}' y='14' font-size='11'>max {y1:.3f}</text>"
        f"<text x='{pad}' y='{height - 8}' font-size='11'>min {y0:.3f} · steps {x0}–{x1}</text></svg>"
    )
