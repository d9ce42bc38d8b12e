"""The executed notebook as a report people keep: its header filled in when the job ends, rendered
to HTML (readable with no ftkit installed), and compared across jobs."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .core import statuses
from .core.html import Markup, esc, key_values, table

TEMPLATE = Path(__file__).parent / "templates" / "train_template.ipynb"


@functools.cache  # the template does not change under a running worker: one git call, not one per job
def template_version() -> str:
    """ftkit's version, the template's content hash, and its git commit where it lives in a checkout."""
    from ._version import __version__

    digest = hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()[:12]
    try:
        commit = subprocess.run(
            [
                "git",
                "-C",
                str(TEMPLATE.resolve().parent),
                "log",
                "-1",
                "--format=%h",
                "--",
                TEMPLATE.resolve().name,
            ],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"ftkit {__version__}, template sha256 {digest}" + (f", git {commit}" if commit else "")


def _when(ts: float | None) -> str:
    return (
        ""
        if ts is None
        else dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    )


def header_html(record: dict[str, Any]) -> str:
    started, finished = record.get("started_at"), record.get("finished_at")
    status = record.get("status", "")
    color = {
        statuses.COMPLETED: "green",
        statuses.FAILED: "crimson",
        statuses.CANCELLED: "darkorange",
    }.get(status, "gray")
    rows = {
        "job": record.get("job_id"),
        "status": status,
        "error": record.get("error") or "",
        "submitted by": record.get("submitted_by"),
        "submitted": _when(record.get("created_at")),
        "started": _when(started),
        "finished": _when(finished),
        "duration": f"{finished - started:.1f} s" if started and finished else "",
        "attempt": record.get("attempt"),
        "worker": record.get("worker") or record.get("host"),
        "data set": (record.get("dataset") or {}).get("name"),
        "base model": (record.get("config") or {}).get("base_model"),
        "method": (record.get("config") or {}).get("method") or "sft",
        "tags": " ".join(str(t) for t in record.get("tags") or []),
        "note": record.get("note"),
        "version": template_version(),
    }
    shown: dict[str, Any] = {k: v for k, v in rows.items() if v not in (None, "")}
    shown.update(lineage_facts(record))
    return (
        f"<div class='ftkit-header'><h2 style='color:{color}'>{esc(status.upper())}</h2>"
        f"{key_values(shown)}</div>"
    )


def _job_link(job: Any) -> Markup | None:
    """A link to another job's report, for a well-formed job id only (the record is untrusted).
    Reports lie side by side in storage (runs/<job_id>/report.html): a relative link."""
    if isinstance(job, str) and len(job) == 12 and all(c in "0123456789abcdef" for c in job):
        return Markup(f"<a href='../{job}/report.html'>{job}</a>")
    return None


def lineage_facts(record: Mapping[str, Any]) -> dict[str, Markup]:
    """The rows naming the job this one continues (and from what it started) and the job it
    retries, each linked to its report."""
    rows: dict[str, Markup] = {}
    parent = _job_link(record.get("resume_from"))
    if parent:
        started = record.get("started_from")
        if started == "adapter":
            how = f"continued from job {parent}'s adapter (no checkpoint kept: fresh optimizer)"
        elif isinstance(started, str) and re.fullmatch(r"checkpoint-\d{1,9}", started):
            how = f"{parent}: resumed from {started} (adapter, optimizer state and step)"
        else:
            how = parent
        rows["continues job"] = Markup(how)  # built of a checked link and a checked name
    retried = _job_link(record.get("retry_of"))
    if retried:
        rows["retry of"] = retried
    return rows


def finalize_report(path: Path, record: dict[str, Any]):
    """Fill the header cell with the run summary (in place); the notebook, to render as HTML."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "header" in cell.get("metadata", {}).get("tags", []):
            cell.outputs = [
                nbformat.v4.new_output(
                    "display_data",
                    data={
                        "text/html": header_html(record),
                        "text/plain": f"ftkit job {record.get('job_id')}: {record.get('status')}",
                    },
                )
            ]
    nbformat.write(nb, path)
    return nb


