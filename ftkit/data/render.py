"""Turns normalized examples (``data.read_examples``) into token ids and labels for training.

Only the tokens the model should learn carry labels: assistant turns with their end-of-turn token,
or the completion, or all of a plain text; everything else is IGNORE_INDEX. Conversations are
rendered with the tokenizer's chat template, and each turn is found by rendering the conversation
up to it: a template needs no ``{% generation %}`` markers, only to render a conversation's prefix
as a prefix of the whole (templates that rewrite earlier turns once later ones follow do not, and
are refused with a clear error rather than mislabelled).

Runs on the worker: transformers, datasets and pyarrow are imported inside functions only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

# ChatML, for a base model without a template of its own (the tiny test model uses it too), with
# {% generation %} markers, so transformers can return assistant-token masks.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

IGNORE_INDEX = -100
COLUMNS = ("input_ids", "attention_mask", "labels")
BATCH_ROWS = 1000
Span = tuple[int, int]  # [start, end) in characters of the rendered text


def tokenize_example(
    example: dict[str, Any],
    tokenizer: Any,
    *,
    max_seq_length: int,
    train_on_inputs: bool = False,
    chat_template: str | None = None,
) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels, truncated to max_seq_length.

    Labels are IGNORE_INDEX on system, user and tool turns and on the prompt, unless
    train_on_inputs; a message with loss_weight 0 is never learned, whatever train_on_inputs says."""
    if "messages" in example:
        ids, labels = _conversation_tokens(
            example, tokenizer, chat_template, train_on_inputs, max_seq_length
        )
    elif "prompt" in example:
        ids, labels = _prompt_completion_tokens(example, tokenizer, train_on_inputs)
    else:
        ids = _with_eos(_encode(tokenizer, example["text"], special=True), tokenizer)
        labels = list(ids)
    ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def count_tokens(
    example: dict[str, Any], tokenizer: Any, *, chat_template: str | None = None
) -> int:
    """Tokens in the rendered example before truncation, from one render (what profiles report)."""
    if "messages" in example:
        text = _renderer(example, tokenizer, chat_template)(len(example["messages"]), False)
        return len(_encode(tokenizer, text, special=False))
    if "prompt" in example:
        return len(_prompt_completion_tokens(example, tokenizer, True)[0])
    return len(_with_eos(_encode(tokenizer, example["text"], special=True), tokenizer))


