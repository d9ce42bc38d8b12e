"""Settings from the environment (and ``.env``), and the validated training configuration."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

from .core.rules import METHODS, check_webhook
from .envfile import read_dotenv
from .errors import ConfigError
from .placement import devices_problem
from .trackers import report_to_problem

BACKENDS = ("auto", "unsloth", "hf")
# The settings of the preference methods, and the methods each applies to.
METHOD_SETTINGS = {
    "beta": ("dpo", "orpo", "kto"),
    "dpo_loss_type": ("dpo",),
    "kto_desirable_weight": ("kto",),
    "kto_undesirable_weight": ("kto",),
}
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")  # TRL's, at every version ftkit allows
UPLOAD_MODELS = ("auto", "always", "never")


def default_home(env: dict[str, str] | None = None) -> Path:
    """The per-user folder of the embedded default (queue, job records, files, worker logs):
    ``FTKIT_HOME``, else the platform's user data folder. One per user, not one per working
    folder, so every notebook and terminal of a user meets the same local worker."""
    e = os.environ if env is None else env
    home = e.get("FTKIT_HOME")
    if not home:
        import platformdirs

        home = platformdirs.user_data_dir("ftkit", appauthor=False)
    return Path(home).expanduser().resolve()


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


def mask_url(url: str | None) -> str | None:
    """A URL fit to show: any password replaced by ``***`` (for logs, errors and reprs)."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.netloc.rsplit('@', 1)[1]}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Settings:
    """Where the queue, job records and files live; read once from the environment."""

    redis_url: str | None = field(default=None, repr=False)  # None: the embedded SQLite queue
    # any fsspec URL: a folder, s3://bucket/prefix, memory://...
    storage: str = field(default_factory=lambda: str(default_home() / "storage"))
    # the SQLite file when redis_url is None
    queue_db: str = field(default_factory=lambda: str(default_home() / "storage" / "queue.db"))
    s3_endpoint_url: str | None = None
    scratch_dir: str = "~/.cache/ftkit"  # a worker's local working folder (data cache, runs)
    heartbeat_seconds: float = 5.0
    worker_grace_seconds: float = 60.0
    allowed_model_dirs: tuple[str, ...] = ()
    max_attempts: int = 3  # recorded with each job at submit; every reaper uses the job's value
    # Signs job specs and queue messages; only clients holding it can have a worker run a job.
    queue_secret: str | None = field(default=None, repr=False)
    # local base-model folders go to storage: "auto" when storage is not a local folder
    upload_models: str = "auto"
    # Webhooks: the URL a client's jobs announce their end to unless submit names another; the
    # secret a worker signs them with; the hosts a worker may call (empty: public addresses only).
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_allowed_hosts: tuple[str, ...] = ()
    home: str = field(default_factory=lambda: str(default_home()))  # the per-user folder

    @property
    def broker(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    @property
    def queue_location(self) -> str:
        """Where the queue is, to show a person: the SQLite file, or the Redis URL without its
        password."""
        if not self.redis_url:
            return self.queue_db
        parts = urlsplit(self.redis_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def storage_is_local(self) -> bool:
        return "://" not in self.storage or self.storage.startswith("file://")

    def __repr__(self) -> str:
        return (
            f"Settings(queue={self.queue_location!r}, storage={self.storage!r}, "
            f"signed={bool(self.queue_secret)})"
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """The environment (over ``.env``) read once; keyword ``overrides`` that are not None win."""
        e = _environ(env)
        home = default_home(e) if overrides.get("home") is None else Path(overrides["home"])
        storage = _storage_url(e, home)
        if overrides.get("storage") is not None:
            storage = overrides["storage"]
        upload_models = _upload_models(e)
        allowed = _first(e, "FTKIT_ALLOWED_MODEL_DIRS")
        values: dict[str, Any] = dict(
            redis_url=_redis_url(e),
            storage=storage,
            queue_db=_first(e, "FTKIT_QUEUE_DB") or _default_queue_db(storage, home),
            s3_endpoint_url=_first(
                e, "FTKIT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
            ),
            scratch_dir=_first(e, "FTKIT_SCRATCH_DIR") or "~/.cache/ftkit",
            heartbeat_seconds=float(_first(e, "FTKIT_HEARTBEAT_SECONDS") or 5.0),
            worker_grace_seconds=float(_first(e, "FTKIT_WORKER_GRACE_SECONDS") or 60.0),
            allowed_model_dirs=tuple(p for p in (allowed or "").split(os.pathsep) if p),
            queue_secret=_first(e, "FTKIT_QUEUE_SECRET"),
            max_attempts=_int_setting(e, "FTKIT_MAX_ATTEMPTS", 3),
            upload_models=upload_models,
            webhook_url=_webhook_url(e),
            webhook_secret=_first(e, "FTKIT_WEBHOOK_SECRET"),
            webhook_allowed_hosts=_hosts(_first(e, "FTKIT_WEBHOOK_ALLOWED_HOSTS")),
            home=str(home),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        _make_paths_absolute(values)
        _check_redis_scheme(values["redis_url"])
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process (worker kernels). The
        queue secret is left out: a kernel never signs, and what it does not hold it cannot leak."""
        env = {
            "FTKIT_STORAGE": self.storage,
            "FTKIT_QUEUE_DB": self.queue_db,
            "FTKIT_SCRATCH_DIR": self.scratch_dir,
            "FTKIT_HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
            "FTKIT_WORKER_GRACE_SECONDS": str(self.worker_grace_seconds),
            "FTKIT_UPLOAD_MODELS": self.upload_models,
            "FTKIT_HOME": self.home,
        }
        if self.redis_url:
            env["FTKIT_REDIS_URL"] = self.redis_url
        if self.s3_endpoint_url:
            env["FTKIT_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        if self.allowed_model_dirs:
            env["FTKIT_ALLOWED_MODEL_DIRS"] = os.pathsep.join(self.allowed_model_dirs)
        return env


def _redis_url(env: dict[str, str]) -> str | None:
    """FTKIT_REDIS_URL or REDIS_URL, else one built from REDIS_HOST, _PORT, _DB and _PASSWORD."""
    redis_url = _first(env, "FTKIT_REDIS_URL", "REDIS_URL")
    if redis_url is None and _first(env, "REDIS_HOST"):
        password = _first(env, "REDIS_PASSWORD")
        auth = f":{quote(password, safe='')}@" if password else ""
        redis_url = (
            f"redis://{auth}{env['REDIS_HOST']}:{_first(env, 'REDIS_PORT') or 6379}"
            f"/{_first(env, 'REDIS_DB') or 0}"
        )
    return redis_url


def _storage_url(env: dict[str, str], home: Path) -> str:
    """FTKIT_STORAGE, else STORAGE_TYPE: an S3 bucket and prefix, or a local folder."""
    storage = _first(env, "FTKIT_STORAGE")
    if storage is not None:
        return storage
    kind = (_first(env, "STORAGE_TYPE") or "local").lower()
    if kind == "s3":
        bucket = _first(env, "S3_BUCKET")
        if not bucket:
            raise ConfigError(
                "STORAGE_TYPE=s3 needs S3_BUCKET (or set FTKIT_STORAGE=s3://bucket/prefix)"
            )
        prefix = (_first(env, "S3_PREFIX") or "").strip("/")
        return f"s3://{bucket}/{prefix}".rstrip("/")
    if kind == "local":
        return _first(env, "STORAGE_BASE_DIR") or str(home / "storage")
    raise ConfigError(f"STORAGE_TYPE={kind!r} is not known; use 'local' or 's3'")


def _default_queue_db(storage: str, home: Path) -> str:
    """The SQLite queue sits in local storage's folder, else in the per-user folder."""
    if "://" not in storage or storage.startswith("file://"):
        return str(Path(storage.removeprefix("file://")).expanduser() / "queue.db")
    return str(home / "queue.db")


def _upload_models(env: dict[str, str]) -> str:
    upload_models = (_first(env, "FTKIT_UPLOAD_MODELS") or "auto").lower()
    if upload_models not in UPLOAD_MODELS:
        raise ConfigError(
            f"FTKIT_UPLOAD_MODELS={upload_models!r}: use one of {', '.join(UPLOAD_MODELS)}"
        )
    return upload_models


def _webhook_url(env: dict[str, str]) -> str | None:
    try:
        return check_webhook(_first(env, "FTKIT_WEBHOOK_URL"))
    except ConfigError as exc:
        raise ConfigError(f"FTKIT_WEBHOOK_URL: {exc}", field="webhook") from exc


def _hosts(raw: str | None) -> tuple[str, ...]:
    """Comma-separated host names (``*.example.com`` for its subdomains), lower-cased."""
    return tuple(h.strip().lower().rstrip(".") for h in (raw or "").split(",") if h.strip())


def _make_paths_absolute(values: dict[str, Any]) -> None:
    """Absolute paths: a worker's notebook kernel runs in another folder and must find the same files."""
    if "://" not in values["storage"]:
        values["storage"] = str(Path(values["storage"]).expanduser().resolve())
    values["queue_db"] = str(Path(values["queue_db"]).expanduser().resolve())


def _check_redis_scheme(redis_url: str | None) -> None:
    if redis_url and not str(redis_url).startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "Redis URL must start with redis://, rediss:// or unix:// "
            f"(got {mask_url(redis_url)!r})"
        )


def _int_setting(env: dict[str, str], name: str, fallback: int) -> int:
    raw = _first(env, name)
    if raw is None:
        return fallback
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from exc


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
    load_in_4bit: bool | None = None  # QLoRA; None: where the worker can (CUDA + bitsandbytes)
    save_steps: int = 0  # checkpoint every N steps; 0: only the last step's weights
    logging_steps: int = 1
    backend: str = "auto"  # auto: unsloth where CUDA and unsloth are present, else hf
    train_on_inputs: bool = False  # False: loss only on assistant/completion tokens
    packing: bool = False
    validation_split: float = 0.0
    eval_steps: int = 0  # 0: evaluate only at the end when there is a validation set
    timeout_minutes: float | None = None  # stop the job (failed, "timed out") after this long
    sample_prompts: list[str] = field(default_factory=list)  # answered before/after in the report
    auto_batch_size: bool = False  # out of memory: retry at half the batch, twice the accumulation
    # How it tunes: supervised (sft), or on preferences (dpo, orpo: pairs; kto: labelled answers).
    method: str = "sft"
    beta: float | None = None  # dpo, orpo, kto: how far from the reference; None: TRL's default
    dpo_loss_type: str | None = None  # dpo: one of DPO_LOSS_TYPES; None: sigmoid (the paper's)
    kto_desirable_weight: float | None = None  # kto: weight of good answers; None: 1.0
    kto_undesirable_weight: float | None = None  # kto: weight of bad answers; None: 1.0
    # Where it trains: on how many devices of one worker (batch_size is per device), and how.
    devices: int = 1
    sharding: str = "none"  # none: data-parallel copies; fsdp: sharded (CUDA workers only)
    report_to: list[str] = field(default_factory=list)  # experiment trackers (TRACKERS) too

    _INTS = {
        "max_steps": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
        "lora_r": 1, "lora_alpha": 1, "max_seq_length": 8, "seed": 0, "save_steps": 0,
        "logging_steps": 1, "eval_steps": 0,
    }  # fmt: skip

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """Each step raises ConfigError naming the field; the first failure is the one reported."""
        self._check_base_model()
        self._check_integers()
        self._check_learning_rate_and_epochs()
        self._check_timeout()
        self._check_sample_prompts()
        self._check_fractions()
        self._check_switches_and_backend()
        self._check_method()
        self._check_devices()
        if problem := report_to_problem(self.report_to):
            self._fail("report_to", problem)

    def _fail(self, name: str, why: str) -> NoReturn:
        raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}", field=name)

    def _check_base_model(self) -> None:
        """A model id or a folder path, on one line (it goes into a notebook parameter)."""
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            self._fail("base_model", "must be a model id (org/name) or a local folder path")
        if any(ch in self.base_model for ch in "\n\r\0"):
            self._fail("base_model", "must be a single-line model id or path")

    def _check_integers(self) -> None:
        """Whole numbers (not bools) between each one's floor in _INTS and a billion."""
        for name, low in self._INTS.items():
            value = getattr(self, name)
            if name == "max_steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                self._fail(name, f"must be an integer >= {low}")
            if value < low:
                self._fail(name, f"must be >= {low}")
            if value > 10**9:
                self._fail(name, "is absurdly large")

    def _check_learning_rate_and_epochs(self) -> None:
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
                self._fail(name, "must be a number")
            if not lowest < number <= high:
                self._fail(name, f"must be > {lowest} and <= {high:g}")

    def _check_timeout(self) -> None:
        if self.timeout_minutes is not None and (
            isinstance(self.timeout_minutes, bool)
            or not isinstance(self.timeout_minutes, (int, float))
            or not 0 < self.timeout_minutes <= 60 * 24 * 30
        ):
            self._fail(
                "timeout_minutes", "must be a number of minutes > 0 (at most 30 days), or None"
            )

    def _check_sample_prompts(self) -> None:
        if (
            not isinstance(self.sample_prompts, (list, tuple))
            or len(self.sample_prompts) > 20
            or not all(isinstance(p, str) and 0 < len(p) <= 4000 for p in self.sample_prompts)
        ):
            self._fail(
                "sample_prompts",
                "must be a list of at most 20 prompt strings (each 1-4000 characters)",
            )

    def _check_fractions(self) -> None:
        for name in ("lora_dropout", "validation_split"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0.0 <= value < 1.0
            ):
                self._fail(name, "must be a number in [0, 1)")

    def _check_switches_and_backend(self) -> None:
        for name in ("train_on_inputs", "packing", "auto_batch_size"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "must be true or false")
        if self.load_in_4bit is not None and not isinstance(self.load_in_4bit, bool):
            self._fail("load_in_4bit", "must be true, false or None (4-bit where the worker can)")
        if self.backend not in BACKENDS:
            self._fail("backend", f"must be one of {', '.join(BACKENDS)}")

    def _check_method(self) -> None:
        """The method, then each of its settings: a number where one is set, and never a setting
        of another method (it would be silently ignored)."""
        if self.method not in METHODS:
            self._fail("method", f"must be one of {', '.join(METHODS)}")
        if self.method == "kto" and self.batch_size < 2:
            # KTO's KL term compares each answer with another prompt's in the same batch.
            self._fail("batch_size", "must be >= 2 with method='kto' (KTO compares within a batch)")
        for name, methods in METHOD_SETTINGS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if self.method not in methods:
                self._fail(
                    name,
                    f"applies to method={' or '.join(repr(m) for m in methods)}, not "
                    f"method={self.method!r}; leave it unset (None)",
                )
            if name == "dpo_loss_type":
                if value not in DPO_LOSS_TYPES:
                    self._fail(name, f"must be one of {', '.join(DPO_LOSS_TYPES)}, or None")
            elif (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value <= 100
            ):
                self._fail(name, "must be a number > 0 and <= 100, or None (TRL's default)")

    def _check_devices(self) -> None:
        """A job's devices and sharding, refused here where no worker could run them."""
        problem = devices_problem(self)
        if problem:
            self._fail(*problem)

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step: the per-device batch, accumulated, on every device."""
        return self.batch_size * self.gradient_accumulation_steps * self.devices

    @property
    def preference(self) -> bool:
        """Whether it tunes on preferences (DPO, ORPO, KTO) rather than on answers (SFT)."""
        return self.method != "sft"

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
                raise ConfigError(f"unknown TrainConfig key {key!r}{hint}", field=str(key))
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        lists = {name: list(getattr(self, name)) for name in ("sample_prompts", "report_to")}
        return {**dataclasses.asdict(self), **lists}
