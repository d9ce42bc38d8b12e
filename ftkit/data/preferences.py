"""Preference data normalized to TRL's conversational shape, with a problem (line, field, fix) for
every side that cannot be trained on.

Forms read, each to ``{"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}`` (format
"preference") or ``{"prompt": [msgs], "completion": [msgs], "label": bool}`` ("unpaired_preference"):

    plain pairs       {"prompt": "...", "chosen": "...", "rejected": "..."}
    TRL pairs         the same with message lists; without "prompt" when chosen and rejected hold the
                      whole conversation (TRL's implicit prompt: their shared first messages)
    OpenAI DPO        {"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}
    KTO               {"prompt", "completion", "label": true | false}

A plain string becomes one user message (a prompt) or one assistant message (an answer). CSV and
Parquet columns may hold a message list as JSON text.
"""

from __future__ import annotations

import json
from typing import Any

from .conversations import _chat_message, _turn_order_problems
from .problems import MAX_MESSAGES, Found, Problem, _too_many_turns

Messages = list[dict[str, Any]]
Side = tuple[Messages | None, list[Problem]]
OPENAI_KEYS = ("preferred_output", "non_preferred_output")
LABEL_WORDS = {"true": True, "false": False}  # CSV has no booleans: its cells say true or false


def is_preference(example: dict[str, Any]) -> bool:
    """Whether a normalized example is a pair or an unpaired (KTO) example."""
    return "chosen" in example or "label" in example


def _pair(record: dict[str, Any], line: int | None) -> Found:
    """A pair in any of its forms: OpenAI's, with a prompt, or with the prompt inside both answers."""
    if any(key in record for key in OPENAI_KEYS):
        return _openai_pair(record, line)
    if record.get("prompt") is None:
        return _implicit_prompt_pair(record, line)
    prompt, problems = _side(record, "prompt", line)
    chosen, more = _side(record, "chosen", line)
    rejected, more_rejected = _side(record, "rejected", line)
    names = ("prompt", "chosen", "rejected")
    return _checked_pair(prompt, chosen, rejected, names, line, problems + more + more_rejected)


def _openai_pair(record: dict[str, Any], line: int | None) -> Found:
    given = record.get("input")
    source = given if isinstance(given, dict) else {}
    if not isinstance(given, dict) or "messages" not in given:
        prompt: Messages | None = None
        problems = [
            Problem(
                line,
                "input",
                "missing_field",
                "no 'input': {'messages': [...]} (OpenAI's DPO format)",
                'add "input": {"messages": [{"role": "user", "content": "..."}]}',
            )
        ]
    else:
        prompt, problems = _side(source, "messages", line, where="input.messages")
    chosen, more = _side(record, "preferred_output", line)
    rejected, more_rejected = _side(record, "non_preferred_output", line)
    names = ("input.messages", "preferred_output", "non_preferred_output")
    return _checked_pair(prompt, chosen, rejected, names, line, problems + more + more_rejected)


def _implicit_prompt_pair(record: dict[str, Any], line: int | None) -> Found:
    """TRL's implicit prompt: chosen and rejected each hold the whole conversation; the messages
    they share at the start are the prompt."""
    chosen, problems = _side(record, "chosen", line)
    rejected, more = _side(record, "rejected", line)
    problems += more
    if chosen is None or rejected is None:
        return None, problems
    if _plain_answer(record, "chosen") or _plain_answer(record, "rejected"):
        return None, problems + [
            Problem(
                line,
                "prompt",
                "missing_field",
                "no 'prompt' field, and the answers are plain text",
                "add 'prompt', or give chosen and rejected as message lists that start with the "
                "same user message",
            )
        ]
    shared = _shared_prefix(chosen, rejected)
    if shared == len(chosen) == len(rejected):  # identical: the last message is the answer
        shared -= 1
    if shared == 0:
        return None, problems + [
            Problem(
                line,
                "prompt",
                "missing_field",
                "no 'prompt' field, and chosen and rejected do not start with the same messages",
                "add 'prompt', or start chosen and rejected with the same user message",
            )
        ]
    for answer, name in ((chosen, "chosen"), (rejected, "rejected")):
        if shared == len(answer):  # all of it is the prompt: no answer is left after it
            problems.append(_no_answer(line, name))
    if _has_errors(problems):
        return None, problems
    names = ("prompt", "chosen", "rejected")
    return _checked_pair(chosen[:shared], chosen[shared:], rejected[shared:], names, line, problems)


def _plain_answer(record: dict[str, Any], name: str) -> bool:
    value = record[name]
    return isinstance(value, str) and _messages_in_text(value) is None


def _shared_prefix(a: Messages, b: Messages) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _checked_pair(
    prompt: Messages | None,
    chosen: Messages | None,
    rejected: Messages | None,
    names: tuple[str, str, str],
    line: int | None,
    problems: list[Problem],
) -> Found:
    if prompt is None or chosen is None or rejected is None:
        return None, problems
    problems = problems + _prompt_problems(prompt, names[0], line)
    for answer, name in ((chosen, names[1]), (rejected, names[2])):
        problems += _answer_problems(answer, name, line)
    if not _has_errors(problems) and chosen == rejected:
        problems.append(
            Problem(
                line,
                names[2],
                "identical_answers",
                "the chosen and the rejected answers are the same: the pair teaches no preference",
                "remove the pair, or give it a rejected answer that differs",
                "warning",
            )
        )
    turns = len(prompt) + len(chosen) + len(rejected)
    if turns > MAX_MESSAGES:
        problems.append(_too_many_turns(line, turns))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, problems


