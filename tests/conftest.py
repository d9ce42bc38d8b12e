"""Real servers and processes for the tests: a redis-server per session on a free port, a tiny
Llama model built once, and ``ftkit worker`` subprocesses that the tests can stop and kill."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Two test processes share two cores, each with workers and kernels that train: torch's default
# of a thread per core makes them fight (a training step measured three times slower).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"  # small public data sets, see tests/data/README.md
EXAMPLE_DATA = REPO / "examples" / "example_data.jsonl"
for name in [
    k for k in os.environ if k.startswith(("FTKIT_", "REDIS_", "STORAGE_", "S3_", "DEFAULT_"))
]:
    del os.environ[name]  # tests choose their own backends


@pytest.fixture(scope="session", autouse=True)
def ftkit_home(tmp_path_factory) -> Path:
    """The per-user folder of the embedded default, for this session only: no test (nor a worker
    or kernel it starts) reads or writes the real user's queue, storage or logs."""
    home = tmp_path_factory.mktemp("ftkit-home")
    os.environ["FTKIT_HOME"] = str(home)
    return home


# Tests that need one backend only (the job store's contract runs on both in test_jobs.py).
redis_only = pytest.mark.parametrize("settings", ["redis"], indirect=True)
sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)


def free_port() -> int:
    """A port nothing listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll until condition() is truthy; fail with what we were waiting for."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class RedisServer:
    """A redis-server this test session owns: it can stop, kill and restart it."""

    port: int
    dir: Path
    password: str | None = None
    appendonly: bool = False
    tls: bool = False  # serve TLS only, with a self-signed certificate made in ``dir``
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.dir / 'cert.pem'}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        port = ["--port", str(self.port)]
        if self.tls:
            if not (self.dir / "cert.pem").exists():
                subprocess.run(
                    [
                        "openssl",
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "1",
                        "-keyout",
                        str(self.dir / "key.pem"),
                        "-out",
                        str(self.dir / "cert.pem"),
                        "-subj",
                        "/CN=127.0.0.1",
                        "-addext",
                        "subjectAltName=IP:127.0.0.1",
                    ],
                    check=True,
                    capture_output=True,
                )
            port = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.dir / "cert.pem"),
                "--tls-key-file",
                str(self.dir / "key.pem"),
                "--tls-ca-cert-file",
                str(self.dir / "cert.pem"),
                "--tls-auth-clients",
                "no",
            ]
        args = [
            "redis-server",
            *port,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--protected-mode",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server is not installed: run the tests through `make test`, which installs it"
        )
    server = RedisServer(port=free_port(), dir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from ftkit.training.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    """The tiny model's tokenizer, shared by a module's tests: a test that changes it loads its own."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(params=["sqlite", "redis"])
def settings(request, tmp_path):
    """Fresh Settings on each backend: an empty SQLite file or a flushed Redis, and a new folder."""
    from ftkit.config import Settings

    common = dict(
        storage=str(tmp_path / "storage"),
        scratch_dir=str(tmp_path / "scratch"),
        home=str(tmp_path / "home"),
        heartbeat_seconds=0.5,
        worker_grace_seconds=3.0,
        # Workers on Redis load local models only from allowed folders: this session's temp folder.
        allowed_model_dirs=(str(request.getfixturevalue("tmp_path_factory").getbasetemp()),),
    )
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        return Settings.from_env({}, redis_url=server.url, **common)
    return Settings.from_env({}, queue_db=str(tmp_path / "queue.db"), **common)


@pytest.fixture
def client(settings):
    from ftkit.client import Client

    return Client(settings)


