"""Browser-test infrastructure: a real JupyterLab server and headless Chromium driven by Playwright.

How a test module uses it (tests/ is on sys.path because tests/conftest.py lives there and pytest's
default "prepend" import mode inserts its folder, so this module imports as ``lab``)::

    import pytest
    from lab import expect, open_notebook, run_all_cells, screenshot, upload_file, write_notebook

    pytest_plugins = ["lab"]          # registers the fixtures below (lab_server, lab_page, ...)
    pytestmark = pytest.mark.browser  # `make test-fast` deselects with -m "not browser"

    def test_panel(lab_server, lab_page):
        write_notebook(lab_server.root_dir / "panel.ipynb", ["import ftkit", "..."])
        open_notebook(lab_page, lab_server, "panel.ipynb")
        run_all_cells(lab_page)
        expect(lab_page.locator(".my-class")).to_have_text("...", timeout=30_000)
        screenshot(lab_page, "panel-1")

(ruff's isort sorts ``lab`` as third-party, next to pytest.) Nothing here imports Playwright at
module level, so collection works without it; the fixtures fail with an install hint instead.

Fixtures
    lab_server  (session) a running ``jupyter lab`` (LabServer: base_url, token, root_dir, url(),
                api(), log_text()). Its kernels run this interpreter (sys.executable, pinned with a
                private kernelspec) and inherit the server's environment: os.environ as it is when
                the fixture first runs (tests/conftest.py deletes FTKIT_* at import).
    lab_factory (session) ``lab_factory(env={"FTKIT_...": ...})`` -> a LabServer whose server and
                kernels see those variables too; one server per distinct env, reused, all stopped
                at the end of the session. ``lab_server`` is ``lab_factory()``.
    browser     (session) headless Debian Chromium (/usr/bin/chromium, see
                scripts/install-browser-deps.sh); Playwright gives every launch a fresh profile.
    lab_page    (function) a Playwright sync ``Page`` (1400x1000) in a new context. On teardown it
                saves a screenshot, the browser console and the server logs into tests/artifacts/
                when the test failed, and shuts down every kernel so the next test starts clean.
                ``page.console_log`` lists the browser console messages so far.

The server runs with ``expose_app_in_browser`` so helpers can use ``window.jupyterapp`` (the same
approach as JupyterLab's own Galata tests): commands run through the command registry and kernel
state is read from the notebook's session context instead of from fragile DOM text.

PYTEST_DONT_REWRITE: test modules import this module before ``pytest_plugins`` registers it, so
pytest could not rewrite its asserts anyway (it has none) and would warn that it cannot.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("BROWSER_TEST_CHROMIUM", "/usr/bin/chromium")  # conftest drops FTKIT_*
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these Chromium's own connections are refused here
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
]
VIEWPORT = {"width": 1400, "height": 1000}


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


@dataclass
class LabServer:
    """A ``jupyter lab`` subprocess this test session owns."""

    base_url: str  # http://127.0.0.1:PORT (no trailing slash)
    token: str
    root_dir: Path
    home: Path  # private config/settings/workspace/runtime folders
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def url(self, path: str = "/lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
        """Call the server's REST API (path like "/api/kernels"); returns decoded JSON or None."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_up(self) -> bool:
        try:
            self.api("/api/status", timeout=2)
            return True
        except (OSError, ValueError):
            return False

    def shutdown_kernels(self) -> None:
        """Delete every session and kernel (a closed page leaves its kernel running)."""
        try:
            for s in self.api("/api/sessions") or []:
                self.api(f"/api/sessions/{s['id']}", method="DELETE", timeout=30)
            for k in self.api("/api/kernels") or []:
                self.api(f"/api/kernels/{k['id']}", method="DELETE", timeout=30)
        except (OSError, ValueError):
            pass

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)


