"""Label masks token by token on real examples, with the real tiny tokenizer and its ChatML template."""

from __future__ import annotations

import json
import os

import pytest

from conftest import TEST_DATA
from ftkit.data import read_examples
from ftkit.data.render import IGNORE_INDEX, build_dataset, count_tokens, tokenize_example
from ftkit.training.tinymodel import CHAT_TEMPLATE

os.environ["HF_HUB_OFFLINE"] = "1"
DATA = TEST_DATA
END = "<|im_end|>"
NO_MARKERS = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
LLAMA3_LIKE = (  # headers, a BOS, and an end token the tiny vocabulary does not know: plain text to it
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def first(name: str, fmt: str, where=lambda e: True) -> dict:
    return next(e for e in read_examples(DATA / name, format=fmt) if where(e))


def learned_runs(row: dict, tokenizer) -> list[str]:
    """Decoded runs of labelled tokens; every label is its own input id or IGNORE_INDEX."""
    assert all(
        label in (token, IGNORE_INDEX) for token, label in zip(row["input_ids"], row["labels"])
    )
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def assistant_texts(example: dict) -> list[str]:
    return [
        m["content"] + END
        for m in example["messages"]
        if m["role"] == "assistant" and m.get("loss_weight", 1)
    ]


def tokenize(example, tokenizer, **kwargs):
    return tokenize_example(
        example, tokenizer, max_seq_length=kwargs.pop("max_seq_length", 100_000), **kwargs
    )


# -- conversations: only assistant text and its end token are learned ---------------------------
@pytest.mark.parametrize("template", [None, NO_MARKERS], ids=["generation-markers", "no-markers"])
def has_tool_turn(example: dict) -> bool:
    return any(m["role"] == "tool" for m in example["messages"])


REAL_EXAMPLES = [  # (file, format, which example)
    pytest.param("toy_chat_fine_tuning.jsonl", "chat", lambda e: True, id="chat-with-system"),
    pytest.param(
        "toy_chat_fine_tuning.jsonl", "chat", lambda e: len(e["messages"]) > 4, id="chat-two-turns"
    ),
    pytest.param(
        "alpaca_en_demo.json",
        "alpaca",
        lambda e: "\n" in e["messages"][0]["content"],
        id="alpaca-input",
    ),
    pytest.param("identity.json", "alpaca", lambda e: True, id="alpaca"),
    pytest.param("glaive_toolcall_en_demo.json", "sharegpt", has_tool_turn, id="sharegpt-tools"),
    pytest.param("v1_sft_demo.jsonl", "chat", lambda e: True, id="typed-parts-user-weight-0"),
]


@pytest.mark.parametrize("template", [None, NO_MARKERS], ids=["generation-markers", "no-markers"])
@pytest.mark.parametrize(("name", "fmt", "pick"), REAL_EXAMPLES)
def test_only_assistant_turns_are_learned(tokenizer, name, fmt, pick, template):
    example = first(name, fmt, pick)
    row = tokenize(example, tokenizer, chat_template=template)
    assert learned_runs(row, tokenizer) == assistant_texts(example)
    assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_labels_match_the_templates_generation_mask(tokenizer):
    """The prefix method agrees, token for token, with transformers' {% generation %} mask."""
    examples = list(read_examples(DATA / "glaive_toolcall_en_demo.json", format="sharegpt"))[:40]
    examples += list(read_examples(DATA / "toy_chat_fine_tuning.jsonl", format="chat"))
    for example in examples:
        reference = tokenizer.apply_chat_template(
            example["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        row = tokenize(example, tokenizer, chat_template=NO_MARKERS)
        assert row["input_ids"] == reference["input_ids"]
        assert [int(label != IGNORE_INDEX) for label in row["labels"]] == reference[
            "assistant_masks"
        ]


def test_loss_weight_zero_masks_an_assistant_turn(tokenizer, tmp_path):
    def turn(role: str, text: str, weight: float) -> dict:  # typed parts, as in v1_sft_demo.jsonl
        return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": weight}

    record = {
        "messages": [
            turn("user", "hi", 0.0),
            turn("assistant", "a weak answer", 0.0),
            turn("user", "try again", 0.0),
            turn("assistant", "a good answer", 1.0),
        ]
    }
    (tmp_path / "weights.jsonl").write_text(json.dumps(record) + "\n")
    example = next(read_examples(tmp_path / "weights.jsonl", format="chat"))
    assert learned_runs(tokenize(example, tokenizer), tokenizer) == ["a good answer" + END]


def test_other_template_layouts(tokenizer):
    example = first("toy_chat_fine_tuning.jsonl", "chat", lambda e: len(e["messages"]) > 4)
    row = tokenize(example, tokenizer, chat_template=LLAMA3_LIKE)
    assert learned_runs(row, tokenizer) == [
        m["content"] + "<|eot_id|>" for m in example["messages"] if m["role"] == "assistant"
    ]


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    rewriting = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] if loop.last else '...' }}\n"
        "{% endfor %}"
    )
    with pytest.raises(ValueError, match="prefix"):
        tokenize(first("toy_chat_fine_tuning.jsonl", "chat"), tokenizer, chat_template=rewriting)


