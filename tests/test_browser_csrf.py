"""A hostile page on another loopback port, in the same headless Chromium that is signed in to the
dashboard: it tries to upload, cancel and delete through fetch (no-cors, with credentials) and
through form posts, and to frame the dashboard. Another port is the same *site*, so the browser
sends the SameSite=Strict cookie: the server itself must refuse. Every attempt reaches the server
and is refused, nothing changes, and the framed dashboard does not render; the dashboard's own
Cancel button still works."""

from __future__ import annotations

import http.server
import logging
import threading
from pathlib import Path

import pytest
from apiserver import serve_in_thread
from lab import VIEWPORT, expect, screenshot

from conftest import EXAMPLE_DATA, wait_for

pytest_plugins = ["lab"]
pytestmark = [pytest.mark.browser]
TOKEN = "browser-csrf-token-0123456789"

ATTACK = """<!doctype html><html><body><h1>a page on another port</h1>
<iframe id='framed' src='{T}/' onload='window.framedLoaded = true'></iframe>
<iframe name='sink' id='sink'></iframe>
<form id='f-delete' method='post' action='{T}/delete/{B}?force=true' target='sink'></form>
<form id='f-upload' method='post' action='{T}/upload' enctype='multipart/form-data'
      target='sink'><input type='file' name='file' id='file'></form>
<script>
const T = '{T}';
window.results = {{}};
async function attempt(name, go) {{
  try {{ const r = await go(); window.results[name] = r.type + ' ' + r.status; }}
  catch (e) {{ window.results[name] = 'error ' + e; }}
}}
function post(form) {{
  return new Promise((done) => {{
    document.getElementById('sink').onload = () => done();
    document.getElementById(form).submit();
  }});
}}
(async () => {{
  const body = new FormData();
  body.append('file', new Blob(['{{"text": "forged"}}\\n']), 'forged.jsonl');
  await attempt('upload', () => fetch(T + '/upload',
    {{method: 'POST', mode: 'no-cors', credentials: 'include', body}}));
  await attempt('delete', () => fetch(T + '/delete/{B}?force=true',
    {{method: 'POST', mode: 'no-cors', credentials: 'include'}}));
  await attempt('cancel', () => fetch(T + '/job/{A}',
    {{method: 'DELETE', mode: 'cors', credentials: 'include'}}));
  await post('f-delete');
  const files = new DataTransfer();
  files.items.add(new File(['{{"text": "forged by a form"}}\\n'], 'form.jsonl'));
  document.getElementById('file').files = files.files;
  await post('f-upload');
  window.done = true;
}})();
</script></body></html>"""


class Refusals(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def serve_page(html: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A second origin: one HTML page on another loopback port."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_page_on_another_port_can_neither_forge_requests_nor_frame_the_dashboard(
    settings, tmp_path, browser
):
    api = serve_in_thread(settings, tmp_path / "api", token=TOKEN)
    refusals = Refusals()
    logging.getLogger("ftkit.server.csrf").addHandler(refusals)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    attacker = None
    try:
        up = api.upload("train.jsonl", EXAMPLE_DATA.read_bytes())[1]
        a = api.request("POST", "/train", {"job_id": up["job_id"]})[1]["job_id"]
        b = api.request("POST", "/train", {"dataset_id": up["dataset_id"]})[1]["job_id"]
        attacker, origin = serve_page(ATTACK.format(T=api.url, A=a, B=b))

        page = context.new_page()
        page.goto(api.url + "/?refresh=0")
        page.fill("input[name=token]", TOKEN)
        page.click("form[action='/login'] button")
        expect(page.locator(".n-workers")).to_have_text("0")
        cookies = context.cookies(api.url)
        assert [c["name"] for c in cookies] == ["ftkit_session"]
        assert TOKEN not in cookies[0]["value"]

        page.goto(origin + "/attack.html")
        wait_for(lambda: page.evaluate("window.done === true"), 120, "the attack to finish")
        wait_for(lambda: page.evaluate("window.framedLoaded === true"), 60, "the frame")
        results = page.evaluate("window.results")
        screenshot(page, "csrf-1-attack-page")
        framed = page.frame_locator("#framed")
        expect(framed.locator(".n-workers")).to_have_count(0)  # refused to render in a frame

        # Every forged request reached the server and was refused there (the DELETE did not get
        # past the browser's CORS preflight), and nothing changed.
        assert results["cancel"].startswith("error"), results
        wait_for(lambda: len(refusals.lines) >= 4, 60, "the four refusals")
        assert sum("/upload" in line for line in refusals.lines) == 2, refusals.lines
        assert sum(f"/delete/{b}" in line for line in refusals.lines) == 2, refusals.lines
        for job in (a, b):
            assert api.request("GET", f"/status/{job}")[1]["status"] == "queued"
        assert [p.name for p in (Path(settings.storage) / "datasets").iterdir()] == [
            up["dataset_id"]
        ]
        scratch = Path(settings.scratch_dir) / "uploads"
        assert not scratch.exists() or not any(scratch.iterdir())

        # The dashboard's own Cancel button, from its own origin, still works.
        page.goto(api.url + "/?refresh=1")
        row = page.locator(f"tr:has(a.job-link:text-is('{a}'))")
        row.locator("button.cancel").click()
        expect(row.locator(".status")).to_have_text("cancelled", timeout=60_000)
        screenshot(page, "csrf-2-own-cancel")
        assert api.request("GET", f"/status/{b}")[1]["status"] == "queued"

        # The API docs render from this server alone (no CDN), under the page's CSP.
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(api.url) else outside.append(r.url))
        page.goto(api.url + "/docs")
        expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=60_000)
        expect(page.locator(".opblock")).not_to_have_count(0)
        screenshot(page, "csrf-3-docs")
        assert not outside, outside
        page.goto(api.url + "/?refresh=0")

        # Sign-out ends the session on the server: the same cookie no longer signs anyone in.
        session = context.cookies(api.url)[0]["value"]
        page.click("form.sign-out button")
        expect(page.locator("input[name=token]")).to_be_visible()
        jar = {"Cookie": f"ftkit_session={session}"}
        assert api.request("GET", "/jobs", auth=False, headers=jar)[0] == 401
    finally:
        logging.getLogger("ftkit.server.csrf").removeHandler(refusals)
        context.close()
        if attacker is not None:
            attacker.shutdown()
        api.stop()
