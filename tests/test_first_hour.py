"""A new user's first hour: one per-user default queue whatever the working folder, local paths read
where they were typed, local model folders carried to workers that cannot see them, and a plain
warning (with a way out) when no worker is listening."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

import ftkit
from conftest import EXAMPLE_DATA, REPO, sqlite_only, wait_for
from ftkit.client import Client, WorkerWatch
from ftkit.config import Settings
from ftkit.errors import ConfigError, DatasetError, NoWorkerWarning, StorageError
from ftkit.panels.monitor import MonitorPanel
from ftkit.storage import check_model_ref, folder_digest, model_files, safe_model_name
from ftkit.worker.runtime import Runtime
from ftkit.worker.staging import stage_model


def fake_model(folder: Path, text: str = '{"model_type": "llama"}') -> Path:
    """A folder that passes the client's check (config.json); enough where nothing trains."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(text)
    (folder / "weights").mkdir()
    (folder / "weights" / "part-1.bin").write_bytes(os.urandom(3000))
    return folder


# -- where the default lives ----------------------------------------------------------------------
def test_connect_and_health_say_where_the_queue_and_storage_are(client):
    assert client.settings.queue_location in repr(client)
    assert client.settings.storage in repr(client)
    health = client.health()
    assert health["queue"] == client.settings.queue_location
    assert health["storage"] == client.settings.storage
    assert health["workers"] == 0 and health["status"] == "degraded"
    assert health["warning"].startswith(
        f"no worker is listening on the {client.settings.broker} queue {health['queue']}; "
        "start one with `ftkit worker`"
    )
    assert "@" not in health["queue"]