def test_tool_calls_are_learned_as_json_when_the_template_has_no_place_for_them(tokenizer):
    call = [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]
    example = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "", "tool_calls": call},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "4."},
        ]
    }
    runs = learned_runs(tokenize(example, tokenizer), tokenizer)
    assert runs == [json.dumps(call) + END, "4." + END]


def test_tools_reach_a_template_that_uses_them(tokenizer):
    template = "{{ tools | tojson }}\n" + CHAT_TEMPLATE
    example = first("glaive_toolcall_en_demo.json", "sharegpt")
    row = tokenize(example, tokenizer, chat_template=template)
    assert tokenizer.decode(row["input_ids"]).startswith('[{"name": "search_recipes"')
    assert learned_runs(row, tokenizer) == assistant_texts(example)


def test_a_tokenizer_with_named_templates_uses_its_tool_use_one_for_tools(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = {"default": NO_MARKERS, "tool_use": "TOOLS\n" + NO_MARKERS}
    with_tools = first("glaive_toolcall_en_demo.json", "sharegpt")
    without = first("toy_chat_fine_tuning.jsonl", "chat")
    assert tokenizer.decode(tokenize(with_tools, tokenizer)["input_ids"]).startswith("TOOLS\n")
    assert tokenizer.decode(tokenize(without, tokenizer)["input_ids"]).startswith("<|im_start|>")
    assert learned_runs(tokenize(with_tools, tokenizer), tokenizer) == assistant_texts(with_tools)


# -- train_on_inputs -----------------------------------------------------------------------------
def test_train_on_inputs_learns_every_token(tokenizer):
    row = tokenize(first("toy_chat_fine_tuning.jsonl", "chat"), tokenizer, train_on_inputs=True)
    assert row["labels"] == row["input_ids"]


def test_train_on_inputs_still_honours_loss_weight_zero(tokenizer):
    example = first("v1_sft_demo.jsonl", "chat")  # user "hi" with loss_weight 0
    row = tokenize(example, tokenizer, train_on_inputs=True)
    answer = example["messages"][1]["content"]
    assert learned_runs(row, tokenizer) == [f"<|im_start|>assistant\n{answer}{END}\n"]


# -- prompt/completion and text ------------------------------------------------------------------
def test_prompt_completion_learns_the_completion_and_end(tokenizer):
    example = {"prompt": "Question: what is 2+2?\nAnswer:", "completion": " 4"}
    row = tokenize(example, tokenizer)
    assert learned_runs(row, tokenizer) == [" 4" + END]
    assert tokenizer.decode(row["input_ids"]) == example["prompt"] + " 4" + END
    assert learned_runs(tokenize(example, tokenizer, train_on_inputs=True), tokenizer) == [
        example["prompt"] + " 4" + END
    ]


def test_text_learns_everything_and_the_end(tokenizer):
    example = first("c4_demo.jsonl", "text", lambda e: len(e["text"]) < 400)
    row = tokenize(example, tokenizer)
    assert row["labels"] == row["input_ids"] and row["input_ids"][-1] == tokenizer.eos_token_id
    assert learned_runs(row, tokenizer) == [example["text"] + END]


def test_truncated_to_max_seq_length(tokenizer):
    example = first("c4_demo.jsonl", "text", lambda e: len(e["text"]) > 4000)
    row = tokenize(example, tokenizer, max_seq_length=64)
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) == 64
    assert count_tokens(example, tokenizer) > 64


