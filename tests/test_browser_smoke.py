"""The browser-test infrastructure end to end on a trivial ipywidgets notebook: real JupyterLab,
real Chromium, widgets rendered by the ipywidgets Lab extension, a file uploaded through FileUpload
and a button click handled in the kernel."""

from __future__ import annotations

import re
import sys

import pytest
from lab import (
    expect,
    open_notebook,
    run_all_cells,
    screenshot,
    upload_file,
    write_notebook,
)

pytest_plugins = ["lab"]
pytestmark = pytest.mark.browser

WIDGETS_CELL = """\
import os, sys
import ipywidgets as w

progress = w.IntProgress(value=0, min=0, max=100, description="Progress")
progress.add_class("smoke-progress")
status = w.Label("not clicked").add_class("smoke-status")
uploaded = w.Label("no file").add_class("smoke-uploaded")
from importlib.util import find_spec
env = w.Label(f"{sys.executable}|{os.environ.get('FTKIT_SMOKE_ENV', 'unset')}|{find_spec('ftkit') is not None}")
env.add_class("smoke-env")
button = w.Button(description="Finish", button_style="success").add_class("smoke-button")
upload = w.FileUpload(accept=".txt", multiple=False).add_class("smoke-upload")

def on_click(_):
    progress.value = 100
    progress.bar_style = "success"
    status.value = "clicked"

def on_upload(change):
    f = change["new"][0]
    uploaded.value = f"{f['name']}:{len(f['content'].tobytes())}"

button.on_click(on_click)
upload.observe(on_upload, names="value")
w.VBox([progress, w.HBox([upload, button]), status, uploaded, env])
"""


def test_widgets_render_upload_and_click(lab_factory, lab_page):
    page = lab_page
    lab = lab_factory(env={"FTKIT_SMOKE_ENV": "from-server"})  # the kernel must see it
    write_notebook(lab.root_dir / "smoke" / "widgets.ipynb", ["print('first cell')", WIDGETS_CELL])
    open_notebook(page, lab, "smoke/widgets.ipynb")
    run_all_cells(page)

    # Rendered by the widget manager, not "Loading widget..." or the text repr.
    expect(page.locator(".smoke-button")).to_be_visible(timeout=30_000)
    assert page.locator(".jupyter-widgets.widget-button").count() == 1
    assert page.locator("text=Loading widget").count() == 0
    assert page.locator(".jp-OutputArea-output pre", has_text="VBox(children=").count() == 0
    expect(page.locator(".smoke-status")).to_have_text("not clicked")
    python, env_value, has_ftkit = page.locator(".smoke-env").inner_text().split("|")
    assert python == sys.executable  # the kernel is this venv's interpreter...
    assert has_ftkit == "True"  # ...so ftkit is importable there
    assert env_value == "from-server"  # the server's environment reaches the kernel
    screenshot(page, "smoke-1-rendered")

    payload = b"hello ftkit\n" * 3
    upload_file(page, {"name": "hello.txt", "mimeType": "text/plain", "buffer": payload})
    # to_have_text with a str is an exact match (has_text= is a substring: "not clicked"
    # contains "clicked"); expect() retries until the kernel's reply has updated the DOM.
    expect(page.locator(".smoke-uploaded")).to_have_text(
        f"hello.txt:{len(payload)}", timeout=15_000
    )

    bar = page.locator(".smoke-progress .progress-bar")
    expect(bar).to_have_attribute("style", re.compile(r"width:\s*0%"))
    page.locator(".smoke-button").click()
    expect(page.locator(".smoke-status")).to_have_text("clicked", timeout=15_000)
    expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"), timeout=15_000)
    expect(bar).to_have_class(re.compile(r"\bprogress-bar-success\b"))
    screenshot(page, "smoke-2-clicked")