def test_the_cli_health_names_the_queue_and_the_missing_worker(tmp_path):
    env = {**os.environ, "FTKIT_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "--json", "health"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    health = json.loads(out.stdout)
    assert health["queue"] == str(tmp_path / "home" / "storage" / "queue.db")
    assert health["storage"] == str(tmp_path / "home" / "storage")
    assert "no worker is listening" in health["warning"] and out.returncode == 0


# -- local paths are read where they were typed -----------------------------------------------------
@sqlite_only
def test_a_missing_local_model_is_refused_before_anything_is_stored_or_queued(
    client, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        client.submit(EXAMPLE_DATA, base_model="./tiny-llama", max_steps=2)
    message = str(caught.value)
    assert str(tmp_path / "tiny-llama") in message and "does not exist" in message
    assert f"relative paths are read from {tmp_path}" in message
    assert client.jobs() == [] and client.storage.listdir("datasets") == []


@sqlite_only
def test_a_folder_without_config_json_is_refused(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adapter-only").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        client.submit(EXAMPLE_DATA, base_model="./adapter-only")
    assert client.jobs() == []


@sqlite_only
def test_relative_paths_are_resolved_in_the_callers_folder(client, tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    fake_model(folder / "my-model")
    shutil.copy(EXAMPLE_DATA, folder / "train.jsonl")
    monkeypatch.chdir(folder)
    job = client.submit("./train.jsonl", base_model="./my-model", max_steps=2)
    record = client.store.get(job.id)
    assert record["config"]["base_model"] == str(folder / "my-model")
    assert record["model"] is None, "local storage: a local worker reads the folder where it is"
    assert record["dataset"]["name"] == "train.jsonl"


@sqlite_only
def test_a_missing_data_set_path_says_where_it_was_looked_for(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=f"{tmp_path}/train.jsonl"):
        client.submit("./train.jsonl", base_model="org/model")
    assert client.jobs() == []


def test_a_hub_id_stays_a_hub_id(client):
    job = client.submit(EXAMPLE_DATA, base_model="org/some-model", max_steps=2)
    record = client.store.get(job.id)
    assert record["config"]["base_model"] == "org/some-model" and record["model"] is None


# -- local model folders in storage -----------------------------------------------------------------
def test_a_model_folders_digest_is_its_content_not_its_place(tmp_path):
    a = fake_model(tmp_path / "a", "same")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / ".git").mkdir()
    (b / ".git" / "HEAD").write_text("hidden files do not travel")
    assert [rel for rel, _ in model_files(b)] == ["config.json", "weights/part-1.bin"]
    assert folder_digest(model_files(a)) == folder_digest(model_files(b))
    (b / "config.json").write_text("other")
    assert folder_digest(model_files(a)) != folder_digest(model_files(b))
    (b / "config.json").write_text("same")
    (b / "weights" / "part-1.bin").rename(b / "weights" / "part-2.bin")
    assert folder_digest(model_files(a)) != folder_digest(model_files(b))


@pytest.mark.parametrize(
    "folder,name",
    [("tiny-llama", "tiny-llama"), ("my model (v2)", "my-model-v2"), (".hidden", "hidden"),
     ("...", "model"), ("Llama-3.1-8B", "Llama-3.1-8B")],
)  # fmt: skip
def test_stored_model_names_are_plain_folder_names(folder, name):
    assert safe_model_name(f"/x/{folder}") == name
    assert check_model_ref({"sha256": "a" * 64, "name": name})["name"] == name


@pytest.mark.parametrize(
    "ref",
    [
        None, "abc", [], {"sha256": "a" * 64}, {"sha256": "a" * 64, "name": "m", "extra": 1},
        {"sha256": "A" * 64, "name": "m"}, {"sha256": "a" * 63, "name": "m"},
        {"sha256": "a" * 64 + "\n", "name": "m"}, {"sha256": 7, "name": "m"},
        {"sha256": "a" * 64, "name": ".."}, {"sha256": "a" * 64, "name": "."},
        {"sha256": "a" * 64, "name": "../etc"}, {"sha256": "a" * 64, "name": "a/b"},
        {"sha256": "a" * 64, "name": "-rf"}, {"sha256": "a" * 64, "name": "m\n"},
        {"sha256": "a" * 64, "name": "x" * 101}, {"sha256": "a" * 64, "name": ""},
        {"sha256": "a" * 64, "name": ["m"]}, {"sha256": "a" * 64, "name": "m\\..\\x"},
    ],
)  # fmt: skip
def test_a_model_reference_from_a_record_is_checked(ref):
    with pytest.raises(StorageError, match="invalid model reference"):
        check_model_ref(ref)


def uploading_client(settings) -> Client:
    return Client(Settings.from_env(settings.to_env(), upload_models="always"))


@sqlite_only
def test_a_local_model_is_uploaded_once_under_its_digest(settings, tmp_path):
    client = uploading_client(settings)
    model = fake_model(tmp_path / "my model")
    first = client.submit(EXAMPLE_DATA, base_model=str(model), max_steps=2)
    ref = client.store.get(first.id)["model"]
    assert ref == {"sha256": folder_digest(model_files(model)), "name": "my-model"}
    stored = Path(client.storage.path(*client.storage.model_parts(ref["sha256"], ref["name"])))
    assert (stored / "config.json").read_text() == (model / "config.json").read_text()
    meta = client.storage.model_meta(ref["sha256"])
    assert meta is not None and [f["path"] for f in meta["files"]] == [
        "config.json",
        "weights/part-1.bin",
    ]
    mtime = (stored / "weights" / "part-1.bin").stat().st_mtime_ns
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    second = client.submit(EXAMPLE_DATA, base_model=str(copy), max_steps=2)
    assert client.store.get(second.id)["model"] == ref, "same content, same stored copy"
    assert (stored / "weights" / "part-1.bin").stat().st_mtime_ns == mtime, "not uploaded again"
    assert client.store.get(second.id)["config"]["base_model"] == str(copy)


def worker_runtime(client: Client, scratch: Path) -> Runtime:
    return Runtime(
        settings=client.settings,
        store=client.store,
        storage=client.storage,
        worker_id="w-test",
        scratch=scratch,
    )


@sqlite_only
def test_a_worker_stages_an_uploaded_model_once_per_machine(settings, tmp_path):
    client = uploading_client(settings)
    model = fake_model(tmp_path / "tiny")
    job = client.submit(EXAMPLE_DATA, base_model=str(model), max_steps=2)
    ref = client.store.get(job.id)["model"]
    rt = worker_runtime(client, tmp_path / "worker-scratch")
    staged = stage_model(rt, job.id, ref)
    assert staged == tmp_path / "worker-scratch" / "models" / ref["sha256"] / "tiny"
    assert folder_digest(model_files(staged)) == ref["sha256"]
    assert stage_model(rt, job.id, ref) == staged
    events = job.logs(10)
    assert any("model tiny staged from storage" in e for e in events)
    assert any("model tiny already on this machine" in e for e in events)
    assert sorted(p.name for p in staged.parent.iterdir()) == ["tiny"], "no partial left"


@sqlite_only
def test_a_worker_refuses_a_stored_model_that_does_not_match_its_digest(settings, tmp_path):
    client = uploading_client(settings)
    model = fake_model(tmp_path / "tiny")
    job = client.submit(EXAMPLE_DATA, base_model=str(model), max_steps=2)
    ref = client.store.get(job.id)["model"]
    client.storage.write_text("tampered", *client.storage.model_parts(**ref), "config.json")
    rt = worker_runtime(client, tmp_path / "worker-scratch")
    with pytest.raises(StorageError, match="does not match its digest"):
        stage_model(rt, job.id, ref)
    assert list((tmp_path / "worker-scratch" / "models" / ref["sha256"]).iterdir()) == []


@sqlite_only
def test_a_worker_keeps_staged_models_inside_its_cache(settings, tmp_path):
    client = uploading_client(settings)
    job = client.submit(EXAMPLE_DATA, base_model="org/m", max_steps=2)
    scratch, outside = tmp_path / "worker-scratch", tmp_path / "outside"
    fake_model(outside / "tiny")
    (scratch / "models").mkdir(parents=True)
    (scratch / "models" / ("b" * 64)).symlink_to(outside)  # planted by someone with disk access
    rt = worker_runtime(client, scratch)
    with pytest.raises(StorageError, match="leaves"):
        stage_model(rt, job.id, {"sha256": "b" * 64, "name": "tiny"})
    with pytest.raises(StorageError, match="invalid model reference"):
        stage_model(rt, job.id, {"sha256": "b" * 64, "name": "../../outside/tiny"})


# -- no worker listening ----------------------------------------------------------------------------
def test_wait_warns_once_when_no_worker_listens_and_keeps_its_timeout(client):
    job = client.submit(EXAMPLE_DATA, base_model="org/m", max_steps=2)

    def ours(caught) -> list:
        return [w for w in list(caught) if issubclass(w.category, NoWorkerWarning)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def cancel_once_warned() -> None:  # a job nobody runs: end the wait once it has warned
            wait_for(lambda: ours(caught), 120, "the no-worker warning")
            job.cancel()

        helper = threading.Thread(target=cancel_once_warned, daemon=True)
        helper.start()
        final = job.wait(timeout=240, progress=False, poll=0.1)
        helper.join(timeout=10)
    assert len(ours(caught)) == 1 and final["status"] == "cancelled"
    assert f"on the {client.settings.broker} queue {client.settings.queue_location}" in str(
        ours(caught)[0].message
    )
    with pytest.raises(TimeoutError):
        client.submit(EXAMPLE_DATA, base_model="org/m").wait(timeout=0.2, progress=False)


def test_the_watch_waits_a_few_heartbeats_before_it_warns(client):
    watch = WorkerWatch(client)
    assert watch.check() is None, "no warning at first sight"
    beat = client.settings.heartbeat_seconds
    message = wait_for(watch.check, 60 * beat, "the warning", interval=beat / 4)
    assert message == client.no_worker_message()


def test_the_monitor_says_no_worker_listens_and_offers_a_local_one_on_sqlite(client):
    job = client.submit(EXAMPLE_DATA, base_model="org/m", max_steps=2)
    monitor = MonitorPanel(job, autostart=False)
    notice = monitor.worker_notice
    assert notice.text.value == "" and notice.start_button.layout.display == "none"
    wait_for(
        lambda: monitor.refresh() or "no worker is listening" in notice.text.value,
        60,
        "the no-worker notice",
        interval=0.2,
    )
    assert client.settings.queue_location in notice.text.value
    offered = notice.start_button.layout.display != "none"
    assert offered == (client.settings.broker == "sqlite")
    job.cancel()
    monitor.refresh()
    assert notice.text.value == "" and notice.start_button.layout.display == "none"


def test_example_data_is_reachable_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ftkit.example_data()
    assert path.is_absolute() and path.is_file()
    assert path.read_bytes() == (REPO / "ftkit" / "examples" / "example_data.jsonl").read_bytes()


def test_notebooks_use_no_parent_folder_paths():
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        assert "../" not in notebook.read_text(), notebook.name


# -- the newcomer, end to end -------------------------------------------------------------------------
NOTEBOOK_CELL = """
import json, ftkit
print("connected:", ftkit.connect(), flush=True)
job = ftkit.submit("./train.jsonl", base_model="./tiny-llama", max_steps=4, batch_size=2,
                   learning_rate=3e-3, max_seq_length=128)
print("job:", job.id, flush=True)
print("final:", json.dumps(job.wait(timeout=900, progress=False)), flush=True)
"""


@pytest.mark.slow
def test_a_notebook_and_a_worker_in_two_folders_meet_with_nothing_configured(tiny_model, tmp_path):
    """The issue's newcomer: a notebook in one folder submits with relative paths, a worker is
    started from another folder, nothing is configured but a (fresh) home folder; the job ends."""
    notebooks, repo_root, home = tmp_path / "notebooks", tmp_path / "repo", tmp_path / "home"
    for folder in (notebooks, repo_root, home):
        folder.mkdir()
    shutil.copytree(tiny_model, notebooks / "tiny-llama")
    shutil.copy(EXAMPLE_DATA, notebooks / "train.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTKIT_", "XDG_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    client_log, worker_log = tmp_path / "notebook.log", tmp_path / "worker.log"
    notebook = subprocess.Popen(
        [sys.executable, "-c", NOTEBOOK_CELL],
        cwd=notebooks,
        env=env,
        stdout=open(client_log, "wb"),
        stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        wait_for(lambda: "job:" in client_log.read_text(), 120, "the notebook to submit")
        worker = subprocess.Popen(
            [sys.executable, "-m", "ftkit.cli", "worker"],
            cwd=repo_root,
            env=env,
            stdout=open(worker_log, "wb"),
            stderr=subprocess.STDOUT,
        )
        notebook.wait(timeout=900)
    finally:
        for proc in (notebook, worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(2)
                proc.wait(timeout=60)
    out = client_log.read_text()
    assert notebook.returncode == 0, out + worker_log.read_text()
    final = json.loads(out.split("final:", 1)[1])
    assert final["status"] == "completed", (final["error"], worker_log.read_text())
    shared = home / ".local" / "share" / "ftkit" / "storage"  # the platform's user data folder
    assert f"queue {shared / 'queue.db'}, storage {shared}" in out
    assert final["result"]["report"] == str(shared / "runs" / final["job_id"] / "report.ipynb")
    assert final["config"]["base_model"] == str(notebooks / "tiny-llama")
    assert final["model"] is None, "local storage, local worker: the folder is read in place"
    assert not (notebooks / "storage").exists() and not (repo_root / "storage").exists()


@sqlite_only
@pytest.mark.slow
def test_the_monitors_button_starts_a_local_worker_that_runs_the_job(client, tiny_model):
    job = client.submit(EXAMPLE_DATA, base_model=str(tiny_model), max_steps=4, max_seq_length=128)
    monitor = MonitorPanel(job, autostart=False)
    notice = monitor.worker_notice
    wait_for(
        lambda: monitor.refresh() or notice.start_button.layout.display != "none",
        60,
        "the start button",
        interval=0.2,
    )
    notice.start_button.click()
    started = notice.started
    assert started is not None, notice.text.value
    try:
        assert started.log.parent == Path(client.settings.home) / "logs"
        assert str(started.log) in notice.text.value and "running" in notice.text.value
        assert os.getsid(started.pid) != os.getsid(0), "detached: it outlives the kernel"
        wait_for(monitor.refresh, 600, "the job to end", interval=0.5)
        assert job.status()["status"] == "completed", job.status()["error"]
        assert started.running(), "the local worker stays for the next job"
        assert "worker" in started.log.read_text()
    finally:
        assert started.stop() == 0
