"""What a preference run changed, for the report: the model's log-probability margin of the chosen
over the rejected answer on a few pairs (held out where there are), as training started and after,
and the weights it started from, to answer as it did then (the base's, or a parent job's)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SHOWN_CHARS = 80  # of a prompt or an answer in the margins table


def starting_weights(model) -> dict[str, Any]:
    """A copy of the adapter's weights as training starts (a parent job's adapter), kept in the
    computer's memory, not the GPU's."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


@contextmanager
def as_started(model, weights: dict[str, Any]) -> Iterator[None]:
    """The model as training found it, for the length of the block: the adapter's starting
    weights swapped in, the trained ones put back after."""
    import torch

    params = dict(model.named_parameters())
    trained = {name: params[name].detach().clone() for name in weights}
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in trained.items():
                params[name].copy_(value)


def answer_logp(model, tokenizer, prompt: list[dict], answer: list[dict]) -> float:
    """log p(answer | prompt), summed over the answer's tokens, under the chat template."""
    import torch

    start = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)
    full = tokenizer.apply_chat_template(prompt + answer, return_dict=True)
    ids, n = list(full["input_ids"]), len(start["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:], device=logps.device)
    return float(logps[n - 1 :].gather(1, targets[n - 1 :, None]).sum())


def margins(model, tokenizer, pairs: list[dict[str, Any]]) -> list[float]:
    """log p(chosen) - log p(rejected) for each pair."""
    model.eval()
    return [
        answer_logp(model, tokenizer, p["prompt"], p["chosen"])
        - answer_logp(model, tokenizer, p["prompt"], p["rejected"])
        for p in pairs
    ]


def report_pairs(train_data, eval_data, n: int = 5) -> list[dict[str, Any]]:
    """A few pairs to measure: held-out ones where there are, else the first trained on. KTO's
    unpaired rows have no pairs: none."""
    for data, source in ((eval_data, "held out"), (train_data, "seen in training")):
        if data is not None and len(data) and "chosen" in data.column_names:
            return [{**data[i], "source": source} for i in range(min(n, len(data)))]
    return []


def show_margins(
    model, tokenizer, pairs: list[dict[str, Any]], parent: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The margins table: each pair's margin as training started (the base model, or the parent
    job's adapter: ``parent``) and after it."""
    from IPython.display import HTML, display

    from ..core.html import table

    if not pairs:
        return []
    with as_started(model, parent) if parent is not None else model.disable_adapter():
        before = margins(model, tokenizer, pairs)
    after = margins(model, tokenizer, pairs)
    rows = [
        {
            "prompt": clipped(pair["prompt"][-1]["content"]),
            "chosen": clipped(pair["chosen"][-1]["content"]),
            "rejected": clipped(pair["rejected"][-1]["content"]),
            "source": pair["source"],
            "before": round(b, 3),
            "after": round(a, 3),
        }
        for pair, b, a in zip(pairs, before, after)
    ]
    columns = ("prompt", "chosen", "rejected", "source", "before", "after")
    caption = "Log-probability margin, chosen over rejected (nats)"
    display(HTML(table(rows, columns, caption=caption, css_class="ftkit-margins")))
    return rows


def clipped(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