_render_lock = threading.Lock()


# JupyterLab's template, without the scripts it loads from CDNs (require.js, MathJax, Mermaid,
# the widget manager): a report is served sandboxed, where they could not run, and a page of this
# server loads nothing from outside it. Math shows as its TeX source.
REPORT_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


@functools.cache
def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    find_pip_target_templates()
    return HTMLExporter(
        template_name="lab",
        template_file="ftkit_report.html.j2",
        extra_loaders=[DictLoader({"ftkit_report.html.j2": REPORT_TEMPLATE})],
    )


def find_pip_target_templates() -> list[str]:
    """nbconvert's templates wherever pip put them. Jupyter looks under its prefixes'
    share/jupyter; ``pip install --target DIR`` (wheels carried to a machine without network)
    puts them under DIR/share/jupyter, beside the packages, where it does not look: such folders
    join JUPYTER_PATH (for this process and the kernels it starts). The folders added."""
    import os
    import sys

    found = [
        str(share)
        for entry in dict.fromkeys(sys.path)
        if (share := Path(entry or ".") / "share" / "jupyter")
        .joinpath("nbconvert", "templates", "lab")
        .is_dir()
    ]
    known = os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
    added = [f for f in found if f not in known]
    if added:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([*added, *filter(None, known)])
    return added


def render_html(nb) -> str:
    """A notebook as one HTML page, with an exporter made once per process (its templates loaded
    once)."""
    with _render_lock:
        body, _ = _exporter().from_notebook_node(nb)
    return body


def warm_up() -> None:
    """Render the template once, with outputs of each kind a report holds (an HTML table, a PNG, a
    stream), so the first job's report does not pay for loading templates, the Markdown parser and
    the code highlighter (about a second)."""
    import base64

    import nbformat

    nb = nbformat.read(TEMPLATE, as_version=4)
    nb.metadata["language_info"] = {  # as an IPython kernel records it: the IPython lexer
        "name": "python",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
    }
    png = base64.b64encode(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
        )
    ).decode()
    cell = next(c for c in nb.cells if c.cell_type == "code")  # every cell's code is highlighted
    cell.execution_count = 1
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", data={"text/html": "<table><tr><th>a</th><td>1</td></tr></table>"}
        ),
        nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "figure"}),
        nbformat.v4.new_output("stream", name="stdout", text="step 1/1 loss=1.0\n"),
    ]
    nbformat.writes(nb)  # the validator, compiled on first use
    render_html(nb)
    template_version()


