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


def test_settings_default_to_embedded_sqlite_in_the_per_user_folder(tmp_path):
    s = Settings.from_env({"FTKIT_HOME": str(tmp_path)})
    assert s.broker == "sqlite" and s.redis_url is None
    assert s.storage == str(tmp_path / "storage") and s.queue_db == str(
        tmp_path / "storage" / "queue.db"
    )
    assert s.home == str(tmp_path) and s.queue_location == s.queue_db


def test_without_ftkit_home_the_default_is_the_platform_user_data_folder(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s = Settings.from_env({})
    expected = Path(platformdirs.user_data_dir("ftkit", appauthor=False)).resolve()
    assert expected.is_relative_to(tmp_path / "xdg")
    assert s.storage == str(expected / "storage") and s.home == str(expected)
    assert not expected.exists(), "reading settings creates nothing"


def test_the_default_is_the_same_from_any_working_folder(tmp_path, monkeypatch):
    seen = set()
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / folder)
        s = Settings.from_env({"FTKIT_HOME": str(tmp_path / "home")})
        seen.add((s.storage, s.queue_db))
    assert len(seen) == 1


def test_the_queue_follows_a_storage_folder_given_to_connect(tmp_path):
    s = Settings.from_env({"FTKIT_HOME": str(tmp_path / "home")}, storage=str(tmp_path / "mine"))
    assert s.queue_db == str(tmp_path / "mine" / "queue.db")


def test_queue_location_never_shows_the_redis_password():
    s = Settings.from_env({"FTKIT_REDIS_URL": "redis://:s3cret@cache.internal:6380/2"})
    assert s.queue_location == "redis://cache.internal:6380/2"


def test_upload_models_is_auto_always_or_never():
    assert Settings.from_env({}).upload_models == "auto"
    assert Settings.from_env({"FTKIT_UPLOAD_MODELS": "Always"}).upload_models == "always"
    with pytest.raises(ConfigError, match="FTKIT_UPLOAD_MODELS"):
        Settings.from_env({"FTKIT_UPLOAD_MODELS": "sometimes"})


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


def test_each_method_takes_only_its_own_settings():
    """A preference setting set for a method that does not use it is refused, naming the method,
    never silently ignored; KTO needs two answers in a batch."""
    assert TrainConfig(base_model="m", method="dpo", beta=0.2, dpo_loss_type="ipo").preference
    assert not TrainConfig(base_model="m").preference
    with pytest.raises(
        ConfigError, match="applies to method='dpo' or 'orpo' or 'kto', not method='sft'"
    ) as e:
        TrainConfig(base_model="m", beta=0.2)
    assert e.value.field == "beta"
    with pytest.raises(ConfigError, match="applies to method='dpo', not method='kto'"):
        TrainConfig(base_model="m", method="kto", dpo_loss_type="ipo")
    with pytest.raises(ConfigError, match="must be one of sigmoid, ipo, hinge, robust"):
        TrainConfig(base_model="m", method="dpo", dpo_loss_type="nope")
    with pytest.raises(ConfigError, match="must be one of sft, dpo, orpo, kto"):
        TrainConfig(base_model="m", method="ppo")
    with pytest.raises(ConfigError, match="must be a number > 0"):
        TrainConfig(base_model="m", method="kto", kto_desirable_weight=0)
    with pytest.raises(ConfigError, match="KTO compares within a batch") as e:
        TrainConfig(base_model="m", method="kto", batch_size=1)
    assert e.value.field == "batch_size"


@pytest.mark.parametrize(
    "settings,field,said",
    [
        ({"devices": 0}, "devices", "must be 1 to 64"),
        ({"devices": 2.0}, "devices", "whole number"),
        ({"sharding": "zero3"}, "sharding", "must be one of none, fsdp"),
        ({"sharding": "fsdp"}, "sharding", "set devices >= 2"),
        ({"devices": 2, "backend": "unsloth"}, "backend", "unsloth trains on one device"),
        ({"devices": 2, "auto_batch_size": True}, "auto_batch_size", "choose batch_size"),
        ({"devices": 2, "sharding": "fsdp", "method": "dpo"}, "sharding", "sharding='none'"),
    ],
)
def test_devices_are_refused_where_no_worker_could_run_them(settings, field, said):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(base_model="org/model", **settings)
    assert caught.value.field == field and said in str(caught.value)


def test_the_effective_batch_counts_every_device():
    config = TrainConfig(
        base_model="org/model", devices=4, batch_size=2, gradient_accumulation_steps=3
    )
    assert config.effective_batch == 24
    assert TrainConfig(base_model="org/model", devices=2, method="dpo").devices == 2
