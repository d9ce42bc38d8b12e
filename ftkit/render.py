"""Turns normalized examples into token ids and labels: the chat template renders conversations,
and only the tokens the model should learn (assistant turns, completions) carry labels."""

from __future__ import annotations

import json
from typing import Any

from .tinymodel import CHAT_TEMPLATE

IGNORE = -100


def tokenize_example(example: dict[str, Any], tokenizer, *, max_seq_length: int, train_on_inputs: bool = False,
                     chat_template: str | None = None) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels (IGNORE where the loss must not look), truncated."""
    if "messages" in example:
        text, spans = _render_conversation(example, tokenizer, chat_template, train_on_inputs)
        ids, labels = _label_spans(tokenizer, text, spans)
    elif "prompt" in example:
        prompt = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt + completion
        labels = (prompt if train_on_inputs else [IGNORE] * len(prompt)) + completion
    else:
        ids = tokenizer(example["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labels = list(ids)
    ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _template_kwargs(example: dict[str, Any], tokenizer, chat_template: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"chat_template": chat_template or tokenizer.chat_template or CHAT_TEMPLATE}
    tools = example.get("tools")
    if tools and "tools" in kwargs["chat_template"]:
        try:
            kwargs["tools"] = json.loads(tools) if isinstance(tools, str) else tools
        except json.JSONDecodeError:
            pass
    return kwargs


def _render_conversation(example: dict[str, Any], tokenizer, chat_template: str | None,
                         train_on_inputs: bool) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation as text, and the character spans that carry labels.

    An assistant turn's span runs from the end of the rendered prefix (with the generation prompt)
    to the end of the prefix that includes it, so the end-of-turn token is learned too. This needs
    no {% generation %} markers in the template, only that a prefix renders as a prefix."""
    messages = [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
    kwargs = _template_kwargs(example, tokenizer, chat_template)

    def render(upto: int, prompt: bool = False) -> str:
        if upto == 0 and not prompt:
            return ""
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt, **kwargs)

    text = render(len(messages))
    if train_on_inputs:
        return text, [(0, len(text))]
    spans = []
    for i, message in enumerate(example["messages"]):
        if message["role"] != "assistant" or message.get("loss_weight", 1.0) == 0:
            continue
        start_text = render(i, prompt=True)
        if not text.startswith(start_text):
            start_text = render(i)
        end_text = render(i + 1)
        if not (text.startswith(start_text) and text.startswith(end_text)):
            raise ValueError("the chat template does not render conversations prefix by prefix; "
                             "pass chat_template= with one that does to mask non-assistant tokens")
        spans.append((len(start_text), len(end_text)))
    return text, spans


def _label_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = []
    for token, (start, end) in zip(ids, encoded["offset_mapping"]):
        inside = any(s <= start and end <= e and end > start for s, e in spans)
        labels.append(token if inside else IGNORE)
    return ids, labels


def build_dataset(path, *, format: str, tokenizer, max_seq_length: int, train_on_inputs: bool = False,
                  columns: dict[str, str] | None = None, chat_template: str | None = None):
    """A datasets.Dataset of tokenized examples; examples with nothing to learn are dropped."""
    from datasets import Dataset

    from .data import read_examples

    rows = []
    for example in read_examples(path, format=format, columns=columns):
        row = tokenize_example(example, tokenizer, max_seq_length=max_seq_length, train_on_inputs=train_on_inputs,
                               chat_template=chat_template)
        if any(label != IGNORE for label in row["labels"]):
            rows.append(row)
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})