def build_dataset(
    path: str | Path,
    *,
    format: str,
    tokenizer: Any,
    max_seq_length: int,
    train_on_inputs: bool = False,
    columns: dict[str, str] | None = None,
    chat_template: str | None = None,
) -> Dataset:
    """A datasets.Dataset of tokenize_example rows (int32 lists, built in batches so a large file
    never sits in memory as Python lists); examples with nothing to learn are dropped."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from .formats import read_examples

    rows = (
        tokenize_example(
            example,
            tokenizer,
            max_seq_length=max_seq_length,
            train_on_inputs=train_on_inputs,
            chat_template=chat_template,
        )
        for example in read_examples(path, format=format, columns=columns)
    )
    learnable = (row for row in rows if any(label != IGNORE_INDEX for label in row["labels"]))
    schema = pa.schema([(name, pa.list_(pa.int32())) for name in COLUMNS])
    batches = [
        pa.RecordBatch.from_pylist(batch, schema=schema)
        for batch in _batched(learnable, BATCH_ROWS)
    ]
    return Dataset(InMemoryTable(pa.Table.from_batches(batches, schema=schema)))


def _batched(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# -- plain text and prompt/completion --------------------------------------------------------------
def _encode(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    # verbose=False: a long example is expected here; it is truncated afterwards, not warned about
    return tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"]


def _with_eos(ids: list[int], tokenizer: Any) -> list[int]:
    """The end token, so the model learns to stop (tokenizers that add it themselves are left be)."""
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def _prompt_completion_tokens(
    example: dict[str, Any], tokenizer: Any, train_on_inputs: bool
) -> tuple[list[int], list[int]]:
    # Tokenized apart, as at inference: the prompt alone, then whatever the model generates.
    prompt = _encode(tokenizer, example["prompt"], special=True) if example["prompt"] else []
    completion = _with_eos(_encode(tokenizer, example["completion"], special=False), tokenizer)
    labels = (list(prompt) if train_on_inputs else [IGNORE_INDEX] * len(prompt)) + completion
    return prompt + completion, labels


# -- conversations ---------------------------------------------------------------------------------
def _template(tokenizer: Any, chat_template: str | None, tools: Any = None) -> str:
    """The given template (or the name of one of the tokenizer's), else the tokenizer's own (its
    tool-use one when there are tools), else ChatML: a base model has no template of its own."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        return CHAT_TEMPLATE
    return tokenizer.get_chat_template(chat_template, tools)


def _renderer(
    example: dict[str, Any], tokenizer: Any, chat_template: str | None
) -> Callable[[int, bool], str]:
    """render(n, generation_prompt): the first n messages as the template writes them."""
    tools = example.get("tools")
    template = _template(tokenizer, chat_template, tools)
    messages = [_template_message(m, "tool_calls" in template) for m in example["messages"]]

    def render(n: int, generation_prompt: bool) -> str:
        if n == 0 and not generation_prompt:
            return ""
        return tokenizer.apply_chat_template(
            messages[:n],
            tools=tools,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    return render


def _template_message(message: dict[str, Any], template_knows_tool_calls: bool) -> dict[str, Any]:
    """A message as templates take it: tool calls passed through where the template writes them,
    else written into the content as JSON, so they are still learned."""
    out = {"role": message["role"], "content": message["content"]}
    calls = message.get("tool_calls")
    if calls and template_knows_tool_calls:
        out["tool_calls"] = calls
    elif calls:
        out["content"] = "\n".join(
            filter(None, [message["content"], json.dumps(calls, ensure_ascii=False)])
        )
    return out


def _conversation_tokens(
    example: dict[str, Any],
    tokenizer: Any,
    chat_template: str | None,
    train_on_inputs: bool,
    max_seq_length: int | None = None,
) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "label masks need a fast tokenizer (character offsets): load it with use_fast=True"
        )
    render = _renderer(example, tokenizer, chat_template)
    text = render(len(example["messages"]), False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    kept = len(text)  # characters that survive truncation: turns past them need no label
    if max_seq_length is not None and len(ids) > max_seq_length:
        kept = offsets[max_seq_length - 1][1]
    spans = _learned_spans(example["messages"], render, text, train_on_inputs, kept)
    return ids, _labels_in_spans(ids, offsets, spans)


def _learned_spans(
    messages: list[dict[str, Any]],
    render: Callable[[int, bool], str],
    text: str,
    train_on_inputs: bool,
    kept: int | None = None,
) -> list[Span]:
    """The characters that carry labels. Message i spans from the end of the first i messages'
    rendering to the end of the first i+1's; an assistant turn's learned part starts where the
    generation prompt ends and stops at its end-of-turn token (the whitespace after is not learned).

    Each prefix is rendered whole, so this costs the square of the turns it looks at: it stops at
    the first ``kept`` characters (what truncation keeps), and data/formats.py caps a conversation's turns."""
    kept = len(text) if kept is None else kept
    segments, start = [], 0
    for i in range(len(messages)):
        if start >= kept:
            break
        end = len(_prefix_of(text, render(i + 1, False)))
        segments.append((start, end))
        start = end
    if train_on_inputs:
        masked = [seg for seg, m in zip(segments, messages) if m.get("loss_weight", 1.0) == 0]
        return _complement(masked, len(text))
    spans = []
    for i, ((start, end), message) in enumerate(zip(segments, messages)):
        if message["role"] == "assistant" and message.get("loss_weight", 1.0) != 0:
            body = start + _common_prefix_length(render(i, True)[start:], text[start:end])
            spans.append((body, start + len(text[start:end].rstrip())))
    return spans


def _prefix_of(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(
            "this chat template renders a conversation's first turns differently once later turns "
            "follow, so assistant turns cannot be located for the label mask; pass chat_template= "
            "with a template that renders each prefix of a conversation as a prefix of the whole"
        )
    return prefix


def _common_prefix_length(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _complement(spans: list[Span], length: int) -> list[Span]:
    out, start = [], 0
    for s, e in spans:
        if s > start:
            out.append((start, s))
        start = max(start, e)
    if start < length:
        out.append((start, length))
    return out


def _labels_in_spans(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[Span]
) -> list[int]:
    """A token is learned when any of its characters falls in a learned span (spans are sorted)."""
    labels, k = [], 0
    for token, (start, end) in zip(ids, offsets):
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        inside = k < len(spans) and spans[k][0] < max(end, start + 1)
        labels.append(token if inside else IGNORE_INDEX)
    return labels
