"""The panels driven from Python: set values, click, read state, against a real store and worker."""

from __future__ import annotations

import time

import pytest

from conftest import EXAMPLE_DATA, wait_for
from ftkit import jobstore
from ftkit.widgets import ConfigureStep, Dashboard, MonitorPanel, Panel, loss_svg


def seed_jobs(client, n: int, status: str = "queued") -> None:
    now = time.time()
    for i in range(n):
        client.store.create(
            {
                "job_id": f"job{i:05d}",
                "status": jobstore.QUEUED,
                "created_at": now - i,
                "progress": 0.0,
                "config": {"base_model": "m"},
                "dataset": {"name": "d.jsonl"},
                "loss": None,
                "started_at": None,
                "finished_at": None,
                "attempt": 1,
                "worker": None,
            }
        )
        if status != "queued":
            client.store.transition(f"job{i:05d}", status)


def test_configure_disables_submit_with_the_reason_while_invalid(client):
    panel = Panel(client)
    assert panel.submit_button.disabled and "data set" in panel.reason.value
    panel.configure.controls["learning_rate"].value = -1.0
    assert "learning_rate" in panel.configure.error.value
    panel.configure.controls["learning_rate"].value = 1e-3
    assert panel.configure.error.value == ""


def test_configure_has_a_labelled_control_with_tooltip_for_every_field(client):
    from ftkit.config import TrainConfig

    step = ConfigureStep(client)
    assert set(step.controls) == set(TrainConfig.field_names())
    assert all(c.tooltip for c in step.controls.values())
    assert step.validate() == TrainConfig()


def test_upload_of_a_broken_file_lists_problems_with_line_numbers(client, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = EXAMPLE_DATA.read_text().splitlines()
    bad.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:6]) + "\n")
    panel = Panel(client)
    assert panel.upload.load(bad) is None
    assert "line 4" in panel.upload.problems.value
    assert panel.submit_button.disabled


def test_upload_of_a_good_file_shows_its_profile_and_enables_submit(client):
    panel = Panel(client)
    ds = panel.upload.load(EXAMPLE_DATA)
    assert ds is not None and ds.rows == 120
    assert "chat" in panel.upload.summary.value and "120" in panel.upload.summary.value
    assert "<table" in panel.upload.preview.value
    assert not panel.submit_button.disabled


def test_loss_curve_is_svg_with_one_point_per_logged_step():
    svg = loss_svg([{"step": i, "loss": 3.0 - i / 10} for i in range(1, 11)])
    points = svg.split("points='")[1].split("'")[0]
    assert svg.startswith("<svg") and len(points.split()) == 10


def test_dashboard_filters_and_cancels(client):
    seed_jobs(client, 5)
    client.store.transition("job00001", jobstore.TRAINING)
    dash = Dashboard(client, autostart=False)
    assert dash.jobs.value.count("<tr>") == 6  # header + 5
    dash.filter.value = "training"
    assert dash.jobs.value.count("<tr>") == 2 and "job00001" in dash.jobs.value
    dash.filter.value = "all"
    dash.cancel("job00002")
    assert client.store.get("job00002")["status"] == "cancelled"


def test_dashboard_with_a_thousand_jobs_refreshes_fast(client):
    seed_jobs(client, 1000)
    dash = Dashboard(client, autostart=False)
    started = time.perf_counter()
    dash.refresh()
    assert time.perf_counter() - started < 1.0


def test_monitor_stops_refreshing_when_closed(client):
    seed_jobs(client, 1)
    client.store.transition("job00000", jobstore.TRAINING)
    monitor = MonitorPanel(client.get_job("job00000"), interval=0.05)
    assert monitor._refresher.running
    monitor.widget.close()
    wait_for(lambda: not monitor._refresher.running, 5, "the refresher to stop")


@pytest.mark.slow
def test_panel_submits_and_the_monitor_follows_the_job_to_the_end(client, start_worker, tiny_model):
    start_worker()
    panel = Panel(client)
    panel.upload.load(EXAMPLE_DATA)
    controls = panel.configure.controls
    controls["base_model"].value = str(tiny_model)
    controls["max_steps"].value = 8
    controls["max_seq_length"].value = 256
    controls["learning_rate"].value = 3e-3
    assert not panel.submit_button.disabled
    panel.submit_button.click()
    monitor = panel.monitor
    assert monitor is not None
    wait_for(
        lambda: "completed" in monitor.status.value,
        240,
        "the monitor to show completed",
        interval=0.5,
    )
    assert monitor.bar.value == 100.0 and monitor.bar.bar_style == "success"
    assert len(monitor.curve.value.split("points='")[1].split("'")[0].split()) == 8
    assert not monitor.download_button.disabled and monitor.cancel_button.disabled
    assert "report.ipynb" in monitor.outputs.value
    wait_for(lambda: not monitor._refresher.running, 5, "the refresher to stop after the job ended")