def test_count_tokens_is_the_untruncated_length(tokenizer):
    for example in list(read_examples(DATA / "glaive_toolcall_en_demo.json", format="sharegpt"))[
        :5
    ]:
        assert count_tokens(example, tokenizer) == len(tokenize(example, tokenizer)["input_ids"])


# -- build_dataset -------------------------------------------------------------------------------
def test_build_dataset_from_a_real_file(tokenizer):
    ds = build_dataset(
        DATA / "v1_sft_demo.jsonl", format="chat", tokenizer=tokenizer, max_seq_length=4096
    )
    assert len(ds) == 100 and ds.column_names == ["input_ids", "attention_mask", "labels"]
    row = ds[0]
    assert learned_runs(row, tokenizer) == assistant_texts(first("v1_sft_demo.jsonl", "chat"))


def test_build_dataset_drops_examples_with_nothing_to_learn(tokenizer):
    full = build_dataset(
        DATA / "glaive_toolcall_en_demo.json",
        format="sharegpt",
        tokenizer=tokenizer,
        max_seq_length=8192,
    )
    short = build_dataset(
        DATA / "glaive_toolcall_en_demo.json",
        format="sharegpt",
        tokenizer=tokenizer,
        max_seq_length=48,
    )  # the first answer starts past 48 tokens in some examples
    assert len(full) == 50 > len(short) > 0
    assert all(any(label != IGNORE_INDEX for label in labels) for labels in short["labels"])


def test_build_dataset_skips_records_with_errors(tokenizer):
    ds = build_dataset(
        DATA / "toy_chat_fine_tuning.jsonl", format="chat", tokenizer=tokenizer, max_seq_length=512
    )
    assert len(ds) == 4  # line 4 has no user message


# -- cost: rendering a long conversation ---------------------------------------------------------
def long_chat(turns: int) -> dict:
    return {
        "messages": [
            {
                "role": ("user", "assistant")[i % 2],
                "content": f"{('question', 'answer')[i % 2]} {i}",
            }
            for i in range(turns)
        ]
    }


@pytest.fixture
def rendered_messages(tokenizer, monkeypatch) -> list[int]:
    """How many messages each chat-template render was given: the work of one label mask."""
    counts: list[int] = []
    original = tokenizer.apply_chat_template

    def counting(messages, *args, **kwargs):
        counts.append(len(messages))
        return original(messages, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", counting)
    return counts


def test_turns_past_truncation_cost_one_render_each(tokenizer, rendered_messages):
    work, rows = {}, {}
    for turns in (200, 400, 800):
        rendered_messages.clear()
        rows[turns] = tokenize(long_chat(turns), tokenizer, max_seq_length=64)
        work[turns] = sum(rendered_messages)
    # doubling the turns adds one render of the added turns (the whole text, to tokenize it);
    # the prefixes rendered to find turn boundaries stop where truncation does
    assert work[400] - work[200] == 200 and work[800] - work[400] == 400, work
    assert rows[200] == rows[400] == rows[800]


def test_a_truncated_conversation_keeps_the_labels_of_the_untruncated_one(tokenizer):
    example = long_chat(40)
    whole = tokenize(example, tokenizer)
    assert len(whole["input_ids"]) > 100
    cut = tokenize(example, tokenizer, max_seq_length=100)
    assert cut == {name: values[:100] for name, values in whole.items()}