def _has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _unpaired(record: dict[str, Any], line: int | None) -> Found:
    """KTO's example: a prompt, one answer, and whether that answer is desirable."""
    prompt, problems = _side(record, "prompt", line)
    completion, more = _side(record, "completion", line)
    label, more_label = _label(record, line)
    problems += more + more_label
    if prompt is None or completion is None or label is None:
        return None, problems
    problems += _prompt_problems(prompt, "prompt", line)
    problems += _answer_problems(completion, "completion", line)
    if len(prompt) + len(completion) > MAX_MESSAGES:
        problems.append(_too_many_turns(line, len(prompt) + len(completion)))
    return {"prompt": prompt, "completion": completion, "label": label}, problems


def _label(record: dict[str, Any], line: int | None) -> tuple[bool | None, list[Problem]]:
    value = record.get("label")
    if isinstance(value, bool):
        return value, []
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()], []
    if value is None:
        what, kind = "no 'label' field", "missing_field"
    else:
        what, kind = f"'label' is {json.dumps(value)[:40]}, not a boolean", "wrong_type"
    return None, [
        Problem(
            line,
            "label",
            kind,
            f"{what}: KTO's label says whether the completion is desirable",
            "write true (a desirable answer) or false (an undesirable one)",
        )
    ]


# -- one side: a prompt or an answer, as text or as messages ----------------------------------------
def _side(
    record: dict[str, Any],
    name: str,
    line: int | None,
    *,
    where: str | None = None,
) -> Side:
    """The messages of one side. A string is one user message for a prompt, one assistant message
    for an answer."""
    where = where or name
    role = "user" if name in ("prompt", "messages") else "assistant"
    value = record.get(name)
    if isinstance(value, str):
        value = _messages_in_text(value) or value
    if value is None:
        fix = f"add '{where}' to every record"
        return None, [Problem(line, where, "missing_field", f"no '{where}' field", fix)]
    if isinstance(value, str):
        if not value.strip():
            return None, [_empty(line, where)]
        return [{"role": role, "content": value}], []
    if not isinstance(value, list):
        return None, [
            Problem(
                line,
                where,
                "wrong_type",
                f"'{where}' is {type(value).__name__}, not text or a list of messages",
                f'make it a string, or [{{"role": "{role}", "content": "..."}}]',
            )
        ]
    if not value:
        return None, [_empty(line, where)]
    return _messages(value, where, line)


def _messages(items: list[Any], where: str, line: int | None) -> Side:
    messages, problems = [], []
    for i, item in enumerate(items):
        message, more = _chat_message(item, f"{where}[{i}]", line)
        problems += more
        if message is not None and "tool_calls" in message:
            problems.append(
                Problem(
                    line,
                    f"{where}[{i}].tool_calls",
                    "unsupported",
                    "tool calls are not supported in preference data",
                    "leave the pairs with tool calls out, or write the call into the content",
                )
            )
        elif message is not None:
            messages.append({"role": message["role"], "content": message["content"]})
    if _has_errors(problems):
        return None, problems
    return messages, problems


def _messages_in_text(text: str) -> list[Any] | None:
    """A message list written as JSON text (a CSV or Parquet cell), else None: the text is text."""
    if not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    return None


def _empty(line: int | None, where: str) -> Problem:
    return Problem(
        line, where, "empty_content", f"'{where}' is empty", f"fill '{where}' or remove the record"
    )


def _no_answer(line: int | None, where: str) -> Problem:
    return Problem(
        line,
        where,
        "empty_content",
        f"'{where}' holds nothing after the messages it shares with the other answer",
        f"end '{where}' with the assistant's answer",
    )


def _prompt_problems(prompt: Messages, name: str, line: int | None) -> list[Problem]:
    """A prompt is a conversation waiting for the assistant: a user message in a sane order."""
    roles = [m["role"] for m in prompt]
    return _turn_order_problems([*roles, "assistant"], name, line)


def _answer_problems(answer: Messages, name: str, line: int | None) -> list[Problem]:
    if answer[0]["role"] == "assistant":
        return []
    return [
        Problem(
            line,
            name,
            "role_order",
            f"the answer in '{name}' starts with a {answer[0]['role']!r} message, not the "
            "assistant's",
            "put the conversation before the answer in the prompt; an answer is the assistant's",
        )
    ]


# -- counting -------------------------------------------------------------------------------------
def estimated_tokens(example: dict[str, Any]) -> tuple[int, int]:
    """(prompt, prompt with its longer answer) in tokens, at about 4 characters a token plus a few
    for each message's role markers."""

    def size(messages: Messages) -> int:
        return sum(len(m["content"]) // 4 + 5 for m in messages)

    prompt = size(example["prompt"]) + 1
    answers = [example[k] for k in ("chosen", "rejected", "completion") if k in example]
    return prompt, prompt + max(size(a) for a in answers)