def _write_private_jupyter_home(home: Path) -> dict[str, str]:
    """Config, kernelspec and settings folders of our own, so the user's ~/.jupyter, a stray
    kernelspec or a saved workspace cannot change what the tests see. Returns the env to use."""
    config_dir, data_dir, runtime_dir = home / "config", home / "data", home / "runtime"
    settings_dir, workspaces_dir, ipython_dir = (
        home / "settings",
        home / "workspaces",
        home / "ipython",
    )
    for d in (config_dir, runtime_dir, settings_dir, workspaces_dir, ipython_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Pin "python3" to this interpreter. (The venv's own spec says argv[0] "python", which
    # jupyter_client maps to the server's sys.executable; ours is explicit and takes precedence
    # because JUPYTER_PATH comes before the user and environment data folders.)
    spec_dir = data_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "metadata": {"debugger": True},
            }
        )
    )
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "LabApp": {
                    "news_url": None,  # no announcements feed, no "get news?" toast
                    "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
                    "extension_manager": "readonly",  # no PyPI queries
                    "expose_app_in_browser": True,  # window.jupyterapp for the helpers below
                    "workspaces_dir": str(workspaces_dir),
                    "user_settings_dir": str(settings_dir),
                },
                "ServerApp": {"terminals_enabled": False},
                "MappingKernelManager": {"default_kernel_name": "python3"},
            }
        )
    )
    # User settings: no "get Jupyter news?" toast over the page; every cell attached to the DOM
    # (Lab's default windowing mode can leave off-screen cells' outputs out of the DOM).
    user_settings = {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"windowingMode": "none"},
    }
    for name, values in user_settings.items():
        f = settings_dir / "@jupyterlab" / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    return {
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_DATA_DIR": str(data_dir),
        "JUPYTER_PATH": str(data_dir),
        "JUPYTER_RUNTIME_DIR": str(runtime_dir),
        "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
        "JUPYTERLAB_WORKSPACES_DIR": str(workspaces_dir),
        "IPYTHONDIR": str(ipython_dir),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PYTHONUNBUFFERED": "1",
    }


def start_lab(
    root_dir: Path, env: dict[str, str] | None = None, timeout: float = 60, home: Path | None = None
) -> LabServer:
    """Start ``jupyter lab`` on a free loopback port serving root_dir; returns once /api/status
    answers. ``env`` is added to os.environ for the server and so for its kernels. Call .stop()."""
    root_dir = Path(root_dir).resolve()
    root_dir.mkdir(parents=True, exist_ok=True)
    home = Path(home) if home else root_dir.parent / f".lab-home-{uuid.uuid4().hex[:8]}"
    full_env = {**os.environ, **_write_private_jupyter_home(home), **(env or {})}
    last_log = ""
    for _attempt in range(3):  # the free port may be taken between choosing and binding
        token = secrets.token_hex(16)
        port = free_port()
        log_path = home / f"lab-{port}.log"
        args = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root_dir}",
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                env=full_env,
                cwd=root_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = LabServer(
            f"http://127.0.0.1:{port}", token, root_dir, home, proc, log_path, full_env
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if server.is_up():
                return server
            time.sleep(0.2)
        last_log = server.log_text()
        server.stop()
        if "already in use" not in last_log and "Address already" not in last_log:
            break
    raise RuntimeError(f"jupyter lab did not start within {timeout} s:\n{last_log[-5000:]}")


class LabFactory:
    """Starts servers on demand, one per distinct extra environment, each with its own root and
    home folder under base; reuses a running one for the same env; stops them all at the end."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.servers: dict[tuple[tuple[str, str], ...], LabServer] = {}

    def __call__(self, env: dict[str, str] | None = None, timeout: float = 60) -> LabServer:
        key = tuple(sorted((env or {}).items()))
        server = self.servers.get(key)
        if server is None or server.proc.poll() is not None:
            n = len(self.servers)
            server = start_lab(
                self.base / f"root{n}", env=env, timeout=timeout, home=self.base / f"home{n}"
            )
            self.servers[key] = server
        return server

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def lab_factory(tmp_path_factory) -> Iterator[LabFactory]:
    factory = LabFactory(tmp_path_factory.mktemp("lab"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def lab_server(lab_factory) -> LabServer:
    """The session's default server: os.environ as it is now, plus nothing."""
    return lab_factory()


# --------------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    hint = "run `bash scripts/install-browser-deps.sh .venv` (or `make browser-deps`)"
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: {hint}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is missing: {hint}")

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def lab_page(request, browser, lab_factory) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
    page.console_log = console  # type: ignore[attr-defined]
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:  # the call phase was reported failed
        name = _safe(request.node.name)
        try:
            screenshot(page, f"FAILED-{name}")
        except Exception:  # noqa: BLE001 - best effort on a page that may be broken
            pass
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"FAILED-{name}.console.txt").write_text("\n".join(console))
        for i, server in enumerate(lab_factory.servers.values()):
            (ARTIFACTS / f"FAILED-{name}.lab{i}.log").write_text(server.log_text())
    context.close()
    for server in lab_factory.servers.values():
        server.shutdown_kernels()


def expect(*args, **kwargs):
    """playwright.sync_api.expect, imported on use so that collecting a browser test module
    works where Playwright is not installed (`make test-fast` deselects those tests)."""
    from playwright.sync_api import expect as _expect

    return _expect(*args, **kwargs)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def screenshot(page, name: str, full_page: bool = False) -> Path:
    """Save a PNG into tests/artifacts/ (git-ignored) and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{_safe(name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# --------------------------------------------------------------------------------------------------
# Notebooks
# --------------------------------------------------------------------------------------------------


def write_notebook(path: Path, cells: Sequence[str]) -> Path:
    """Write code cells as a notebook with python3 kernelspec metadata (without it Lab asks
    which kernel to use in a dialog)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


