"""The stack users really have, and a clean first contact: a worker that cannot import what it
needs names the package before it takes a job; a local worker that exits is never waited on in
silence; a report that could not be rendered says so; every command works as the first one run on
a fresh machine.

Broken installs are real ones: a virtual environment made here whose site-packages links to this
one's, less a package (and its metadata), as a pip install that skipped an extra leaves it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import pytest

from conftest import EXAMPLE_DATA, REPO, free_port, wait_for
from ftkit.config import Settings
from ftkit.errors import WorkerExited, WorkerExitedWarning
from ftkit.training import checkpointing_args

SITE = Path(next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)))
JOB = "abcdefabcdef"  # a well-formed job id no store holds


def stack_venv(root: Path, without: tuple[str, ...] = (), fake: dict[str, str] | None = None):
    """A virtual environment whose site-packages links to this one's, less the distributions in
    ``without`` (modules and metadata), with ``fake`` ones ({name: version}: metadata only) in
    their place; its python. No share/jupyter: nbconvert's templates are not where Jupyter looks."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    dropped = {n.lower().replace("-", "_") for n in (*without, *(fake or {}))}
    for entry in SITE.iterdir():
        stem = entry.name.split("-")[0].lower().replace("-", "_").removesuffix(".py")
        if stem not in dropped:
            (site / entry.name).symlink_to(entry)
    for name, version in (fake or {}).items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root / "bin" / "python"


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: nothing of ftkit's configured, an empty home folder."""
    home = tmp_path / "user"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FTKIT_", "XDG_", "REDIS_", "STORAGE_"))
    }
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def fresh_settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def worker_that_refuses(python: Path, env: dict[str, str]) -> str:
    """Run `ftkit worker` with this python; it must exit with code 3 (its stack refused): what
    it said."""
    out = subprocess.run(
        [str(python), "-m", "ftkit.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = out.stdout + out.stderr
    assert out.returncode == 3, said
    return said


# -- ranges that are true ---------------------------------------------------------------------------
def test_checkpointing_is_asked_for_under_the_name_this_transformers_has():
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    expected = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    assert checkpointing_args(SFTConfig) == {expected: True}

    @dataclasses.dataclass
    class Before523:  # transformers before 5.23: only the old name
        gradient_checkpointing: bool = False

    assert checkpointing_args(Before523) == {"gradient_checkpointing": True}


def test_the_floors_check_names_an_unreachable_floor(tmp_path):
    lock = tmp_path / "lowest.txt"
    lock.write_text("trl==1.7.0\naccelerate==1.9.0\n")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_floors.py"), str(lock), "--extra", "worker"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "trl 1.7.0: the floor" in out.stdout
    assert (
        "accelerate: the floor is 1.4, but the lowest installable is 1.9.0: raise it" in out.stdout
    )


# -- a worker that cannot import what it needs -----------------------------------------------------
def needs_bleach_css() -> bool:
    """nbconvert from 7.7 needs bleach[css] (so tinycss2); older ones import without it."""
    from importlib.metadata import requires

    return any(r.startswith("bleach[css]") for r in requires("nbconvert") or [])


MISSING = [
    # (left out, what the worker says of it)
    ("nbformat", "nbformat (papermill -> nbformat)"),
    pytest.param(
        "tinycss2",
        "tinycss2 (nbconvert -> bleach[css] -> tinycss2)",
        marks=pytest.mark.skipif(
            not needs_bleach_css(), reason="this nbconvert imports without tinycss2"
        ),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("missing,said_of_it", MISSING, ids=["nbformat", "tinycss2-via-an-extra"])
def test_a_worker_missing_a_needed_package_names_it_and_takes_no_job(
    tmp_path, tiny_model, missing, said_of_it
):
    """A package pip left out (for tinycss2: nbconvert needs bleach's css extra): the worker
    exits with code 3 before taking the queued job, naming the package, the chain that needs it,
    and the command."""
    python = stack_venv(tmp_path / "venv", without=(missing,))
    env = fresh_env(tmp_path, FTKIT_HOME=str(tmp_path / "home"))
    from ftkit.client import Client

    client = Client(fresh_settings(env))
    job = client.submit(client.upload_dataset(EXAMPLE_DATA), base_model=str(tiny_model))
    said = worker_that_refuses(python, env)
    assert "the worker cannot run jobs with what is installed here" in said
    assert said_of_it in said and f"fix: pip install {missing}" in said
    assert "Traceback" not in said
    assert job.status()["status"] == "queued" and not job.status().get("worker")


@pytest.mark.slow
def test_a_worker_with_a_version_outside_ftkits_range_says_which_and_how_to_fix_it(tmp_path):
    python = stack_venv(tmp_path / "venv", fake={"transformers": "4.57.6"})
    env = fresh_env(tmp_path, FTKIT_HOME=str(tmp_path / "home"))
    said = worker_that_refuses(python, env)
    assert "transformers: 4.57.6 is installed, and ftkit needs <6,>=5.0" in said
    assert "fix: pip install 'transformers<6,>=5.0'" in said


@pytest.mark.slow
@pytest.mark.parametrize("warm", ["0", "1"], ids=["child-process", "zygote"])
def test_the_start_up_import_check_finds_what_only_a_real_import_of_the_stack_meets(tmp_path, warm):
    """safetensors is nobody's floor in ftkit, but transformers cannot import without it: the
    check finds it before any job, in a child process (torch never loads in the worker) or in the
    warm kernels' zygote, which imports the same."""
    python = stack_venv(tmp_path / "venv", without=("safetensors",))
    env = fresh_env(tmp_path, FTKIT_HOME=str(tmp_path / "home"), FTKIT_WARM_KERNEL=warm)
    said = worker_that_refuses(python, env)
    assert "`import transformers` fails" in said
    assert "safetensors (transformers -> safetensors)" in said and "pip install safetensors" in said


# -- a local worker that exits -----------------------------------------------------------------------
def broken_nbconvert(tmp_path: Path) -> dict[str, str]:
    """An environment whose nbformat cannot be imported: papermill cannot either."""
    shim = tmp_path / "shim" / "nbformat"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'nbformat'\", name='nbformat')\n"
    )
    return {"PYTHONPATH": str(shim.parent)}


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_wait_and_the_panel_say_that_a_local_worker_exited_with_its_code_and_log(
    settings, client, tmp_path, tiny_model
):
    from ftkit.panels.monitor import WorkerNotice

    job = client.submit(client.upload_dataset(EXAMPLE_DATA), base_model=str(tiny_model))
    worker = client.start_local_worker(env=broken_nbconvert(tmp_path))
    try:
        # the worker's start-up check fails (exit 3): then wait() says so and keeps waiting
        wait_for(lambda: worker.exit_code() is not None, 300, "the worker to exit")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(TimeoutError):
                job.wait(timeout=5, progress=False, poll=0.2)
        exited = [w for w in caught if issubclass(w.category, WorkerExitedWarning)]
        assert len(exited) == 1, [str(w.message) for w in caught]
        message = str(exited[0].message)
        assert f"the local worker (pid {worker.pid}) exited with code 3" in message
        assert str(worker.log) in message and "No module named 'nbformat'" in message
        with pytest.raises(WorkerExited, match="exited with code 3"):
            job.wait(timeout=60, progress=False, raise_on_failure=True)
        notice = WorkerNotice(client)
        notice.refresh()
        assert f"the local worker (pid {worker.pid}) exited with code 3" in notice.text.value
        assert "No module named &#x27;nbformat&#x27;" in notice.text.value
    finally:
        worker.stop()
    assert job.status()["status"] == "queued"


@pytest.mark.slow
def test_the_demo_exits_non_zero_saying_its_worker_died_and_why(tmp_path):
    env = fresh_env(tmp_path, FTKIT_HOME=str(tmp_path / "home"), **broken_nbconvert(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "demo", "--model-dir", str(tmp_path / "model")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "exited with code 3" in out.stderr and "No module named 'nbformat'" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


# -- the report -----------------------------------------------------------------------------------
RENDER = (
    "import nbformat\n"
    "from ftkit.report import render_html\n"
    "render_html(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# hi')]))\n"
    "print('rendered')\n"
)


@pytest.mark.slow
def test_the_report_finds_nbconvert_templates_where_pip_install_target_puts_them(tmp_path):
    python = stack_venv(tmp_path / "venv")
    env = fresh_env(tmp_path)
    missing = subprocess.run([str(python), "-c", RENDER], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "No template sub-directory with name 'lab'" in missing.stderr
    target = tmp_path / "target"  # as `pip install --target` lays out the wheels' data files
    (target / "share" / "jupyter" / "nbconvert").mkdir(parents=True)
    templates = Path(sys.prefix) / "share" / "jupyter" / "nbconvert" / "templates"
    (target / "share" / "jupyter" / "nbconvert" / "templates").symlink_to(templates)
    found = subprocess.run(
        [str(python), "-c", RENDER],
        env={**env, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0 and "rendered" in found.stdout, found.stderr


@pytest.mark.slow
def test_a_job_whose_html_report_could_not_be_written_completes_saying_so(tmp_path, tiny_model):
    """A worker where nbconvert finds no templates: the job completes, its notebook report and
    adapter land, and status() carries a warning naming what went wrong."""
    python = stack_venv(tmp_path / "venv")
    env = fresh_env(
        tmp_path,
        FTKIT_HOME=str(tmp_path / "home"),
        FTKIT_WARM_KERNEL="0",
        FTKIT_CHECK_IMPORTS="0",
        FTKIT_ALLOWED_MODEL_DIRS=str(tiny_model.parent),
    )
    from ftkit.client import Client

    client = Client(fresh_settings(env))
    worker = subprocess.Popen(
        [str(python), "-m", "ftkit.cli", "worker"],
        env=env,
        stdout=open(tmp_path / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        job = client.submit(
            client.upload_dataset(EXAMPLE_DATA), base_model=str(tiny_model), max_steps=2
        )
        at_submit = job.status()["warnings"]  # its data set's duplicates: they must stay
        status = job.wait(timeout=300, progress=False)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=60)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert status["status"] == "completed", status["error"] or log[-3000:]
    assert at_submit and all("the same example as line" in w for w in at_submit), at_submit
    assert status["warnings"][:-1] == at_submit, status["warnings"]
    assert status["warnings"][-1].startswith("the HTML report was not written (")
    assert "No template sub-directory with name 'lab'" in status["warnings"][-1]
    runs = ("runs", job.id)
    assert client.storage.exists(*runs, "report.ipynb")
    assert not client.storage.exists(*runs, "report.html")
    assert client.storage.exists(*runs, "adapter", "adapter_config.json")


# -- the first command on a fresh machine -----------------------------------------------------------
ONE_SHOT = [
    ["health"],
    ["jobs"],
    ["sweeps"],
    ["status", JOB],
    ["logs", JOB],
    ["cancel", JOB],
    ["delete", JOB],
    ["sweep", JOB],
    ["download", JOB, "adapter"],
    ["gc", "--older-than", "30d", "--dry-run"],
    ["validate", str(EXAMPLE_DATA)],
    ["submit", str(EXAMPLE_DATA), "--base-model", "org/some-model", "--max-steps", "2"],
]


@pytest.mark.parametrize("args", ONE_SHOT, ids=lambda a: a[0])
def test_each_command_works_as_the_first_on_a_fresh_machine(tmp_path, args):
    env = fresh_env(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    said = out.stdout + out.stderr
    assert "Traceback" not in said, said
    if args[0] in ("status", "logs", "cancel", "delete", "sweep", "download"):
        assert out.returncode != 0 and JOB in said  # a plain "no such job", not a crash
    else:
        assert out.returncode == 0, said


def test_the_worker_and_the_server_start_first_on_a_fresh_machine(tmp_path):
    """`ftkit worker` first (the SQLite queue's folder does not exist yet), then `ftkit serve`
    first, each in a home of its own."""
    home = tmp_path / "home"  # not there yet, as on a fresh machine
    env = fresh_env(tmp_path, FTKIT_HOME=str(home), FTKIT_WARM_KERNEL="0", FTKIT_CHECK_IMPORTS="0")
    worker = subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    from ftkit.client import Client

    client = Client(fresh_settings(env))
    try:
        wait_for(
            lambda: client.workers() or worker.poll() is not None, 120, "the worker's heartbeat"
        )
        assert worker.poll() is None, worker.stdout.read() if worker.stdout else ""
    finally:
        worker.send_signal(signal.SIGINT)
        said = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0 and "Traceback" not in said, said

    other = tmp_path / "other"
    other.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ftkit.cli", "serve", "--port", str(port)],
        env=fresh_env(other),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=other,
    )

    def health():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return server.poll() is not None and {"exited": server.returncode}

    try:
        answer = wait_for(health, 120, "the server's /health")
        assert answer.get("status") == "degraded" and answer.get("workers") == 0, answer
    finally:
        server.send_signal(signal.SIGINT)
        said = server.communicate(timeout=60)[0]
    assert "Traceback" not in said, said
