"""Sample answers for the report: prompts (given, held out, or seen in training), greedy
generation in one batch, and the base model's answer beside the fine-tuned one (and beside the
parent job's, when the run started from one)."""

from __future__ import annotations

from typing import Any


def sample_prompts(
    dataset_path: str,
    dataset_format: str,
    eval_data,
    tokenizer,
    prompts: list[str],
    n: int = 3,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Prompts to compare base and fine-tuned answers on: given ones, else held-out (eval) examples,
    else the first examples of the data set (marked as seen in training)."""
    from ..data import read_examples

    if prompts:
        return [
            {"messages": [{"role": "user", "content": p}], "source": "given"} for p in prompts[:n]
        ]
    found = []
    for example in read_examples(dataset_path, format=dataset_format, columns=columns or None):
        if "messages" in example:
            upto = next(
                (i for i, m in enumerate(example["messages"]) if m["role"] == "assistant"), None
            )
            if upto:
                found.append({"messages": example["messages"][:upto]})
        elif isinstance(example.get("prompt"), list):  # a preference example: messages
            found.append({"messages": example["prompt"]})
        elif "prompt" in example:
            found.append({"prompt": example["prompt"]})
        if len(found) >= 50:
            break
    if eval_data is not None and len(eval_data):
        decoded = eval_texts(eval_data, tokenizer)
        held = [
            f
            for f in found
            if any(
                (f.get("messages") or [{}])[-1].get("content", f.get("prompt", "")) in d
                for d in decoded
            )
        ]
        if held:
            return [{**f, "source": "held out"} for f in held[:n]]
    return [{**f, "source": "seen in training"} for f in found[:n]]


def eval_texts(eval_data, tokenizer) -> set[str]:
    """The held-out examples' text, to know a prompt as held out: decoded tokens (SFT), or the
    prompts' last messages (preference sets, which stay conversational until the trainer)."""
    if "input_ids" in eval_data.column_names:
        return {tokenizer.decode(ids) for ids in eval_data["input_ids"][:200]}
    return {str(prompt[-1]["content"]) for prompt in eval_data["prompt"][:200] if prompt}


def encode(tokenizer, sample: dict[str, Any]) -> list[int]:
    """The token ids the model reads for a sample: its messages through the chat template, with
    the assistant's turn opened, or its plain ``prompt``."""
    if "messages" in sample:
        ids = tokenizer.apply_chat_template(
            sample["messages"], add_generation_prompt=True, return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(sample["prompt"])["input_ids"]
    return list(ids)


def generate(
    model, tokenizer, sample: dict[str, Any], max_new_tokens: int = 48, temperature: float = 0.0
) -> str:
    """The answer to one sample (``messages`` or ``prompt``), greedy unless ``temperature`` > 0:
    what ``Job.generate`` and the chat call."""
    return generate_batch(model, tokenizer, [sample], max_new_tokens, temperature)[0]


def generate_batch(
    model,
    tokenizer,
    samples: list[dict[str, Any]],
    max_new_tokens: int = 48,
    temperature: float = 0.0,
) -> list[str]:
    """Answers to several prompts in one ``generate`` call, left-padded: a report's samples cost
    two calls (base and fine-tuned), not two per prompt. Greedy at temperature 0, else sampled."""
    import torch

    if not samples:
        return []
    encoded = [encode(tokenizer, sample) for sample in samples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            **(
                {"do_sample": True, "temperature": temperature}
                if temperature
                else {"do_sample": False}
            ),
            pad_token_id=pad,
            # training with gradient checkpointing turned the model's cache off: without it each
            # new token recomputes the whole sequence (measured 3 s against 0.3 s on the demo)
            use_cache=True,
        )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def show_samples(
    model, tokenizer, samples: list[dict[str, Any]], parent: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """The base model's answer (adapter disabled) beside the fine-tuned one, for each prompt; with
    ``parent`` (the adapter's weights as the run started from a past job's) that job's answer
    between them."""
    from IPython.display import HTML, display

    from ..core.html import table
    from .margins import as_started

    model.eval()
    with model.disable_adapter():
        before = generate_batch(model, tokenizer, samples)
    parents: list[str] = []
    if parent is not None:
        with as_started(model, parent):
            parents = generate_batch(model, tokenizer, samples)
    after = generate_batch(model, tokenizer, samples)
    rows = [
        {
            "prompt": sample["messages"][-1]["content"]
            if "messages" in sample
            else sample["prompt"],
            "source": sample.get("source", ""),
            "base model": base,
            **({"parent job": parents[i]} if parents else {}),
            "fine-tuned": tuned,
        }
        for i, (sample, base, tuned) in enumerate(zip(samples, before, after))
    ]
    columns = (
        "prompt",
        "source",
        "base model",
        *(("parent job",) if parents else ()),
        "fine-tuned",
    )
    headers = {
        "base model": "base model (before)",
        "parent job": "parent job (started from)",
        "fine-tuned": "fine-tuned (after)",
    }
    shown = table(
        rows, columns, caption="Sample generations", css_class="ftkit-samples", headers=headers
    )
    display(HTML(shown))
    return rows