_KERNEL_STATE_JS = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.status + '/' + k.connectionStatus : 'none';
}"""


def open_notebook(page, lab: LabServer, relpath: str, timeout: float = 60) -> None:
    """Open root-relative relpath in Lab and return once the notebook is shown, its kernel is
    connected and idle. Each call uses a new, empty workspace, so tabs opened by earlier tests are
    not restored (each restored notebook would start a kernel of its own)."""
    ms = timeout * 1000
    workspace = f"t{uuid.uuid4().hex[:10]}"
    page.goto(
        lab.url(f"/lab/workspaces/{workspace}/tree/{relpath}"),
        wait_until="domcontentloaded",
        timeout=ms,
    )
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=ms)
    page.evaluate("() => window.jupyterapp.restored")
    page.wait_for_function(
        """(path) => {
             const w = window.jupyterapp.shell.currentWidget;
             return !!(w && w.context && w.context.path === path && w.context.isReady
                       && w.sessionContext && w.sessionContext.isReady);
           }""",
        arg=relpath,
        timeout=ms,
    )
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.wait_for(timeout=ms)
    wait_for_kernel_idle(page, timeout)


def wait_for_kernel_idle(page, timeout: float = 60) -> None:
    """Wait until the current notebook's kernel is connected and idle."""
    try:
        page.wait_for_function(
            f"() => ({_KERNEL_STATE_JS})() === 'idle/connected'",
            timeout=timeout * 1000,
            polling=100,
        )
    except Exception as exc:
        state = page.evaluate(_KERNEL_STATE_JS)
        raise AssertionError(f"kernel not idle after {timeout} s (state {state})") from exc


def run_all_cells(page, timeout: float = 120) -> None:
    """Run every cell of the current notebook through the command registry and return when every
    cell's execute_reply arrived and the kernel is idle. Raises if a cell raised (the command's
    result is false) so tracebacks are not silently skipped."""
    ok = page.evaluate(
        """async (ms) => {
             const run = window.jupyterapp.commands.execute('notebook:run-all-cells');
             const timer = new Promise((_, reject) =>
               setTimeout(() => reject(new Error('run-all-cells timed out')), ms));
             return await Promise.race([run, timer]);
           }""",
        timeout * 1000,
    )
    wait_for_kernel_idle(page, timeout)
    if ok is False:
        raise AssertionError("a cell raised:\n" + cell_errors(page))


def run_cell(page, index: int, timeout: float = 120) -> None:
    """Run one cell of the current notebook (0-based ``index``) alone, as Shift+Enter on it would
    without moving on, and return when its reply arrived and the kernel is idle. Raises if the cell
    raised. (A click inside a cell's output makes that cell the active one: the index says which.)"""
    ok = page.evaluate(
        """async ([index, ms]) => {
             const app = window.jupyterapp;
             const notebook = app.shell.currentWidget.content;
             notebook.activeCellIndex = index;
             notebook.deselectAll();
             const run = app.commands.execute('notebook:run-cell');
             const timer = new Promise((_, reject) =>
               setTimeout(() => reject(new Error('run-cell timed out')), ms));
             return await Promise.race([run, timer]);
           }""",
        [index, timeout * 1000],
    )
    wait_for_kernel_idle(page, timeout)
    if ok is False:
        raise AssertionError(f"cell {index} raised:\n" + cell_errors(page))


def cell_errors(page) -> str:
    """The text of every error output in the current notebook."""
    return "\n---\n".join(
        page.locator(
            ".jp-OutputArea-output[data-mime-type*='error'], "
            ".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']"
        ).all_inner_texts()
    )


def upload_file(
    scope,
    files: str | Path | Sequence[str | Path] | dict | Sequence[dict],
    nth: int = 0,
    timeout: float = 30,
) -> None:
    """Choose files in an ipywidgets FileUpload as a user would: click the widget's button and
    answer the file chooser. (ipywidgets 8 keeps its <input type=file> detached from the DOM, so
    set_input_files on a locator cannot reach it; Playwright's file-chooser event can.)
    scope is a Page or a Locator to search in (e.g. the panel's output area); nth picks among
    several FileUpload widgets; files are paths or Playwright payloads {"name", "mimeType",
    "buffer"}. The widget then reads the files and syncs .value to the kernel asynchronously:
    wait for the effect you expect."""
    items = [files] if isinstance(files, (str, Path, dict)) else list(files)
    payload = [str(f) if isinstance(f, Path) else f for f in items]
    page = getattr(scope, "page", scope)  # Locator.page, or the Page itself
    button = scope.locator("button.widget-upload").nth(nth)
    with page.expect_file_chooser(timeout=timeout * 1000) as chooser:
        button.click(timeout=timeout * 1000)
    chooser.value.set_files(payload, timeout=timeout * 1000)
