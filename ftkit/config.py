"""Settings from the environment (and ``.env``), and the validated training configuration."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import ConfigError

BACKENDS = ("auto", "unsloth", "hf")


def read_dotenv(path: str | os.PathLike = ".env") -> dict[str, str]:
    """Parse a ``.env`` file (KEY=VALUE lines, # comments, optional quotes, optional ``export``)."""
    values: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        return values
    for raw in p.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _environ(env: dict[str, str] | None) -> dict[str, str]:
    """The process environment over ``.env``: real variables win."""
    if env is not None:
        return env
    return {**read_dotenv(), **os.environ}


def _first(env: dict[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return value
    return None


@dataclass(frozen=True)
class Settings:
    """Where the queue, job records and files live; read once from the environment."""

    redis_url: str | None = None  # None: the embedded SQLite queue
    storage: str = "./storage"  # any fsspec URL: a folder, s3://bucket/prefix, memory://...
    queue_db: str = "./storage/queue.db"  # the SQLite file when redis_url is None
    s3_endpoint_url: str | None = None
    scratch_dir: str = "~/.cache/ftkit"  # a worker's local working folder (data cache, runs)
    heartbeat_seconds: float = 5.0
    worker_grace_seconds: float = 60.0
    allowed_model_dirs: tuple[str, ...] = ()

    @property
    def broker(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        e = _environ(env)
        redis_url = _first(e, "FTKIT_REDIS_URL", "REDIS_URL")
        if redis_url is None and _first(e, "REDIS_HOST"):
            password = _first(e, "REDIS_PASSWORD")
            auth = f":{quote(password, safe='')}@" if password else ""
            redis_url = (
                f"redis://{auth}{e['REDIS_HOST']}:{_first(e, 'REDIS_PORT') or 6379}"
                f"/{_first(e, 'REDIS_DB') or 0}"
            )
        storage = _first(e, "FTKIT_STORAGE")
        if storage is None:
            kind = (_first(e, "STORAGE_TYPE") or "local").lower()
            if kind == "s3":
                bucket = _first(e, "S3_BUCKET")
                if not bucket:
                    raise ConfigError(
                        "STORAGE_TYPE=s3 needs S3_BUCKET (or set FTKIT_STORAGE=s3://bucket/prefix)"
                    )
                prefix = (_first(e, "S3_PREFIX") or "").strip("/")
                storage = f"s3://{bucket}/{prefix}".rstrip("/")
            elif kind == "local":
                storage = _first(e, "STORAGE_BASE_DIR") or "./storage"
            else:
                raise ConfigError(f"STORAGE_TYPE={kind!r} is not known; use 'local' or 's3'")
        local_storage = "://" not in storage or storage.startswith("file://")
        default_db = (
            str(Path(storage.removeprefix("file://")) / "queue.db")
            if local_storage
            else "./storage/queue.db"
        )
        allowed = _first(e, "FTKIT_ALLOWED_MODEL_DIRS")
        values: dict[str, Any] = dict(
            redis_url=redis_url,
            storage=storage,
            queue_db=_first(e, "FTKIT_QUEUE_DB") or default_db,
            s3_endpoint_url=_first(
                e, "FTKIT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
            ),
            scratch_dir=_first(e, "FTKIT_SCRATCH_DIR") or "~/.cache/ftkit",
            heartbeat_seconds=float(_first(e, "FTKIT_HEARTBEAT_SECONDS") or 5.0),
            worker_grace_seconds=float(_first(e, "FTKIT_WORKER_GRACE_SECONDS") or 60.0),
            allowed_model_dirs=tuple(p for p in (allowed or "").split(os.pathsep) if p),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        # Absolute paths: a worker's notebook kernel runs in another folder and must find the same files.
        if "://" not in values["storage"]:
            values["storage"] = str(Path(values["storage"]).expanduser().resolve())
        values["queue_db"] = str(Path(values["queue_db"]).expanduser().resolve())
        if values["redis_url"] and not str(values["redis_url"]).startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(
                f"Redis URL must start with redis://, rediss:// or unix:// (got {values['redis_url']!r})"
            )
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process (worker kernels)."""
        env = {
            "FTKIT_STORAGE": self.storage,
            "FTKIT_QUEUE_DB": self.queue_db,
            "FTKIT_SCRATCH_DIR": self.scratch_dir,
            "FTKIT_HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
            "FTKIT_WORKER_GRACE_SECONDS": str(self.worker_grace_seconds),
        }
        if self.redis_url:
            env["FTKIT_REDIS_URL"] = self.redis_url
        if self.s3_endpoint_url:
            env["FTKIT_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        if self.allowed_model_dirs:
            env["FTKIT_ALLOWED_MODEL_DIRS"] = os.pathsep.join(self.allowed_model_dirs)
        return env


def _env_default(name: str, fallback: Any) -> Any:
    """DEFAULT_<NAME> or FTKIT_DEFAULT_<NAME> from the environment, cast like the fallback."""
    raw = _first(_environ(None), f"FTKIT_DEFAULT_{name}", f"DEFAULT_{name}")
    if raw is None:
        return fallback
    try:
        return type(fallback)(raw)
    except ValueError as exc:
        raise ConfigError(
            f"DEFAULT_{name}={raw!r} is not a valid {type(fallback).__name__}"
        ) from exc


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tune's knobs. Validated on creation: a bad value never reaches the queue."""

    base_model: str = field(
        default_factory=lambda: _env_default("MODEL", "unsloth/llama-3-8b-bnb-4bit")
    )
    max_steps: int | None = field(
        default_factory=lambda: _env_default("MAX_STEPS", 60)
    )  # None: train num_epochs
    num_epochs: float = 1.0  # used when max_steps is None
    batch_size: int = field(default_factory=lambda: _env_default("BATCH_SIZE", 2))
    gradient_accumulation_steps: int = 1
    learning_rate: float = field(default_factory=lambda: _env_default("LEARNING_RATE", 2e-4))
    warmup_steps: int = 0
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    max_seq_length: int = 2048
    seed: int = 3407
    load_in_4bit: bool = True  # QLoRA on CUDA; ignored (full precision) on CPU
    save_steps: int = 0  # checkpoint every N steps; 0: only the final adapter
    logging_steps: int = 1
    backend: str = "auto"  # auto: unsloth where CUDA and unsloth are present, else hf
    train_on_inputs: bool = False  # False: loss only on assistant/completion tokens
    packing: bool = False
    validation_split: float = 0.0
    eval_steps: int = 0  # 0: evaluate only at the end when there is a validation set
    timeout_minutes: float | None = None  # stop the job (failed, "timed out") after this long
    sample_prompts: list[str] = field(default_factory=list)  # answered before/after in the report

    _INTS = {
        "max_steps": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
        "lora_r": 1, "lora_alpha": 1, "max_seq_length": 8, "seed": 0, "save_steps": 0,
        "logging_steps": 1, "eval_steps": 0,
    }  # fmt: skip

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.base_model, str) or not self.base_model.strip():
            fail("base_model", "must be a model id (org/name) or a local folder path")
        if any(ch in self.base_model for ch in "\n\r\0"):
            fail("base_model", "must be a single-line model id or path")
        for name, low in self._INTS.items():
            value = getattr(self, name)
            if name == "max_steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                fail(name, f"must be an integer >= {low}")
            if value < low:
                fail(name, f"must be >= {low}")
            if value > 10**9:
                fail(name, "is absurdly large")
        bounds: tuple[tuple[str, float, float], ...] = (
            ("learning_rate", 0.0, 1.0),
            ("num_epochs", 0.0, 1e6),
        )
        for name, lowest, high in bounds:
            number = getattr(self, name)
            if (
                isinstance(number, bool)
                or not isinstance(number, (int, float))
                or math.isnan(number)
            ):
                fail(name, "must be a number")
            if not lowest < number <= high:
                fail(name, f"must be > {lowest} and <= {high:g}")
        if self.timeout_minutes is not None and (
            isinstance(self.timeout_minutes, bool)
            or not isinstance(self.timeout_minutes, (int, float))
            or not 0 < self.timeout_minutes <= 60 * 24 * 30
        ):
            fail("timeout_minutes", "must be a number of minutes > 0 (at most 30 days), or None")
        if (
            not isinstance(self.sample_prompts, (list, tuple))
            or len(self.sample_prompts) > 20
            or not all(isinstance(p, str) and 0 < len(p) <= 4000 for p in self.sample_prompts)
        ):
            fail(
                "sample_prompts",
                "must be a list of at most 20 prompt strings (each 1-4000 characters)",
            )
        for name in ("lora_dropout", "validation_split"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0.0 <= value < 1.0
            ):
                fail(name, "must be a number in [0, 1)")
        for name in ("load_in_4bit", "train_on_inputs", "packing"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be true or false")
        if self.backend not in BACKENDS:
            fail("backend", f"must be one of {', '.join(BACKENDS)}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain values, refusing unknown keys with the closest valid name."""
        names = cls.field_names()
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else f"; valid keys: {', '.join(names)}"
                )
                raise ConfigError(f"unknown TrainConfig key {key!r}{hint}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sample_prompts": list(self.sample_prompts)}
