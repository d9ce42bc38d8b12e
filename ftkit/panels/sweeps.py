"""A sweep's live table, and the runs panel: recent jobs and sweeps, filtered by tag; compare,
retry or delete the selected runs. A refresh reads what it shows and assigns only what changed.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from ..client import Client, Job
from ..core.html import esc, table
from ..core.statuses import FINAL
from ..errors import ConfigError, FtkitError
from ..report import Comparison, best_row, overlay_svg
from ..sweeping import MISSING, Sweep, recent, table_html
from .common import JOB_COLUMNS, LiveView, Refresher, job_row, on_close, set_html


class SweepView(LiveView):
    """One sweep, live: a row per run (its values, status, step, losses), the loss curves overlaid,
    the best completed run so far, and a cancel for the whole sweep. Stops when every run ended."""

    def __init__(self, sweep: Sweep, *, interval: float = 2.0, autostart: bool = True):
        self.sweep = sweep
        self.title = w.HTML(f"<b>{esc(sweep.title)}</b>")
        self.table = w.HTML()
        self.best = w.HTML()
        self.curves = w.HTML()
        self.cancel_button = w.Button(
            description="Cancel sweep", icon="stop", button_style="warning"
        )
        self.cancel_button.on_click(lambda _: self.cancel())
        self.widget = w.VBox(
            [self.title, self.table, self.best, self.curves, self.cancel_button],
            layout=w.Layout(border="1px solid #ddd", padding="8px"),
        )
        self.widget.add_class("ftkit-sweep-view")
        self._jobs = list({job.id: job for job in sweep.jobs}.values())  # a record is data
        self._metrics: dict[str, list[dict[str, Any]]] = {job.id: [] for job in self._jobs}
        self.done = False
        self._refresher = Refresher(self.refresh, interval)
        on_close(self.widget, self._refresher.stop)
        self.refresh()
        if autostart and not self.done:
            self._refresher.start()

    def refresh(self) -> bool:
        """Read each run's record and its new metric rows; True once every run has ended."""
        rows = self.sweep.status()
        for job in self._jobs:
            seen = self._metrics[job.id]
            seen += job.metrics(start=len(seen))
        set_html(self.table, table_html(rows, rows.columns))
        set_html(self.curves, overlay_svg(list(self._metrics), list(self._metrics.values())))
        best, by = best_row(rows)
        set_html(
            self.best,
            ""
            if best is None or by is None
            else f"<span class='ftkit-best'>best so far: <b>{esc(best['job_id'])}</b> "
            f"({by} {best[by]:.4f})</span>",
        )
        self.done = all(r["status"] in (*FINAL, MISSING) for r in rows)
        self.cancel_button.disabled = self.done
        return self.done

    def cancel(self) -> None:
        self.sweep.cancel()
        self.refresh()

    def stop(self) -> None:
        self._refresher.stop()


SWEEP_COLUMNS = ["sweep_id", "created_at", "mode", "swept", "runs", "dataset", "tags"]


