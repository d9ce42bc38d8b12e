"""The rules a client checks before it submits and the HTTP server checks on every request, kept
once so the two never disagree. Each failure is a ConfigError that names its field."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

JOB_ID = re.compile(r"^[0-9a-f]{12}$")  # only such a string is ever used in a path
SHA256 = re.compile(r"[0-9a-f]{64}")
SFT_FORMATS = ("alpaca", "chat", "sharegpt", "prompt_completion", "text")
# A prompt with a chosen and a rejected answer (DPO, ORPO); a prompt with one answer labelled good
# or bad (KTO).
PREFERENCE_FORMATS = ("preference", "unpaired_preference")
DATASET_FORMATS = (*SFT_FORMATS, *PREFERENCE_FORMATS)
# How a job tunes, and the data set formats each way takes (KTO unpairs pairs itself).
METHODS = ("sft", "dpo", "orpo", "kto")
METHOD_FORMATS = {
    "sft": SFT_FORMATS,
    "dpo": ("preference",),
    "orpo": ("preference",),
    "kto": ("unpaired_preference", "preference"),
}
# What TRL logs of a preference run (its names), kept in a job's metric rows beside the loss.
REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
FORMAT_WORDS = {
    "preference": "preference pairs (prompt, chosen, rejected)",
    "unpaired_preference": "KTO's labelled answers (prompt, completion, label)",
}


def method_format_mismatch(method: str, fmt: str | None) -> str | None:
    """Why a data set of format ``fmt`` cannot train with ``method``, with the method that fits
    it; None when it can (or when either is unknown: other checks name those)."""
    if method not in METHOD_FORMATS or fmt not in DATASET_FORMATS:
        return None
    if fmt in METHOD_FORMATS[method]:
        return None
    fitting = [m for m in METHODS if fmt in METHOD_FORMATS[m]]
    held = FORMAT_WORDS.get(fmt, f"{fmt} examples for supervised tuning")
    alternatives = f" (or {', '.join(repr(m) for m in fitting[1:])})" if fitting[1:] else ""
    wanted = " or ".join(FORMAT_WORDS.get(f, f) for f in METHOD_FORMATS[method])
    if method == "sft":
        wanted = "examples to imitate (chat, alpaca, sharegpt, prompt/completion or text)"
    return (
        f"this data set holds {held}: submit with method={fitting[0]!r}{alternatives}; "
        f"method={method!r} trains on {wanted}"
    )


def check_method_format(method: str, fmt: str | None) -> None:
    """ConfigError (field "method") when the data set's format does not fit the method."""
    why = method_format_mismatch(method, fmt)
    if why:
        raise ConfigError(why, field="method")


TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+=-]{0,63}$")
MAX_TAGS, MAX_NOTE = 20, 4000
MAX_PRIORITY = 100  # priorities run from -100 to 100; higher runs first
MAX_ATTEMPTS = 100


def is_job_id(value: object) -> bool:
    """Job ids are 12 lowercase hex characters."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def safe_name(name: object, what: str = "data set name") -> str:
    """A plain file name: nothing that climbs folders, names a device or hides control characters
    (ValueError otherwise)."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or len(name) > 200
        or any(ch in name for ch in "/\\")
        or any(ord(ch) < 32 for ch in name)
    ):
        raise ValueError(f"invalid {what} {name!r}: use a plain file name such as 'train.jsonl'")
    return name


def check_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_PRIORITY:
        raise ConfigError(
            f"priority={priority!r}: must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}",
            field="priority",
        )
    return priority


def check_attempts(attempts: Any) -> int:
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or not 1 <= attempts <= MAX_ATTEMPTS
    ):
        raise ConfigError(
            f"max_attempts={attempts!r}: must be an integer from 1 to {MAX_ATTEMPTS}",
            field="max_attempts",
        )
    return attempts


def check_tags(tags: Any) -> list[str]:
    """Tags as stored: short plain words (they name an index key), each once, in the given order."""
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise ConfigError(
            f"tags={tags!r}: give a list of words, e.g. tags=['baseline', 'lr-sweep']",
            field="tags",
        )
    for tag in tags:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise ConfigError(
                f"tag {tag!r}: a tag is 1-64 letters, digits or _ . : + = - and starts with a "
                "letter or digit",
                field="tags",
            )
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise ConfigError(f"{len(unique)} tags: at most {MAX_TAGS} per job", field="tags")
    return unique


def check_note(note: Any) -> str | None:
    if note is None:
        return None
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ConfigError(f"note must be a string of at most {MAX_NOTE} characters", field="note")
    return note


def check_idempotency_key(key: Any) -> str | None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise ConfigError(
            "idempotency_key must be a string of 1-200 characters", field="idempotency_key"
        )
    return key


def check_job_id(job_id: Any) -> str | None:
    if job_id is not None and not is_job_id(job_id):
        raise ConfigError(f"job_id {job_id!r}: must be 12 lowercase hex digits", field="job_id")
    return job_id


MAX_WEBHOOK = 2048  # characters of a webhook URL


def check_webhook(url: Any) -> str | None:
    """A webhook URL as stored with a job (None or "" for none): http or https, naming a host, on
    one line, with no user name or password in it (they would be stored in the record and shown
    in its status). Which hosts a worker calls is the worker's decision, at send time."""
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        raise ConfigError(
            f"webhook must be a URL string, not {type(url).__name__}", field="webhook"
        )
    shown = url if len(url) <= 80 else url[:77] + "..."
    if len(url) > MAX_WEBHOOK or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ConfigError(
            f"webhook {shown!r}: must be one line of at most {MAX_WEBHOOK} characters, without "
            "spaces",
            field="webhook",
        )
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
    except ValueError as exc:
        raise ConfigError(f"webhook {shown!r}: not a URL ({exc})", field="webhook") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"webhook {shown!r}: must be an http:// or https:// URL with a host, e.g. "
            "https://hooks.example.com/ftkit",
            field="webhook",
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "webhook: a user name or password in the URL would be stored with the job and shown "
            "in its status; leave it out and check the request's Ftkit-Signature instead",
            field="webhook",
        )
    return url


# Trying a finished job's model (job.chat(), POST /jobs/{id}/generate): what one prompt may ask.
MAX_NEW_TOKENS = 512  # a look at the model, not a long generation (each costs two: base and tuned)
MAX_TEMPERATURE = 2.0  # 0 is greedy: the same prompt, the same answer
MAX_PROMPT_CHARS = 8000


def check_generation(temperature: Any, max_new_tokens: Any) -> tuple[float, int]:
    """The generation settings a prompt is answered with, each refused by name when out of range."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= MAX_TEMPERATURE  # also refuses NaN
    ):
        raise ConfigError(
            f"temperature={temperature!r}: must be a number from 0 (greedy) to {MAX_TEMPERATURE}",
            field="temperature",
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or not 1 <= max_new_tokens <= MAX_NEW_TOKENS
    ):
        raise ConfigError(
            f"max_new_tokens={max_new_tokens!r}: must be an integer from 1 to {MAX_NEW_TOKENS}",
            field="max_new_tokens",
        )
    return float(temperature), max_new_tokens


def check_prompt(prompt: Any, field: str = "prompt") -> str:
    """A prompt to answer: text, not empty, at most MAX_PROMPT_CHARS characters."""
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"{field} must be text of 1 to {MAX_PROMPT_CHARS} characters", field=field
        )
    return prompt