class Comparison:
    """Finished jobs side by side: what differs in their configuration, their final metrics, and
    their loss curves overlaid. Shows itself in a notebook; ``rows`` holds the table as data."""

    METRICS = ("status", "final_loss", "eval_loss", "global_step", "training_duration_seconds")

    def __init__(
        self, statuses: Sequence[Mapping[str, Any]], metrics: Sequence[Sequence[Mapping[str, Any]]]
    ):
        from .plots import PREFERENCE_METRICS, latest

        self.statuses, self.metrics = statuses, metrics
        # a record from before methods were named trained with SFT
        configs = [{"method": "sft", **(s.get("config") or {})} for s in statuses]
        keys = sorted({k for c in configs for k in c})
        self.differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
        finals = [latest(m) for m in metrics]
        # TRL's preference metrics, final values, where any of the jobs logged them
        self.preference = [name for name in PREFERENCE_METRICS if any(name in f for f in finals)]
        methods = {c["method"] for c in configs}
        # the method is named when it differs (a differing field) or when it is not plain SFT
        self.keys = [*(["method"] if methods != {"sft"} and "method" not in self.differing else [])]
        self.rows = []
        for s, config, final in zip(statuses, configs, finals):
            result = s.get("result") or {}
            row = {
                "job_id": s["job_id"],
                "status": s["status"],
                "final_loss": result.get("final_loss", s.get("loss")),
                "eval_loss": s.get("eval_loss"),
                "global_step": result.get("global_step"),
                "training_duration_seconds": result.get("training_duration_seconds"),
                "method": config["method"],
                **{name: final.get(name) for name in self.preference},
            }
            row.update({k: config.get(k) for k in self.differing})
            self.rows.append(row)
        self.best, self.best_by = best_row(self.rows)

    def _repr_html_(self) -> str:
        from .plots import loss_svg, margins_svg

        columns = ["job_id", *self.keys, *self.differing, *self.METRICS, *self.preference]
        curves = "".join(
            f"<div style='display:inline-block;margin:4px'><small>{esc(s['job_id'])}</small><br>"
            f"{loss_svg(m, width=300, height=120)}{margins_svg(m, width=300, height=120)}</div>"
            for s, m in zip(self.statuses, self.metrics)
        )
        names = [s["job_id"] for s in self.statuses]
        overlay = overlay_svg(names, self.metrics)
        if self.preference:
            overlay += overlay_svg(names, self.metrics, key="rewards/margins")
        best = ""
        if self.best is not None and self.best_by is not None:
            values = ", ".join(f"{k}={self.best.get(k)!r}" for k in self.differing)
            best = (
                f"<p class='ftkit-best'>best: <b>{esc(self.best['job_id'])}</b> "
                f"({self.best_by} {self.best[self.best_by]:.4f}"
                f"{esc(', ' + values if values else '')})</p>"
            )
        return (
            f"<div class='ftkit-compare'>{best}{table(self.rows, columns)}{overlay}<details><summary>each curve"
            f"</summary>{curves}</details></div>"
        )


def best_row(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """The completed run with the lowest eval loss where any completed run measured one (held-out
    data says more than the training loss), else the lowest final training loss; and which."""
    done = [r for r in rows if r.get("status") == statuses.COMPLETED]
    for key in ("eval_loss", "final_loss"):
        measured = [r for r in done if isinstance(r.get(key), (int, float))]
        if measured:
            return min(measured, key=lambda r: r[key]), key
    return None, None


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def overlay_svg(
    names: Sequence[str],
    metrics: Sequence[Sequence[Mapping[str, Any]]],
    width: int = 560,
    height: int = 220,
    key: str = "loss",
) -> str:
    """One metric's curves (the loss, or e.g. ``rewards/margins``) of several jobs on shared axes,
    as inline SVG with a legend."""
    from .plots import series as points_of

    series = [points_of(ms, key) for ms in metrics]
    points = [p for s in series for p in s]
    if not points:
        return f"<i>no {esc(key)} logged yet</i>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    pad = 34
    lines, legend = [], []
    for i, (name, s) in enumerate(zip(names, series)):
        color = COLORS[i % len(COLORS)]
        pts = " ".join(
            f"{pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad):.1f},"
            f"{height - pad - (y - y0) / ((y1 - y0) or 1) * (height - 2 * pad):.1f}"
            for x, y in s
        )
        lines.append(
            f"<polyline class='ftkit-compare-{esc(key.replace('/', '-'))}' fill='none' "
            f"stroke='{color}' stroke-width='2' points='{pts}'/>"
        )
        legend.append(
            f"<text x='{width - 150}' y='{16 + 14 * i}' font-size='11' fill='{color}'>{esc(name)}</text>"
        )
    return (
        f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'><rect width='100%' height='100%' "
        f"fill='white' stroke='#ddd'/>{''.join(lines)}{''.join(legend)}<text x='{pad}' y='{height - 10}' "
        f"font-size='11'>{esc(key)} {y0:.3f}–{y1:.3f}, steps {x0}–{x1}</text></svg>"
    )