class RunsPanel(LiveView):
    """Recent jobs and sweeps. Filter by tag, or narrow to one sweep's runs; select runs to compare
    (two or more, curves overlaid), retry (failed or cancelled ones) or delete (after a confirm)."""

    def __init__(
        self, client: Client, *, interval: float = 5.0, limit: int = 50, autostart: bool = True
    ):
        self.client, self.limit = client, limit
        self._refreshing = False  # a refresh that sets the sweep choices starts no other
        self.tag = w.Text(value="", description="tag", placeholder="any", continuous_update=False)
        self.tag.observe(lambda _: self.refresh(), names="value")
        self.sweep = w.Dropdown(options=[("all jobs", "")], value="", description="sweep")
        self.sweep.observe(lambda _: self._refreshing or self.refresh(), names="value")
        self.sweeps = w.HTML()
        self.jobs = w.HTML()
        self.select = w.SelectMultiple(
            options=[], rows=8, description="select", layout=w.Layout(width="560px")
        )
        self.select.observe(lambda _: self._update_buttons(), names="value")
        self.compare_button = w.Button(description="Compare", icon="line-chart")
        self.compare_button.on_click(lambda _: self.compare())
        self.retry_button = w.Button(description="Retry", icon="repeat")
        self.retry_button.on_click(lambda _: self.retry())
        self.delete_button = w.Button(description="Delete", icon="trash", button_style="danger")
        self.delete_button.on_click(lambda _: self.ask_delete())
        self.confirm_text = w.HTML()
        self.confirm_button = w.Button(description="Yes, delete", button_style="danger")
        self.confirm_button.on_click(lambda _: self.confirm_delete())
        self.keep_button = w.Button(description="Keep them")
        self.keep_button.on_click(lambda _: self.keep())
        self.confirm = w.HBox(
            [self.confirm_text, self.confirm_button, self.keep_button],
            layout=w.Layout(display="none"),
        )
        self.confirm.add_class("ftkit-confirm")
        self.message = w.HTML()
        self.comparison = w.HTML()
        self.widget = w.VBox(
            [
                w.HTML("<h3>ftkit runs</h3>"),
                w.HBox([self.tag, self.sweep]),
                w.HTML("<b>Sweeps</b>"),
                self.sweeps,
                w.HTML("<b>Jobs</b>"),
                self.jobs,
                self.select,
                w.HBox([self.compare_button, self.retry_button, self.delete_button]),
                self.confirm,
                self.message,
                self.comparison,
            ]
        )
        self.widget.add_class("ftkit-runs")
        self._pending: list[str] = []  # asked to delete, awaiting the confirm
        self._refresher = Refresher(lambda: self.refresh() and False, interval)
        on_close(self.widget, self._refresher.stop)
        self.refresh()
        if autostart:
            self._refresher.start()

    def selected(self) -> list[str]:
        return list(self.select.value)

    def refresh(self) -> bool:
        tag = self.tag.value.strip() or None
        try:
            sweeps = recent(self.client, 20, tag=tag)
            chosen = self.sweep.value
            jobs = self.client.jobs(limit=self.limit, tag=f"sweep:{chosen}" if chosen else tag)
            empty = "no jobs" if tag is None else f"no jobs tagged {tag}"
        except ConfigError as exc:  # a tag being typed: say what is wrong with it, list nothing
            sweeps, jobs, empty = [], [], str(exc)
        set_html(
            self.sweeps,
            table(
                [
                    {**s, "swept": ", ".join(s["swept"]), "tags": " ".join(s["tags"])}
                    for s in sweeps
                ],
                SWEEP_COLUMNS,
                empty="no sweeps",
            ),
        )
        options = [("all jobs", "")] + [
            (f"{s['sweep_id']} · {s['mode']} over {', '.join(s['swept'])} · {s['runs']} runs",
             s["sweep_id"])
            for s in sweeps
        ]  # fmt: skip
        if self.sweep.value and self.sweep.value not in [v for _, v in options]:
            options.append((self.sweep.value, self.sweep.value))  # chosen: kept while it exists
        if list(self.sweep.options) != options:
            value, self._refreshing = self.sweep.value, True
            try:
                self.sweep.options = options
                self.sweep.value = value
            finally:
                self._refreshing = False
        set_html(self.jobs, table([job_row(s) for s in jobs], JOB_COLUMNS, empty=empty))
        # Labels that do not change while a job runs: a live status would reset the selection.
        choices = [
            (
                f"{s['job_id']} · {(s.get('dataset') or {}).get('name')} · "
                + " ".join(s.get("tags") or []),
                s["job_id"],
            )
            for s in jobs
        ]
        if list(self.select.options) != choices:
            keep = [v for v in self.select.value if v in {c[1] for c in choices}]
            self.select.options = choices
            self.select.value = tuple(keep)
        self._update_buttons()
        return False

    def _update_buttons(self) -> None:
        n = len(self.select.value)
        self.compare_button.disabled = n < 2
        self.retry_button.disabled = self.delete_button.disabled = n == 0

    def _say(self, text: str, color: str = "inherit") -> None:
        self.message.value = f"<div class='ftkit-runs-message' style='color:{color}'>{text}</div>"

    def compare(self) -> Comparison | None:
        ids = self.selected()
        if len(ids) < 2:
            self._say("select two or more runs to compare", "darkorange")
            return None
        handles = [Job(i, self.client) for i in ids]
        try:
            comparison = Comparison([j.status() for j in handles], [j.metrics() for j in handles])
        except FtkitError as exc:
            self._say(esc(exc), "crimson")
            return None
        self.comparison.value = comparison._repr_html_()
        self._say(f"comparing {len(ids)} runs")
        return comparison

    def retry(self) -> list[Job]:
        queued, refused = [], []
        for job_id in self.selected():
            try:
                queued.append((job_id, Job(job_id, self.client).retry()))
            except FtkitError as exc:
                refused.append(str(exc))
        lines = [f"queued {new.id} (retry of {old})" for old, new in queued]
        lines += [f"not retried: {r}" for r in refused]
        self._say("<br>".join(esc(x) for x in lines), "crimson" if refused else "inherit")
        self.refresh()
        return [new for _, new in queued]

    def ask_delete(self) -> None:
        """Deleting is not undone: the first click names what would go and asks again."""
        self._pending = self.selected()
        if not self._pending:
            return
        n = len(self._pending)
        self.confirm_text.value = (
            f"<b style='color:crimson'>Delete {n} job{'s' if n != 1 else ''} "
            f"({esc(', '.join(self._pending))})?</b> Their records, metrics, logs and run "
            "folders go for good. "
        )
        self.confirm.layout.display = ""

    def keep(self) -> None:
        self._pending = []
        self.confirm.layout.display = "none"

    def confirm_delete(self) -> list[dict[str, Any]]:
        pending, self._pending = self._pending, []
        self.confirm.layout.display = "none"
        freed, refused = [], []
        for job_id in pending:
            try:
                freed.append(self.client.delete(job_id))
            except FtkitError as exc:
                refused.append(str(exc))
        lines = [f"deleted {r['job_id']} ({r['status']})" for r in freed]
        lines += [f"not deleted: {r}" for r in refused]
        self._say("<br>".join(esc(x) for x in lines), "crimson" if refused else "inherit")
        self.refresh()
        return freed

    def stop(self) -> None:
        self._refresher.stop()
