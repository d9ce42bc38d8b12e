"""TrainConfig refuses bad values before anything is queued; Settings reads the environment."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ftkit.config import Settings, TrainConfig
from ftkit.errors import ConfigError


def test_defaults_match_the_documented_recipe():
    c = TrainConfig()
    assert (c.base_model, c.max_steps, c.batch_size, c.learning_rate) == (
        "unsloth/llama-3-8b-bnb-4bit",
        60,
        2,
        2e-4,
    )
    assert (c.lora_r, c.lora_alpha, c.max_seq_length, c.backend) == (16, 16, 2048, "auto")


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("DEFAULT_MODEL", "org/model")
    monkeypatch.setenv("FTKIT_DEFAULT_MAX_STEPS", "7")
    monkeypatch.setenv("DEFAULT_BATCH_SIZE", "3")
    monkeypatch.setenv("DEFAULT_LEARNING_RATE", "0.001")
    c = TrainConfig()
    assert (c.base_model, c.max_steps, c.batch_size, c.learning_rate) == ("org/model", 7, 3, 0.001)


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        TrainConfig.from_dict({"learnig_rate": 1e-4})


@pytest.mark.parametrize("field,value", [
    ("learning_rate", 0), ("learning_rate", -1e-4), ("learning_rate", math.nan), ("learning_rate", math.inf),
    ("learning_rate", "0.001"), ("max_steps", 0), ("max_steps", 2.5), ("max_steps", "60"), ("max_steps", True),
    ("lora_r", 0), ("batch_size", -1), ("batch_size", 10**12), ("lora_dropout", 1.0), ("validation_split", -0.1),
    ("backend", "tensorflow"), ("base_model", ""), ("base_model", "a\nimport os"), ("load_in_4bit", "yes"),
    ("max_seq_length", 4),
])  # fmt: skip
def test_out_of_range_values_are_refused_with_the_field_name(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({field: value})


def test_max_steps_none_means_epochs():
    assert TrainConfig(max_steps=None, num_epochs=2.0).max_steps is None


def test_settings_default_to_embedded_sqlite_and_local_folder():
    s = Settings.from_env({})
    assert s.broker == "sqlite" and s.redis_url is None
    assert s.storage == str(Path("storage").resolve()) and s.queue_db == str(
        Path("storage/queue.db").resolve()
    )


def test_settings_build_a_redis_url_from_parts_with_an_escaped_password():
    s = Settings.from_env(
        {
            "REDIS_HOST": "redis.internal",
            "REDIS_PORT": "6380",
            "REDIS_DB": "2",
            "REDIS_PASSWORD": "p@ss/w",
        }
    )
    assert s.redis_url == "redis://:p%40ss%2Fw@redis.internal:6380/2" and s.broker == "redis"


def test_settings_accept_tls_redis_urls():
    assert Settings.from_env({"FTKIT_REDIS_URL": "rediss://:pw@host:6380/0"}).redis_url.startswith(
        "rediss://"
    )


def test_settings_refuse_a_non_redis_url():
    with pytest.raises(ConfigError, match="redis://"):
        Settings.from_env({"FTKIT_REDIS_URL": "http://host"})


def test_settings_s3_from_parts():
    s = Settings.from_env(
        {
            "STORAGE_TYPE": "s3",
            "S3_BUCKET": "b",
            "S3_PREFIX": "team/ft",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        }
    )
    assert s.storage == "s3://b/team/ft" and s.s3_endpoint_url == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="S3_BUCKET"):
        Settings.from_env({"STORAGE_TYPE": "s3"})


def test_dotenv_is_read_and_real_variables_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "# comment\nexport FTKIT_STORAGE='/data/ft'\nREDIS_HOST=from-dotenv\n"
    )
    monkeypatch.setenv("REDIS_HOST", "from-env")
    s = Settings.from_env()
    assert s.storage == "/data/ft" and s.redis_url == "redis://from-env:6379/0"
