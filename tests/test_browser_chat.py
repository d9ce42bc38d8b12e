"""``job.chat()`` in a real JupyterLab, driven from headless Chromium like a person would: the
panel loads the demo's model (conftest's pico_job) in the notebook's own kernel, shows its
settings, renders the typed prompt through the chat template, answers with the tuned model beside
the base one, shows a prompt as text (never markup), and on Close frees the model: a cell run
afterwards finds no tuned model left in the kernel.

Screenshots go to tests/artifacts/: chat-0-loading (when caught loading), chat-1-answered,
chat-2-closed."""

from __future__ import annotations

import re

import pytest
from lab import ARTIFACTS, expect, open_notebook, run_cell, screenshot, write_notebook

from conftest import PICO

pytest_plugins = ["lab"]
pytestmark = [pytest.mark.browser, pytest.mark.slow]

GC_CELL = """\
import gc
gc.collect()
alive = [o for o in gc.get_objects() if type(o).__name__ == "PeftModelForCausalLM"]
print(f"tuned models alive: {len(alive)}; chat.model: {chat.model}")"""


def test_the_chat_panel_answers_beside_the_base_model_and_frees_its_model(
    pico_job, lab_factory, lab_page
):
    settings, job_id = pico_job
    page = lab_page
    (ARTIFACTS / "chat-0-loading.png").unlink(missing_ok=True)  # not a stale one when not caught
    lab = lab_factory(env=settings.to_env() | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    write_notebook(
        lab.root_dir / "chat.ipynb",
        [f"import ftkit\njob = ftkit.get_job({job_id!r})\nchat = job.chat(max_new_tokens=40)\nchat",
         GC_CELL],
    )  # fmt: skip
    open_notebook(page, lab, "chat.ipynb")
    run_cell(page, 0)
    panel = page.locator(".ftkit-chat")
    expect(panel).to_be_visible(timeout=30_000)
    status = panel.locator(".ftkit-chat-status")
    if status.get_attribute("data-state") == "loading":
        expect(status).to_contain_text("loading model")
        expect(panel.locator(".ftkit-chat-send")).to_be_disabled()
        screenshot(page, "chat-0-loading")
    expect(status).to_have_attribute("data-state", "ready", timeout=180_000)
    expect(status).to_contain_text(re.compile(r"answers on (cpu|cuda)"))

    # The generation settings in view, as the cell set them.
    expect(panel.locator(".ftkit-chat-temperature input")).to_have_value("0")
    expect(panel.locator(".ftkit-chat-max-new-tokens input")).to_have_value("40")
    expect(panel.locator(".ftkit-chat-sampling")).to_contain_text("greedy")

    # The typed prompt as the model will read it, in the chat template's section.
    panel.locator(".ftkit-chat-prompt textarea").fill("Who are you?")
    panel.get_by_text("chat template: what the model reads").click()
    rendered = panel.locator(".ftkit-chat-rendered")
    expect(rendered).to_be_visible()
    expect(rendered).to_contain_text(
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant"
    )

    panel.locator(".ftkit-chat-send").click()
    tuned = panel.locator(".ftkit-chat-tuned")
    expect(tuned).to_contain_text(PICO, timeout=120_000)
    expect(panel.locator(".ftkit-chat-base")).not_to_contain_text(PICO)
    expect(status).to_have_attribute("data-state", "ready")
    expect(panel.locator(".ftkit-chat-meta")).to_contain_text("greedy · temperature 0 · max 40")
    panel.scroll_into_view_if_needed()
    screenshot(page, "chat-1-answered")

    # A prompt is text on the page, never markup.
    panel.locator(".ftkit-chat-prompt textarea").fill("<b>bold?</b> Who made you?")
    panel.locator(".ftkit-chat-send").click()
    expect(panel.locator(".ftkit-chat-exchange")).to_have_count(2, timeout=120_000)
    expect(panel.locator(".ftkit-chat-you").nth(1)).to_contain_text("<b>bold?</b> Who made you?")
    expect(panel.locator(".ftkit-chat-you b", has_text="bold?")).to_have_count(0)

    # Close frees the model: the panel says so and takes no more prompts, and the kernel holds none.
    panel.locator(".ftkit-chat-close").click()
    expect(status).to_have_attribute("data-state", "closed", timeout=60_000)
    expect(status).to_contain_text("the model was freed")
    expect(panel.locator(".ftkit-chat-send")).to_be_disabled()
    expect(panel.locator(".ftkit-chat-prompt textarea")).to_be_disabled()
    run_cell(page, 1)
    freed = page.locator(".jp-OutputArea-output", has_text="tuned models alive")
    expect(freed).to_have_text("tuned models alive: 0; chat.model: None")
    assert page.locator(".jp-OutputArea-output", has_text="Loading weights").count() == 0
    freed.scroll_into_view_if_needed()
    screenshot(page, "chat-2-closed")
