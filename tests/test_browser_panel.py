"""Issue "Widget panels in JupyterLab", end to end in a real browser: the quick-start notebook in a
real JupyterLab, driven from headless Chromium like a person would. Upload the example data through
the panel's FileUpload, read the profile, submit, and watch an ``ftkit worker`` (a real subprocess
on the same SQLite queue and storage as the notebook's kernel) train the tiny model until the
monitor shows the job completed, a full progress bar and one loss point per step; the dashboard
below lists the job as completed. A corrupted data set shows its problem by line and keeps Submit
disabled, with the reason shown.

Screenshots go to tests/artifacts/ (01-panel, 02-uploaded, 03-training when the refresh catches the
job mid-training, 04-completed, 05-dashboard, 06-broken-data, 07-broken-data-submit-disabled)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lab import (
    ARTIFACTS,
    cell_errors,
    expect,
    open_notebook,
    run_all_cells,
    screenshot,
    upload_file,
)

from conftest import EXAMPLE_DATA, REPO, sqlite_only, wait_for

pytest_plugins = ["lab"]
pytestmark = [pytest.mark.browser, pytest.mark.slow]

MAX_STEPS = 12
FINAL = ("completed", "failed", "cancelled")


def quickstart_copy(dest: Path, base_model: Path, max_steps: int) -> Path:
    """notebooks/quickstart.ipynb with its parameters cell pointing at base_model and max_steps
    (edited in the JSON: this is what a person would type into that cell)."""
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "quickstart.ipynb has one cell tagged 'parameters'"
    params[0].source = f"base_model = {str(base_model)!r}\nmax_steps = {max_steps}"
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "ftkit.panel(" in sources and "ftkit.dashboard()" in sources
    nbformat.write(nb, str(dest))
    return dest


def open_quickstart(page, lab, tiny_model: Path, name: str) -> None:
    quickstart_copy(lab.root_dir / name, tiny_model, MAX_STEPS)
    open_notebook(page, lab, name)
    run_all_cells(page, timeout=180)  # the kernel imports ftkit, then builds both panels
    panel = page.locator(".ftkit-panel")
    expect(panel).to_be_visible(timeout=30_000)
    # Rendered by the widget manager, not "Loading widget..." or the text repr
    assert page.locator("text=Loading widget").count() == 0
    assert page.locator(".jp-OutputArea-output pre", has_text="VBox(children=").count() == 0
    assert not cell_errors(page), cell_errors(page)


def submit_button(page):
    return page.locator(".ftkit-panel button.widget-button", has_text="Submit")


# The monitor's state as the browser shows it: the status span, the ipywidgets 8 progress bar (a
# div.progress-bar whose style.width is the percentage; ipywidgets sets no aria-value* on it) and
# the loss polyline.
MONITOR_STATE_JS = """() => {
  const m = document.querySelector('.ftkit-monitor');
  if (!m) return null;
  const s = m.querySelector('.ftkit-status');
  const bar = m.querySelector('.widget-hprogress .progress-bar');
  const line = m.querySelector('svg.ftkit-loss polyline.ftkit-loss');
  return {
    status: s ? s.dataset.status : null,
    width: bar ? bar.style.width : null,
    points: line ? line.getAttribute('points').trim().split(/\\s+/).length : 0,
  };
}"""


def wait_for_monitor(page, condition_js: str, timeout: float) -> dict:
    """Wait until condition_js(state) holds for MONITOR_STATE_JS's state; return that state."""
    page.wait_for_function(
        f"() => {{ const st = ({MONITOR_STATE_JS})(); return !!st && ({condition_js})(st); }}",
        timeout=timeout * 1000,
        polling=100,
    )
    return page.evaluate(MONITOR_STATE_JS)


