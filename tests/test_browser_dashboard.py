"""The `ftkit serve` dashboard in headless Chromium: a running job is listed and its progress moves,
its page shows the loss curve, Cancel on the page cancels it, the job page then shows the report,
and the tag filter narrows the jobs. Real server (uvicorn on loopback), real worker, real training
on the tiny model."""

from __future__ import annotations

import re

import pytest
from apiserver import serve_in_thread
from lab import VIEWPORT, expect, screenshot

from conftest import EXAMPLE_DATA, wait_for

pytest_plugins = ["lab"]
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors  # the page's script never threw


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_the_dashboard_follows_a_job_and_cancels_it(
    settings, start_worker, tiny_model, tmp_path, page
):
    api = serve_in_thread(settings, tmp_path / "api")
    try:
        start_worker()
        up = api.upload("train.jsonl", EXAMPLE_DATA.read_bytes())[1]
        config = {"base_model": str(tiny_model), "max_steps": 5000, "batch_size": 2,
                  "learning_rate": 1e-3, "max_seq_length": 128, "save_steps": 0}  # fmt: skip
        body = {"job_id": up["job_id"], "config": config, "tags": ["browser-a"]}
        status, body, _ = api.request("POST", "/train", body)
        assert status == 200, body
        job = up["job_id"]

        page.goto(f"{api.url}/?refresh=1")
        row = page.locator(f"tr:has(a.job-link:text-is('{job}'))")
        expect(row.locator(".status")).to_have_text("training", timeout=180_000)
        expect(page.locator(".n-workers")).to_have_text("1")
        worker_row = page.locator("tr", has=page.locator(f"a[href='/ui/job/{job}']")).first
        expect(worker_row).to_be_visible()  # the worker's table names its current job
        first = int(row.locator(".step").inner_text())
        # The page refreshes itself: the step moves without a reload by the test. (A step, not a
        # percent: 1% of this job is 50 steps, which a loaded machine may not train in a minute.)
        wait_for(lambda: int(row.locator(".step").inner_text()) > first, 180, "the row's step")
        expect(row.locator(".pct")).to_be_visible()
        expect(row.locator("svg.spark polyline")).to_have_count(1, timeout=30_000)
        screenshot(page, "dashboard-1-training")

        page.goto(f"{api.url}/ui/job/{job}?refresh=1")
        expect(page.locator("svg.ftkit-loss polyline.ftkit-loss")).to_have_count(1)
        step = int(page.locator(".step").inner_text())
        wait_for(lambda: int(page.locator(".step").inner_text()) > step, 60, "the step to move")
        screenshot(page, "dashboard-2-job")

        page.goto(f"{api.url}/?refresh=1")
        row.locator("button.cancel").click()
        expect(row.locator(".status")).to_have_text("cancelled", timeout=120_000)
        expect(row.locator("button.cancel")).to_have_count(0)
        assert api.request("GET", f"/status/{job}")[1]["status"] == "cancelled"
        screenshot(page, "dashboard-3-cancelled")

        # The job page of an ended job: its report, rendered, in a sandboxed frame.
        wait_for(lambda: api.request("GET", f"/report/{job}")[0] == 200, 120, "the report")
        page.goto(f"{api.url}/ui/job/{job}")
        expect(page.locator("iframe.report")).to_have_attribute("sandbox", "")
        frame = page.frame_locator("iframe.report")
        expect(frame.locator("body")).to_contain_text(re.compile(job), timeout=30_000)
        screenshot(page, "dashboard-4-report", full_page=True)

        # The tag filter: another tag hides the job; the job's own tag link shows it again.
        page.goto(f"{api.url}/?refresh=1")
        page.fill("form.tag-filter input[name=tag]", "not-this-one")
        page.click("form.tag-filter button")
        expect(page.locator("b.tag-shown")).to_have_text("not-this-one")
        expect(row).to_have_count(0)
        page.click("a.clear-tag")
        row.locator("a.tag", has_text="browser-a").click()
        expect(page).to_have_url(re.compile(r"[?&]tag=browser-a"))
        expect(row.locator(".status")).to_have_text("cancelled")
        expect(page.locator("form.tag-filter input[name=tag]")).to_have_value("browser-a")
        screenshot(page, "dashboard-5-tag")
    finally:
        api.stop()
