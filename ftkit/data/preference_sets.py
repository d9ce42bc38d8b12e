"""Normalized preference rows (``read_examples`` of a "preference" or "unpaired_preference" file)
into the ``datasets.Dataset`` that TRL's DPO, ORPO and KTO trainers take, in TRL's conversational
form: TRL applies the tokenizer's chat template itself, and scores only the answers.

    pairs (DPO, ORPO; KTO too)  prompt, chosen, rejected   each a list of {role, content}
    unpaired (KTO)              prompt, completion, label  label a bool

Runs on the worker: datasets and transformers are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DatasetError
from .render import _encode, _template

if TYPE_CHECKING:
    from datasets import Dataset

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


def unpair(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """KTO's unpaired rows from pairs: each pair gives its chosen answer labelled True and its
    rejected one labelled False (as TRL's unpair_preference_dataset does). Unpaired rows pass."""
    for row in rows:
        if "chosen" not in row:
            yield row
            continue
        yield {"prompt": row["prompt"], "completion": row["chosen"], "label": True}
        yield {"prompt": row["prompt"], "completion": row["rejected"], "label": False}


def build_preference_dataset(rows: Iterable[dict[str, Any]]) -> Dataset:
    """A datasets.Dataset of normalized preference rows, all pairs or all unpaired, with TRL's
    conversational columns (PAIR_COLUMNS or UNPAIRED_COLUMNS); DatasetError when there are none
    or the two kinds are mixed."""
    from datasets import Dataset, Features, List, Value

    rows = list(rows)
    if not rows:
        raise DatasetError("no preference examples to train on: every row had an error")
    columns = PAIR_COLUMNS if "chosen" in rows[0] else UNPAIRED_COLUMNS
    if any(set(row) != set(columns) for row in rows):
        raise DatasetError(
            f"preference rows must all hold {', '.join(columns)}: pairs and unpaired examples "
            "cannot be mixed (unpair the pairs first)"
        )
    messages = List({"role": Value("string"), "content": Value("string")})
    features = Features({name: Value("bool") if name == "label" else messages for name in columns})
    return Dataset.from_list(
        [{name: row[name] for name in columns} for row in rows], features=features
    )


def read_preference_dataset(
    path: str | Path,
    *,
    format: str,
    columns: dict[str, str] | None = None,
    unpaired: bool = False,
) -> Dataset:
    """The file's rows as build_preference_dataset makes them; ``unpaired`` (KTO) unpairs pairs."""
    from .formats import read_examples

    rows: Iterable[dict[str, Any]] = read_examples(path, format=format, columns=columns)
    return build_preference_dataset(unpair(rows) if unpaired else rows)


def count_preference_tokens(
    example: dict[str, Any], tokenizer: Any, *, chat_template: str | None = None
) -> tuple[int, int]:
    """(prompt, prompt with its longer answer) in tokens, rendered with the chat template as TRL
    renders them: the prompt with the generation prompt, then the whole conversation."""
    template = _template(tokenizer, chat_template)

    def tokens(messages: list[dict[str, Any]], generation_prompt: bool) -> int:
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        return len(_encode(tokenizer, text, special=False))

    prompt = example["prompt"]
    answers = [example[k] for k in ("chosen", "rejected", "completion") if k in example]
    return tokens(prompt, True), max(tokens(prompt + answer, False) for answer in answers)