@sqlite_only
def test_quickstart_panel_upload_submit_monitor(
    settings, start_worker, tiny_model, lab_factory, lab_page
):
    page = lab_page
    (ARTIFACTS / "03-training.png").unlink(missing_ok=True)  # not a stale one when not caught
    worker = start_worker(wait=False)  # it starts up while Lab and the kernel do
    # The notebook's kernel inherits the server's environment: the worker's queue and storage.
    lab = lab_factory(env=settings.to_env() | {"HF_HUB_OFFLINE": "1"})
    open_quickstart(page, lab, tiny_model, "quickstart.ipynb")
    from ftkit.client import Client

    client = Client(settings)
    wait_for(
        lambda: client.workers() or worker.proc.poll() is not None, 60, "the worker's heartbeat"
    )
    assert worker.proc.poll() is None, worker.output()

    upload = page.locator(".ftkit-panel .ftkit-upload")
    expect(upload.locator("button.widget-upload")).to_be_visible()
    expect(page.locator(".ftkit-panel .ftkit-configure")).to_be_visible()
    # the notebook's parameters reached the configure step
    max_steps = page.locator(".ftkit-configure .widget-text", has_text="max_steps").locator("input")
    expect(max_steps).to_have_value(str(MAX_STEPS))
    base_model = page.locator(".ftkit-configure .widget-text", has_text="base_model").locator(
        "input"
    )
    expect(base_model).to_have_value(str(tiny_model))
    # nothing to submit yet, and the panel says why
    expect(submit_button(page)).to_be_disabled()
    expect(page.locator(".ftkit-submit-reason")).to_have_text("upload a usable data set first")
    upload.scroll_into_view_if_needed()
    screenshot(page, "01-panel")

    upload_file(upload, EXAMPLE_DATA)
    profile = page.locator(".ftkit-upload .ftkit-profile")
    expect(profile).to_be_visible(timeout=60_000)
    expect(profile).to_contain_text(re.compile(r"format\s+chat\b"))
    expect(profile).to_contain_text(re.compile(r"\b120\s+rows\b"))
    expect(profile).to_contain_text(EXAMPLE_DATA.name)
    expect(upload).not_to_contain_text("cannot be used")
    expect(page.locator(".ftkit-upload table.ftkit-table")).to_be_visible()  # the preview
    screenshot(page, "02-uploaded")

    submit = submit_button(page)
    expect(submit).to_be_enabled(timeout=15_000)
    expect(page.locator(".ftkit-submit-reason")).to_have_count(0)
    submit.scroll_into_view_if_needed()
    submit.click()

    monitor = page.locator(".ftkit-panel .ftkit-monitor")
    expect(monitor).to_be_visible(timeout=30_000)
    title = monitor.locator("b", has_text=re.compile(r"^Job \S+$")).first.inner_text()
    job_id = title.split()[-1]

    # Mid-training, if a refresh (every second) catches it: the status and a partial curve.
    state = wait_for_monitor(
        page,
        f"(st) => {json.dumps(FINAL)}.includes(st.status)"
        " || (st.status === 'training' && st.points >= 2)",
        timeout=240,
    )
    if state["status"] == "training":
        monitor.scroll_into_view_if_needed()
        screenshot(page, "03-training")

    state = wait_for_monitor(page, f"(st) => {json.dumps(FINAL)}.includes(st.status)", timeout=240)
    if state["status"] != "completed":
        error = monitor.locator(".ftkit-error").all_inner_texts()
        pytest.fail(f"job {job_id} ended {state}: {error}\nworker log:\n{worker.output()[-4000:]}")

    # The refresh that saw "completed" also set the bar and the curve (one update, same tick).
    bar = monitor.locator(".widget-hprogress .progress-bar")
    expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"), timeout=15_000)
    expect(bar).to_have_class(re.compile(r"\bprogress-bar-success\b"))
    expect(monitor.locator(".widget-label", has_text="step ")).to_have_text(
        f"step {MAX_STEPS}/{MAX_STEPS}"
    )
    line = monitor.locator("svg.ftkit-loss polyline.ftkit-loss")
    expect(line).to_have_count(1)
    points = line.get_attribute("points").split()
    assert len(points) == MAX_STEPS, points
    assert all(re.fullmatch(r"-?[\d.]+,-?[\d.]+", p) for p in points), points
    xs = [float(p.split(",")[0]) for p in points]
    assert xs == sorted(xs) and len(set(xs)) == MAX_STEPS, "one point per step, left to right"
    expect(monitor.locator(".ftkit-status")).to_have_css("color", "rgb(0, 128, 0)")  # green
    expect(monitor.locator(".ftkit-outputs")).to_contain_text("adapter:")
    expect(monitor.locator("button.widget-button", has_text="Download adapter")).to_be_enabled()
    expect(monitor.locator("button.widget-button", has_text="Cancel")).to_be_disabled()
    expect(monitor.locator("pre.ftkit-logs")).to_contain_text(f"step {MAX_STEPS}/{MAX_STEPS}")
    monitor.scroll_into_view_if_needed()
    screenshot(page, "04-completed")

    # The dashboard further down lists the job as completed (it refreshes every 2 s).
    dashboard = page.locator(".ftkit-dashboard")
    row = dashboard.locator("table.ftkit-table tbody tr", has_text=job_id)
    expect(row).to_have_count(1, timeout=30_000)
    expect(row).to_contain_text("completed", timeout=30_000)
    expect(row).to_contain_text("100%")
    expect(row).to_contain_text(str(tiny_model))
    expect(dashboard).to_contain_text("1 live workers")
    dashboard.scroll_into_view_if_needed()
    screenshot(page, "05-dashboard")


@sqlite_only
def test_panel_shows_broken_data_by_line_and_keeps_submit_disabled(
    settings, tiny_model, lab_factory, lab_page, tmp_path
):
    page = lab_page
    lines = EXAMPLE_DATA.read_text().splitlines()
    json.loads(lines[2])  # line 3 is valid to begin with...
    lines[2] = lines[2][: len(lines[2]) // 2]  # ...and cut in half now
    broken = tmp_path / "broken_data.jsonl"
    broken.write_text("\n".join(lines) + "\n")

    lab = lab_factory(env=settings.to_env() | {"HF_HUB_OFFLINE": "1"})
    open_quickstart(page, lab, tiny_model, "quickstart-broken.ipynb")
    upload = page.locator(".ftkit-panel .ftkit-upload")
    upload_file(upload, broken)

    problems = upload.locator(".ftkit-problems")
    expect(problems).to_be_visible(timeout=60_000)
    expect(problems).to_contain_text(broken.name)
    expect(problems.locator("li", has_text=re.compile(r"^line 3: "))).to_have_count(1)
    expect(problems).to_have_css("color", "rgb(220, 20, 60)")  # crimson: an error, not a warning
    expect(upload).to_contain_text("this data set cannot be used yet")
    assert upload.locator(".ftkit-profile").count() == 0
    submit = submit_button(page)
    expect(submit).to_be_disabled()
    reason = page.locator(".ftkit-submit-reason")
    expect(reason).to_be_visible()
    expect(reason).to_have_text("upload a usable data set first")
    assert page.locator(".ftkit-monitor").count() == 0
    upload.scroll_into_view_if_needed()
    screenshot(page, "06-broken-data")
    reason.scroll_into_view_if_needed()
    screenshot(page, "07-broken-data-submit-disabled")