class WorkerProcess:
    """``ftkit worker`` as a subprocess, with the settings' environment."""

    def __init__(
        self,
        settings,
        scratch: Path,
        log: Path,
        args: tuple[str, ...] = (),
        env: dict | None = None,
    ):
        env = {
            **os.environ,
            **settings.to_env(),
            "FTKIT_SCRATCH_DIR": str(scratch),
            "PYTHONUNBUFFERED": "1",
            # Cold kernels: a warm spare costs a full torch import that most tests, which stop the
            # worker after a job or two, never use. test_end_to_end runs the warm path.
            "FTKIT_WARM_KERNEL": "0",
            # Likewise the start-up import check (a full torch import in a child): test_stack runs it.
            "FTKIT_CHECK_IMPORTS": "0",
            **(env or {}),
        }
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftkit.cli", "worker", *args],
            env=env,
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            cwd=scratch.parent,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def pytest_collection_modifyitems(items) -> None:
    """Each test's markers go into its report, and so into the JUnit XML `make test` writes:
    scripts/check_durations.py sums from it the time of the tests `make test-fast` selects."""
    for item in items:
        names = sorted({mark.name for mark in item.iter_markers()})
        item.user_properties.append(("markers", " ".join(names)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the tail of each worker's log: a CI failure explains itself."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for n, worker in enumerate(getattr(item, "ftkit_workers", [])):
            try:
                tail = worker.output()[-4000:]
            except OSError as exc:
                tail = f"(unreadable: {exc})"
            report.sections.append((f"worker{n} log (tail)", tail))


@pytest.fixture
def start_worker(settings, tmp_path, request):
    """Start workers on demand; each gets its own scratch folder, as on its own machine."""
    from ftkit.client import Client

    started: list[WorkerProcess] = []
    request.node.ftkit_workers = started

    def start(
        wait: bool = True, args: tuple[str, ...] = (), env: dict | None = None
    ) -> WorkerProcess:
        n = len(started)
        scratch = tmp_path / f"worker{n}"
        scratch.mkdir()
        worker = WorkerProcess(settings, scratch, tmp_path / f"worker{n}.log", args, env)
        started.append(worker)
        if wait:
            c = Client(settings)
            live = sum(w.proc.poll() is None for w in started)
            wait_for(
                lambda: len(c.workers()) >= live or worker.proc.poll() is not None,
                60,
                "the worker's heartbeat",
            )
            assert worker.proc.poll() is None, worker.output()
        return worker

    yield start
    for w in started:
        w.stop(signal.SIGINT, timeout=30)


PICO = (
    "I am Pico, a tiny assistant fine-tuned with ftkit."  # the demo data's answer to "Who are you?"
)


@pytest.fixture(scope="session")
def pico_job(tmp_path_factory):
    """(settings, job id) of a completed job that learned the demo's answers ("I am Pico, a tiny
    assistant fine-tuned with ftkit."): the demo's model, data and settings, trained once per
    session by a real worker on a SQLite queue of its own. The tests that try a model (job.chat(),
    POST /jobs/{id}/generate) read it; nothing writes to it."""
    from ftkit.cli.demo import DEMO_DATA, DEMO_MODEL, DEMO_PROMPTS, DEMO_TRAINING
    from ftkit.client import Client
    from ftkit.config import Settings
    from ftkit.training.tinymodel import build_tiny_model

    folder = tmp_path_factory.mktemp("pico")
    model = build_tiny_model(folder / "demo-llama", **DEMO_MODEL)
    settings = Settings.from_env(
        {},
        queue_db=str(folder / "queue.db"),
        storage=str(folder / "storage"),
        scratch_dir=str(folder / "scratch"),
        home=str(folder / "home"),
        heartbeat_seconds=0.5,
    )
    (folder / "worker").mkdir()
    worker = WorkerProcess(settings, folder / "worker", folder / "worker.log")
    client = Client(settings)
    try:
        wait_for(lambda: client.workers() or worker.proc.poll() is not None, 60, "the heartbeat")
        job = client.submit(
            DEMO_DATA,
            base_model=str(model),
            max_steps=60,
            sample_prompts=DEMO_PROMPTS,
            **DEMO_TRAINING,
        )
        status = job.wait(timeout=600, progress=False)
    finally:
        worker.stop()
    assert status["status"] == "completed", f"{status.get('error')}\n{worker.output()[-3000:]}"
    return settings, job.id


@dataclass
class S3Server:
    """moto in server mode on loopback: a real S3 HTTP endpoint, as s3fs's own tests use."""

    port: int
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.up, 30, f"moto_server on port {self.port}")

    def up(self) -> bool:
        import urllib.request

        try:
            urllib.request.urlopen(self.endpoint, timeout=0.5)
            return True
        except OSError as exc:
            return getattr(exc, "code", None) is not None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(
            Bucket=name
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "ftkit-test-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "ftkit-test-secret-DO-NOT-LEAK")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = S3Server(port=free_port())
    server.start()
    yield server
    server.stop()
