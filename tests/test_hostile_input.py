"""A catalogue of hostile or broken input at every entry point (API, CLI, panel): each gets a clear
refusal, and nothing is written or queued."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import subprocess
import sys

import pytest

from conftest import EXAMPLE_DATA
from ftkit.errors import ConfigError, DatasetError, FtkitError

BAD_CONFIGS = [
    ({"learning_rate": math.nan}, "learning_rate"), ({"learning_rate": -1}, "learning_rate"),
    ({"learning_rate": 1e9}, "learning_rate"), ({"max_steps": -5}, "max_steps"), ({"max_steps": 10**15}, "max_steps"),
    ({"batch_size": "8"}, "batch_size"), ({"lora_r": 1.5}, "lora_r"), ({"lora_dropout": math.inf}, "lora_dropout"),
    ({"base_model": "x\n__import__('os').system('id')"}, "base_model"), ({"backend": "os.system('id')"}, "backend"),
    ({"__class__": "x"}, "unknown TrainConfig key"), ({"eval": "1"}, "unknown TrainConfig key"),
    ({"sample_prompts": "not a list"}, "sample_prompts"), ({"sample_prompts": ["x"] * 100}, "sample_prompts"),
    ({"timeout_minutes": -1}, "timeout_minutes"),
]  # fmt: skip


def nothing_written(client) -> bool:
    return (
        client.store.count() == 0
        and client.huey.pending_count() == 0
        and not client.storage.listdir("datasets")
    )


@pytest.mark.parametrize("values,named", BAD_CONFIGS)
def test_api_refuses_bad_config_and_writes_nothing(client, values, named):
    with pytest.raises(ConfigError, match=named):
        client.submit(EXAMPLE_DATA, **values)
    assert nothing_written(client)


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "a/b.jsonl", "..", "x\0y.jsonl", "a" * 300]
)
def test_api_refuses_path_traversal_in_data_set_names(client, name):
    with pytest.raises(DatasetError, match="invalid data set name"):
        client.upload_dataset(EXAMPLE_DATA, name=name)
    assert nothing_written(client)


@pytest.mark.parametrize("name", ["dataset.json", "Dataset.JSON"])
def test_a_data_set_may_not_take_the_name_of_its_metadata(client, tmp_path, name):
    with pytest.raises(DatasetError, match="holds its metadata"):
        client.upload_dataset(EXAMPLE_DATA, name=name)
    same_name = tmp_path / name
    same_name.write_bytes(EXAMPLE_DATA.read_bytes())
    with pytest.raises(DatasetError, match="name='train.json'"):
        client.upload_dataset(same_name)
    assert nothing_written(client)


@pytest.mark.parametrize(
    "columns,named",
    [("{instruction: question}", "not valid JSON"), ('["question"]', "must map"),
     ('{"questoin": "q"}', "unknown field")],
)  # fmt: skip
def test_cli_refuses_bad_columns_with_a_message_not_a_traceback(columns, named):
    out = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "validate", str(EXAMPLE_DATA), "--columns", columns],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("dataset_id", ["../../etc", "zzzz", "abc", "*"])
def test_api_refuses_unknown_or_malformed_data_set_ids(client, dataset_id):
    with pytest.raises(FtkitError):
        client.submit(dataset_id, max_steps=1)
    assert client.store.count() == 0


def test_a_base_model_outside_the_allowed_folders_is_refused(tmp_path, settings):
    from ftkit.client import Client

    # The fixture's own settings (its flushed Redis or its fresh SQLite file, its folders), with only
    # the allowed folders changed: the count below sees this test's records and no other's.
    client = Client(
        dataclasses.replace(settings, allowed_model_dirs=(str((tmp_path / "models").resolve()),))
    )
    for model in ("/etc", str(tmp_path / "models" / ".." / "elsewhere"), "~/.ssh"):
        with pytest.raises(ConfigError, match="FTKIT_ALLOWED_MODEL_DIRS"):
            client.submit(EXAMPLE_DATA, base_model=model)
    assert client.store.count() == 0


def test_an_absurdly_large_or_binary_upload_is_refused_cleanly(client, tmp_path):
    binary = tmp_path / "x.jsonl"
    binary.write_bytes(b"\x00\xff" * 50_000)
    with pytest.raises(DatasetError, match="binary"):
        client.upload_dataset(binary)
    assert nothing_written(client)


@pytest.mark.parametrize("args,named", [
    (["--learning-rate", "nan"], "learning_rate"), (["--max-steps", "abc"], "invalid int value"),
    (["--batch-size", "-1"], "batch_size"), (["--backend", "evil"], "backend"), (["--load-in-4bit", "maybe"], "true or false"),
])  # fmt: skip
def test_cli_refuses_bad_values_and_writes_nothing(settings, args, named):
    env = {"PATH": "/usr/bin:/bin", **settings.to_env()}
    out = subprocess.run(
        [sys.executable, "-m", "ftkit.cli", "submit", str(EXAMPLE_DATA), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode != 0 and named in out.stderr
    from ftkit.client import Client

    assert nothing_written(Client(settings))


def test_panel_keeps_submit_disabled_for_hostile_values(client):
    from ftkit.panels.train import Panel

    panel = Panel(client)
    panel.upload.load(EXAMPLE_DATA)
    panel.configure.controls["base_model"].value = "x\nimport os"
    assert panel.submit_button.disabled and "base_model" in panel.configure.error.value
    panel.configure.controls["base_model"].value = "org/model"
    panel.configure.controls["learning_rate"].value = -1.0
    assert panel.submit_button.disabled
    assert panel.submit() is None and client.store.count() == 0


def test_queue_messages_are_json_and_a_pickle_payload_is_never_unpickled():
    from ftkit.queue import JsonSerializer

    class Boom:
        def __reduce__(self):
            return (sys.exit, ("unpickled!",))

    serializer = JsonSerializer()
    with pytest.raises((ValueError, UnicodeDecodeError, json.JSONDecodeError)):
        serializer.deserialize(pickle.dumps(Boom()))


def test_with_a_queue_secret_a_forged_message_is_refused():
    from huey.registry import Message

    from ftkit.queue import JsonSerializer

    honest, forger = JsonSerializer("team-secret"), JsonSerializer(None)
    message = Message(
        id="1",
        name="ftkit.run_job",
        eta=None,
        retries=0,
        retry_delay=0,
        priority=0,
        args=["job"],
        kwargs={},
        on_complete=None,
        on_error=None,
        expires=None,
        expires_resolved=None,
    )
    assert honest.deserialize(honest.serialize(message)).args == ["job"]
    with pytest.raises(ValueError, match="bad signature"):
        honest.deserialize(forger.serialize(message))
    with pytest.raises(ValueError, match="bad signature"):
        honest.deserialize(JsonSerializer("guess").serialize(message))
