"""The panels driven from Python: set values, click, read state, against a real store and worker."""

from __future__ import annotations

import time

import pytest

from conftest import EXAMPLE_DATA, redis_only, wait_for
from ftkit.core import statuses
from ftkit.panels import ConfigureStep, Dashboard, MonitorPanel, Panel
from ftkit.plots import loss_svg


def seed_jobs(client, n: int, status: str = "queued", first: int = 0) -> None:
    now = time.time()
    for i in range(first, first + n):
        client.store.create(
            {
                "job_id": f"job{i:05d}",
                "status": statuses.QUEUED,
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


def test_configure_shows_each_method_setting_only_for_its_method_and_sends_it(client):
    from ftkit.config import TrainConfig

    step = ConfigureStep(client)
    controls = step.controls
    shown = lambda: {  # noqa: E731
        name
        for name in ("beta", "dpo_loss_type", "kto_desirable_weight", "kto_undesirable_weight")
        if controls[name].layout.display != "none"
    }
    assert list(controls["method"].options) == ["sft", "dpo", "orpo", "kto"]
    assert controls["method"].value == "sft" and shown() == set()
    controls["method"].value = "dpo"
    assert shown() == {"beta", "dpo_loss_type"}
    controls["beta"].value = 0.2
    controls["dpo_loss_type"].value = "ipo"
    assert step.validate() == TrainConfig(method="dpo", beta=0.2, dpo_loss_type="ipo")
    controls["method"].value = "orpo"  # the hidden loss type is not sent: no error
    assert shown() == {"beta"} and step.error.value == ""
    assert step.validate() == TrainConfig(method="orpo", beta=0.2)
    controls["method"].value = "kto"
    assert shown() == {"beta", "kto_desirable_weight", "kto_undesirable_weight"}
    controls["kto_undesirable_weight"].value = 1.5
    controls["beta"].value = 0.0  # 0: unset, TRL's default
    assert step.validate() == TrainConfig(method="kto", kto_undesirable_weight=1.5)
    controls["kto_desirable_weight"].value = -1.0
    assert "kto_desirable_weight=-1.0: must be a number &gt; 0" in step.error.value
    controls["method"].value = "sft"
    assert shown() == set() and step.validate() == TrainConfig()


def test_the_panel_opens_on_a_method_and_its_settings_and_submits_them(client):
    from ftkit.config import TrainConfig

    panel = Panel(client, method="dpo", beta=0.05, dpo_loss_type="hinge")
    assert panel.configure.controls["beta"].layout.display != "none"
    assert panel.configure.validate() == TrainConfig(method="dpo", beta=0.05, dpo_loss_type="hinge")
    panel.upload.load(EXAMPLE_DATA.parent / "preference_data.jsonl")
    panel.configure.controls["base_model"].value = "org/model"  # queued, never run
    job = panel.submit()
    assert job is not None, panel.reason.value
    config = job.status()["config"]
    assert (config["method"], config["beta"], config["dpo_loss_type"]) == ("dpo", 0.05, "hinge")
    panel.monitor.stop()  # type: ignore[union-attr]


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


def seed_preference_job(
    client, job_id: str, config: dict, margins: list[float], status=statuses.COMPLETED
):
    """What a worker leaves of a preference run, metrics named as TRL logs them: a margin and an
    accuracy per logged step (none for an SFT run)."""
    now = time.time()
    client.store.create(
        {"job_id": job_id, "status": statuses.QUEUED, "created_at": now, "progress": 0.0,
         "config": {"base_model": "m", **config}, "dataset": {"name": "pairs.jsonl"},
         "loss": None, "started_at": None, "finished_at": None, "attempt": 1, "worker": None}
    )  # fmt: skip
    rows = [
        {"step": i + 1, "loss": 0.7 - m / 10, "rewards/chosen": m / 2, "rewards/rejected": -m / 2,
         "rewards/margins": m, "rewards/accuracies": min(1.0, 0.5 + m / 2)}
        for i, m in enumerate(margins)
    ]  # fmt: skip
    if config.get("method", "sft") == "sft":
        rows = [{"step": r["step"], "loss": r["loss"]} for r in rows]
    client.store.add_metrics(job_id, rows)
    client.store.transition(job_id, status, current_step=len(rows), loss=rows[-1]["loss"])
    return client.get_job(job_id)


def test_the_monitor_shows_the_method_and_a_preference_jobs_margin_and_accuracy(client):
    dpo = seed_preference_job(
        client, "dpo000000001", {"method": "dpo"}, [0.0, 0.2, 0.5], statuses.TRAINING
    )
    monitor = MonitorPanel(dpo, autostart=False)
    assert "<span class='ftkit-method'>dpo</span>" in monitor.status.value
    assert "margin 0.500 · accuracy 0.750" in monitor.preference.value
    margins = monitor.preference.value.split("class='ftkit-rewards-margins'")[1]
    assert len(margins.split("points='")[1].split("'")[0].split()) == 3  # one point per step
    client.store.add_metrics(dpo.id, [{"step": 4, "rewards/margins": 0.9, "rewards/accuracies": 1}])
    monitor.refresh()
    assert "margin 0.900 · accuracy 1.000" in monitor.preference.value
    sft = seed_preference_job(client, "sft000000001", {}, [0.0, 0.1])
    monitor = MonitorPanel(sft, autostart=False)
    assert "<span class='ftkit-method'>sft</span>" in monitor.status.value
    assert monitor.preference.value == ""  # no rewards logged: nothing shown


def test_compare_shows_final_margins_and_accuracies_and_overlays_the_margins(client):
    from ftkit import compare

    a = seed_preference_job(client, "cmp000000001", {"method": "dpo", "beta": 0.1}, [0.1, 0.4])
    b = seed_preference_job(client, "cmp000000002", {"method": "dpo", "beta": 0.5}, [0.2, 0.9])
    both = compare([a, b])
    assert [(r["method"], r["beta"], r["rewards/margins"], r["rewards/accuracies"])
            for r in both.rows] == [("dpo", 0.1, 0.4, 0.7), ("dpo", 0.5, 0.9, 0.95)]  # fmt: skip
    page = both._repr_html_()
    head = page.split("</thead>")[0]
    assert all(f"<th style='text-align:left;padding:2px 8px'>{c}</th>" in head
               for c in ("method", "beta", "rewards/margins", "rewards/accuracies"))  # fmt: skip
    assert page.count("<polyline class='ftkit-compare-rewards-margins'") == 2
    sft = seed_preference_job(client, "cmp000000003", {}, [0.0, 0.1])
    plain = compare([sft, a])  # a column left empty where a job logged no rewards
    assert [r["rewards/margins"] for r in plain.rows] == [None, 0.4]
    assert [r["method"] for r in plain.rows] == ["sft", "dpo"]
    only_sft = compare([sft, seed_preference_job(client, "cmp000000004", {}, [0.0, 0.3])])
    assert "rewards/margins" not in only_sft._repr_html_()
    assert "<th style='text-align:left;padding:2px 8px'>method</th>" not in only_sft._repr_html_()


def test_dashboard_filters_and_cancels(client):
    seed_jobs(client, 5)
    client.store.transition("job00001", statuses.TRAINING)
    dash = Dashboard(client, autostart=False)
    assert dash.jobs.value.count("<tr>") == 6  # header + 5
    dash.filter.value = "training"
    assert dash.jobs.value.count("<tr>") == 2 and "job00001" in dash.jobs.value
    dash.filter.value = "all"
    dash.cancel("job00002")
    assert client.store.get("job00002")["status"] == "cancelled"


def test_dashboard_with_a_thousand_jobs_refreshes_fast(client):
    """A refresh reads one page of jobs, whatever the store holds: with 1,000 jobs it costs about
    what it costs with one page (50), measured here side by side; reading every job would be ~20x."""

    def refresh_time(dash: Dashboard) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            dash.refresh()
            times.append(time.perf_counter() - started)
        return min(times)

    dash = Dashboard(client, autostart=False, limit=50)
    seed_jobs(client, 50)
    one_page = refresh_time(dash)
    seed_jobs(client, 950, first=50)
    thousand = refresh_time(dash)
    assert dash.jobs.value.count("<tr>") == 51  # header + one page
    assert thousand < 5 * one_page, f"{thousand:.4f} s with 1,000 jobs vs {one_page:.4f} s with 50"


def test_monitor_stops_refreshing_when_closed(client):
    seed_jobs(client, 1)
    client.store.transition("job00000", statuses.TRAINING)
    monitor = MonitorPanel(client.get_job("job00000"), interval=0.05)
    assert monitor.refreshing
    monitor.widget.close()
    wait_for(lambda: not monitor.refreshing, 5, "the refresher to stop")


@pytest.mark.slow
@redis_only  # the browser panel test runs the same on SQLite
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
    wait_for(lambda: not monitor.refreshing, 5, "the refresher to stop after the job ended")


def test_dashboard_filters_by_tag_and_says_what_is_wrong_with_a_tag(client):
    ds = client.upload_dataset(EXAMPLE_DATA)
    tagged = client.submit(ds, max_steps=2, tags=["lr-sweep"])
    other = client.submit(ds, max_steps=2, tags=["baseline"])
    dash = Dashboard(client, autostart=False)
    assert tagged.id in dash.jobs.value and other.id in dash.jobs.value
    dash.tag.value = "lr-sweep"
    assert dash.jobs.value.count("<tr>") == 2 and tagged.id in dash.jobs.value
    assert "lr-sweep" in dash.jobs.value and other.id not in dash.jobs.value
    dash.filter.value = "completed"
    assert "no jobs tagged lr-sweep" in dash.jobs.value
    dash.tag.value = "two words"
    assert "tag &#x27;two words&#x27;" in dash.jobs.value and tagged.id not in dash.jobs.value


# -- the runs panel -------------------------------------------------------------------------------
QUICK = dict(base_model="org/model", max_steps=3)  # queued, never run: a hub id is not fetched


def finish(client, job_id: str, losses: list[float]) -> None:
    """What a worker leaves of a completed run: its metric rows, final loss and status."""
    client.store.add_metrics(job_id, [{"step": i + 1, "loss": x} for i, x in enumerate(losses)])
    client.store.transition(
        job_id,
        statuses.COMPLETED,
        loss=losses[-1],
        current_step=len(losses),
        result={"final_loss": losses[-1]},
    )


def test_runs_panel_lists_jobs_and_sweeps_by_tag_and_narrows_to_one_sweep(client):
    from ftkit.panels.sweeps import RunsPanel
    from ftkit.sweeping import create

    ds = client.upload_dataset(EXAMPLE_DATA)
    sweep = create(client, ds, lora_r=[4, 8], tags=["grid"], **QUICK)
    lone = client.submit(ds, tags=["lone"], **QUICK)
    panel = RunsPanel(client, autostart=False)
    assert sweep.id in panel.sweeps.value and panel.sweeps.value.count("<tr>") == 2
    assert panel.jobs.value.count("<tr>") == 4  # header + 3 jobs
    assert [v for _, v in panel.sweep.options] == ["", sweep.id]
    panel.sweep.value = sweep.id
    assert sorted(v for _, v in panel.select.options) == sorted(j.id for j in sweep.jobs)
    assert lone.id not in panel.jobs.value
    panel.sweep.value = ""
    panel.tag.value = "lone"
    assert [v for _, v in panel.select.options] == [lone.id]
    assert "no sweeps" in panel.sweeps.value
    panel.tag.value = "two words"
    assert "tag &#x27;two words&#x27;" in panel.jobs.value and panel.select.options == ()


def test_runs_panel_compares_two_or_more_selected_runs_and_keeps_the_selection(client):
    from ftkit.panels.sweeps import RunsPanel

    a, b, c = (client.submit(EXAMPLE_DATA, **QUICK) for _ in range(3))
    finish(client, a.id, [3.0, 2.5, 2.0])
    finish(client, b.id, [3.1, 2.2, 1.5])
    panel = RunsPanel(client, autostart=False)
    assert panel.compare_button.disabled and panel.delete_button.disabled
    panel.select.value = (a.id,)
    assert panel.compare_button.disabled and not panel.retry_button.disabled
    assert panel.compare() is None and "two or more" in panel.message.value
    panel.select.value = (a.id, b.id)
    client.submit(EXAMPLE_DATA, **QUICK)
    panel.refresh()  # a new job: the list changes, the selection stays
    assert panel.select.value == (a.id, b.id) and len(panel.select.options) == 4
    assert not panel.compare_button.disabled
    panel.compare_button.click()
    curves = panel.comparison.value.split("<details>")[0].split(
        "<polyline class='ftkit-compare-loss'"
    )
    assert len(curves) == 3 and all(
        len(x.split("points='")[1].split("'")[0].split()) == 3 for x in curves[1:]
    )
    assert f"best: <b>{b.id}</b> (final_loss 1.5000" in panel.comparison.value
    assert c.id not in panel.comparison.value


def test_runs_panel_retries_ended_runs_and_says_which_it_cannot(client):
    from ftkit.panels.sweeps import RunsPanel

    cancelled = client.submit(EXAMPLE_DATA, lora_r=4, tags=["t"], **QUICK)
    cancelled.cancel()
    waiting = client.submit(EXAMPLE_DATA, **QUICK)
    panel = RunsPanel(client, autostart=False)
    panel.select.value = (cancelled.id, waiting.id)
    [again] = panel.retry()
    status = again.status()
    assert status["status"] == "queued" and status["config"] == cancelled.status()["config"]
    assert status["tags"] == ["t"]
    assert f"queued {again.id} (retry of {cancelled.id})" in panel.message.value
    assert f"job {waiting.id} is queued: only a failed or cancelled job is retried" in (
        panel.message.value
    )
    assert again.id in [v for _, v in panel.select.options]


def test_runs_panel_deletes_only_after_a_confirm(client):
    from ftkit.panels.sweeps import RunsPanel

    done, waiting = client.submit(EXAMPLE_DATA, **QUICK), client.submit(EXAMPLE_DATA, **QUICK)
    finish(client, done.id, [2.0, 1.0])
    panel = RunsPanel(client, autostart=False)
    panel.select.value = (done.id, waiting.id)
    panel.delete_button.click()
    assert panel.confirm.layout.display == "" and "Delete 2 jobs" in panel.confirm_text.value
    assert client.count_jobs() == 2  # asked, not done
    panel.keep_button.click()
    assert panel.confirm.layout.display == "none" and client.count_jobs() == 2
    panel.delete_button.click()
    panel.confirm_button.click()
    assert panel.confirm.layout.display == "none"
    assert [j["job_id"] for j in client.jobs()] == [waiting.id]  # a queued job is not deleted
    assert f"deleted {done.id} (completed)" in panel.message.value
    assert f"not deleted: job {waiting.id} is queued: cancel it first" in panel.message.value
    assert [v for _, v in panel.select.options] == [waiting.id]
    assert panel.select.value == (waiting.id,)
    panel.confirm_button.click()  # a second click on a stale confirm deletes nothing more
    assert client.count_jobs() == 1


def test_a_sweep_in_a_cell_is_a_live_table_that_cancels_and_stops(client):
    import ftkit  # joins Sweep to its view, as Job to its monitor
    from ftkit.panels.sweeps import SweepView
    from ftkit.sweeping import create

    sweep = create(client, EXAMPLE_DATA, learning_rate=[1e-4, 2e-4], **QUICK)
    assert ftkit.Sweep.cell_view is not None
    bundle = sweep._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "data-status='queued'" in sweep._repr_html_()  # where widgets do not render
    view = SweepView(sweep, interval=0.05)
    assert view.refreshing and view.table.value.count("data-status='queued'") == 2
    finish(client, sweep.jobs[0].id, [2.0, 1.5])
    wait_for(lambda: "data-status='completed'" in view.table.value, 10, "the table to refresh")
    assert "best so far" in view.best.value and sweep.jobs[0].id in view.best.value
    view.cancel_button.click()
    wait_for(lambda: not view.refreshing, 10, "the view to stop once every run ended")
    assert view.table.value.count("data-status='cancelled'") == 1 and view.cancel_button.disabled
    live = SweepView(create(client, EXAMPLE_DATA, lora_r=[4, 8], **QUICK), interval=0.05)
    assert live.refreshing
    live.widget.close()
    wait_for(lambda: not live.refreshing, 5, "the refresher to stop when closed")
