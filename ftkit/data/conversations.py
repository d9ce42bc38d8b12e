"""Normalizing conversations (alpaca, chat, sharegpt) to ``{"messages": [...], "tools"?}``, with a
problem for every role, turn order, content part or loss weight that cannot be trained on."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from .problems import (
    ROLES,
    SHAREGPT_ROLES,
    Found,
    Problem,
    _not_a_conversation,
    _string,
    _structured,
    _unknown_role,
)


def _alpaca(record: dict[str, Any], line: int | None) -> Found:
    instruction, problems = _string(record, "instruction", line)
    output, more = _string(record, "output", line)
    given_input, more_input = _string(record, "input", line, required=False)
    system, more_system = _string(record, "system", line, required=False)
    history, more_history = _alpaca_history(record, line)
    problems += more + more_input + more_system + more_history
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += history
    user = f"{instruction}\n{given_input}" if given_input.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}, problems


def _alpaca_history(
    record: dict[str, Any], line: int | None
) -> tuple[list[dict[str, Any]], list[Problem]]:
    history, problems = _structured(record, "history", line)
    if problems or not history:
        return [], problems
    pairs: list[Any] = history if isinstance(history, list) else [None]
    if not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in pairs
    ):
        return [], [
            Problem(
                line,
                "history",
                "wrong_type",
                "'history' must be a list of [user, assistant] pairs",
                'write it as [["question", "answer"], ...]',
            )
        ]
    return [
        {"role": role, "content": text}
        for pair in pairs
        for role, text in zip(("user", "assistant"), pair)
    ], []


def _chat(record: dict[str, Any], line: int | None) -> Found:
    raw, problems = _structured(record, "messages", line)
    if problems:
        return None, problems
    if not isinstance(raw, list) or not raw:
        return None, [
            _not_a_conversation(line, "messages", raw, '[{"role": "user", "content": "..."}, ...]')
        ]
    messages = []
    for i, item in enumerate(raw):
        message, more = _chat_message(item, f"messages[{i}]", line)
        problems += more
        if message is not None:
            messages.append(message)
    return _conversation(record, messages, "messages", line, problems)


def _chat_message(
    item: Any, where: str, line: int | None
) -> tuple[dict[str, Any] | None, list[Problem]]:
    if _plain_message(item):  # the common case, checked in one go: large files are mostly this
        return {"role": item["role"], "content": item["content"]}, []
    if not isinstance(item, dict):
        return None, [
            Problem(
                line,
                where,
                "wrong_type",
                "a message must be an object",
                'use {"role": ..., "content": ...}',
            )
        ]
    role = item.get("role")
    if role not in ROLES:
        return None, [_unknown_role(line, f"{where}.role", role, ROLES)]
    tool_calls = item.get("tool_calls")
    if tool_calls is not None and not (isinstance(tool_calls, list) and role == "assistant"):
        return None, [
            Problem(
                line,
                f"{where}.tool_calls",
                "wrong_type",
                "tool_calls must be a list, on an assistant message",
                "give the assistant's tool calls as a list",
            )
        ]
    content, problems = _content_text(
        item.get("content"), f"{where}.content", role, bool(tool_calls), line
    )
    message: dict[str, Any] = {"role": role, "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if "loss_weight" in item:
        weight, more = _loss_weight(item["loss_weight"], f"{where}.loss_weight", line)
        problems += more
        message["loss_weight"] = weight
    return message, problems


def _plain_message(item: Any) -> bool:
    """{"role": a known role, "content": non-blank text} and nothing else."""
    if type(item) is not dict or len(item) != 2 or item.get("role") not in ROLES:
        return False
    content = item.get("content")
    return type(content) is str and content != "" and not content.isspace()


def _content_text(
    content: Any, where: str, role: str, has_tool_calls: bool, line: int | None
) -> tuple[str, list[Problem]]:
    """Message content as text: a string, or a list of typed parts {type: text, text | value}."""
    if content is None and has_tool_calls:
        return "", []
    if content is None:
        return "", [
            Problem(
                line,
                where,
                "missing_field",
                f"the {role} message has no content",
                "add its content",
            )
        ]
    if isinstance(content, list):
        texts = [_part_text(part) for part in content]
        if any(t is None for t in texts):
            return "", [
                Problem(
                    line,
                    where,
                    "wrong_type",
                    "only text parts are supported",
                    'use [{"type": "text", "text": "..."}] or a plain string',
                )
            ]
        content = "".join(t for t in texts if t is not None)
    if not isinstance(content, str):
        return "", [
            Problem(
                line,
                where,
                "wrong_type",
                f"content is {type(content).__name__}",
                "make it a string or a list of text parts",
            )
        ]
    if not content.strip() and not has_tool_calls:
        return "", [
            Problem(
                line, where, "empty_content", f"the {role} message is empty", "fill it or remove it"
            )
        ]
    return content, []


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type", "text") == "text":
        value = part.get("text") if part.get("text") is not None else part.get("value")
        return value if isinstance(value, str) else None
    return None


def _loss_weight(value: Any, where: str, line: int | None) -> tuple[float, list[Problem]]:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        return 1.0, [
            Problem(
                line,
                where,
                "wrong_type",
                f"loss_weight {value!r} is not a number >= 0",
                "use 0 (not learned) or 1 (learned)",
            )
        ]
    if value not in (0, 1):
        return float(value), [
            Problem(
                line,
                where,
                "loss_weight",
                f"loss_weight {value} counts as 1",
                "use 0 (not learned) or 1 (learned)",
                "warning",
            )
        ]
    return float(value), []


def _sharegpt(record: dict[str, Any], line: int | None) -> Found:
    raw, problems = _structured(record, "conversations", line)
    if problems:
        return None, problems
    if not isinstance(raw, list) or not raw:
        return None, [
            _not_a_conversation(
                line, "conversations", raw, '[{"from": "human", "value": "..."}, ...]'
            )
        ]
    system, problems = _string(record, "system", line, required=False)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for i, turn in enumerate(raw):
        message, more = _sharegpt_turn(turn, f"conversations[{i}]", line)
        problems += more
        if message is not None:
            messages.append(message)
    return _conversation(record, messages, "conversations", line, problems)


def _sharegpt_turn(
    turn: Any, where: str, line: int | None
) -> tuple[dict[str, Any] | None, list[Problem]]:
    if not isinstance(turn, dict):
        return None, [
            Problem(
                line,
                where,
                "wrong_type",
                "a turn must be an object",
                'use {"from": ..., "value": ...}',
            )
        ]
    speaker = turn.get("from", turn.get("role"))
    role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        return None, [_unknown_role(line, f"{where}.from", speaker, tuple(SHAREGPT_ROLES))]
    value, problems = _content_text(
        turn.get("value", turn.get("content")), f"{where}.value", str(speaker), False, line
    )
    return {"role": role, "content": value}, problems


def _conversation(
    record: dict[str, Any],
    messages: list[dict[str, Any]],
    name: str,
    line: int | None,
    problems: list[Problem],
) -> Found:
    tools, more = _tools(record, line)
    problems = problems + more
    if not any(p.severity == "error" for p in problems):
        problems += _turn_order_problems([m["role"] for m in messages], name, line)
    example: dict[str, Any] = {"messages": messages}
    if tools:
        example["tools"] = tools
    return example, problems


def _tools(record: dict[str, Any], line: int | None) -> tuple[Any, list[Problem]]:
    """Tool definitions: a list of JSON schemas, or that list as JSON text (ShareGPT writes it so)."""
    tools, problems = _structured(record, "tools", line)
    if problems or tools in (None, "", []):
        return None, problems
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return None, [
            Problem(
                line,
                "tools",
                "wrong_type",
                "'tools' must be a list of tool schemas (objects)",
                'write it as [{"name": ..., "description": ..., "parameters": {...}}]',
            )
        ]
    return tools, []


def _turn_order_problems(roles: list[str], name: str, line: int | None) -> list[Problem]:
    found = _turn_order_fault(tuple(roles))
    return [Problem(line, name, *found)] if found else []


@lru_cache(maxsize=4096)  # a data set repeats a few role sequences over and over
def _turn_order_fault(roles: tuple[str, ...]) -> tuple[str, str, str, str] | None:
    """(kind, message, fix, severity) of what is wrong with the order of a conversation's roles:
    chat templates and training need a user turn, an assistant turn to learn, and a sane order."""
    if "user" not in roles:
        return (
            "no_user_turn",
            "the conversation has no user message",
            "add the user's message before the assistant's answer",
            "error",
        )
    if "assistant" not in roles:
        return (
            "no_assistant_turn",
            "the conversation has no assistant message",
            "add the answer the model should learn",
            "error",
        )
    turns = roles[next(i for i, role in enumerate(roles) if role != "system") :]
    if turns[0] != "user":
        return (
            "role_order",
            f"the conversation starts with {turns[0]!r}, not 'user'",
            "start with the user's message (after an optional system message)",
            "error",
        )
    pairs = list(zip(turns, turns[1:]))
    if "system" in turns:
        return (
            "role_order",
            "a system message comes after the conversation started",
            "put the system message first",
            "error",
        )
    if any(role == "tool" and before not in ("assistant", "tool") for before, role in pairs):
        return (
            "role_order",
            "a tool result does not follow an assistant tool call",
            "put each tool result right after the assistant message that called the tool",
            "error",
        )
    repeated = [role for before, role in pairs if role == before and role != "tool"]
    if repeated:
        return (
            "repeated_role",
            f"two {repeated[0]!r} messages in a row",
            "merge them, or alternate user and assistant (many chat templates require it)",
            "warning",
        )
    return None
