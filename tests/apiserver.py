"""The HTTP server for the tests, on a free loopback port: ``ftkit serve`` as a uvicorn subprocess
(start_server), or the same app under uvicorn.Server in a thread of the test process
(serve_in_thread: real sockets and HTTP, without paying FastAPI's import at every test).
Imported as ``apiserver``, like ``lab``: tests/ is on sys.path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import free_port


@dataclass
class ApiServer:
    url: str
    proc: subprocess.Popen | None
    log: Path
    token: str | None = None
    uvicorn_server: Any = None
    thread: threading.Thread | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        auth: bool = True,
        timeout: float = 60,
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, decoded JSON or raw bytes, headers) for one real HTTP request."""
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if auth and self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, got = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            status, raw, got = exc.code, exc.read(), dict(exc.headers)
        is_json = got.get("content-type", "").startswith("application/json")
        return status, json.loads(raw) if is_json else raw, got

    def upload(self, name: str, content: bytes, **kwargs: Any) -> tuple[int, Any, dict]:
        boundary = "ftkit-test-boundary-7d1c"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.request(
            "POST",
            "/upload",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            **kwargs,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.thread is not None:
            self.uvicorn_server.should_exit = True
            self.thread.join(timeout=15)
            return
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    settings, folder: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> ApiServer:
    """Start ``ftkit serve`` with the settings' environment; returns once /health answers."""
    folder.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        **settings.to_env(),
        "FTKIT_SCRATCH_DIR": str(folder / "scratch"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    for _attempt in range(3):  # the free port may be taken between choosing and binding
        port = free_port()
        log = folder / f"serve-{port}.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ftkit.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=full_env,
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        server = ApiServer(f"http://127.0.0.1:{port}", proc, log, full_env.get("FTKIT_API_TOKEN"))
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(server.url + "/health", timeout=2)
                return server
            except urllib.error.HTTPError:
                return server  # it answers (401 with a token, 503 without a broker)
            except OSError:
                time.sleep(0.1)
        server.stop()
        if "address already in use" not in server.output().lower():
            break
    raise RuntimeError(f"ftkit serve did not start within {timeout} s:\n{server.output()[-3000:]}")


def serve_in_thread(settings, folder: Path, **app_options: Any) -> ApiServer:
    """create_app(Client(settings), **app_options) under uvicorn in a daemon thread."""
    import uvicorn

    from ftkit.client import Client
    from ftkit.server.app import create_app

    folder.mkdir(parents=True, exist_ok=True)
    app = create_app(Client(settings), **app_options)
    for _attempt in range(3):
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while thread.is_alive() and not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if server.started:
            return ApiServer(
                f"http://127.0.0.1:{port}",
                None,
                folder / "no-log",
                app_options.get("token"),
                server,
                thread,
            )
        server.should_exit = True
        thread.join(timeout=5)
    raise RuntimeError("uvicorn did not start in a thread")
