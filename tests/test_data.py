"""ftkit.data on the real data sets in tests/data and on corrupted copies of them."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_DATA
from ftkit import data
from ftkit.data import DatasetProfile, inspect_dataset, read_examples, readers, validate_dataset
from ftkit.errors import DatasetError

os.environ["HF_HUB_OFFLINE"] = "1"
DATA = TEST_DATA
REAL_FILES = [
    ("alpaca_en_demo.json", "alpaca", 100, "json"),
    ("identity.json", "alpaca", 91, "json"),
    ("glaive_toolcall_en_demo.json", "sharegpt", 50, "json"),
    ("c4_demo.jsonl", "text", 40, "jsonl"),
    ("v1_sft_demo.jsonl", "chat", 100, "jsonl"),
    ("toy_chat_fine_tuning.jsonl", "chat", 5, "jsonl"),
]


def write_lines(path: Path, records: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


def kinds(problems) -> list[tuple[str, int | None]]:
    return [(p.kind, p.line) for p in problems]


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


HELLO = chat(("user", "hi"), ("assistant", "hello"))


# -- the real files ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fmt", "rows", "kind"), REAL_FILES)
def test_real_file_is_detected_with_its_row_count(name, fmt, rows, kind):
    profile = inspect_dataset(DATA / name)
    assert (profile.format, profile.rows, profile.file_kind) == (fmt, rows, kind)
    assert profile.ok == (name != "toy_chat_fine_tuning.jsonl"), profile.summary()


@pytest.mark.parametrize(("name", "fmt", "rows", "kind"), REAL_FILES[:5])
def test_explicit_format_reads_every_row(name, fmt, rows, kind):
    assert sum(1 for _ in read_examples(DATA / name, format=fmt)) == rows


@pytest.mark.parametrize("max_seq_length", [512, 2048])
def test_toy_chat_faults_are_named_by_line(max_seq_length):
    profile = inspect_dataset(DATA / "toy_chat_fine_tuning.jsonl", max_seq_length=max_seq_length)
    assert kinds(profile.problems) == [("no_user_turn", 4)]
    assert kinds(profile.warnings) == [("too_long", 5)]
    assert profile.over_max_seq_length == 1 and profile.tokens["estimated"] is True
    summary = profile.summary()
    assert "line 4 [messages]: the conversation has no user message" in summary
    assert "line 5:" in summary and "will be truncated" in summary


def test_toy_chat_faults_with_the_real_tokenizer(tokenizer):
    from ftkit.data.render import count_tokens

    profile = inspect_dataset(
        DATA / "toy_chat_fine_tuning.jsonl", tokenizer=tokenizer, max_seq_length=512
    )
    assert kinds(profile.problems) == [("no_user_turn", 4)]
    assert kinds(profile.warnings) == [("too_long", 5)]
    assert profile.tokens["estimated"] is False
    lengths = [
        count_tokens(e, tokenizer)
        for e in read_examples(DATA / "toy_chat_fine_tuning.jsonl", format="chat")
    ]
    assert profile.tokens["max"] == max(lengths) > 512 > sorted(lengths)[-2]
    assert profile.tokens_per_epoch == sum(min(n, 512) for n in lengths)


def test_warnings_do_not_block():
    profile = validate_dataset(DATA / "c4_demo.jsonl", max_seq_length=512)
    assert profile.ok and profile.over_max_seq_length > 0
    assert {w.kind for w in profile.warnings} == {"too_long"}


def test_validate_raises_with_the_summary_and_the_problems():
    with pytest.raises(DatasetError) as caught:
        validate_dataset(DATA / "toy_chat_fine_tuning.jsonl")
    assert "no_user_turn" in str(caught.value)
    assert kinds(caught.value.problems) == [("no_user_turn", 4)]


def test_duplicates_are_warned_with_the_first_line(tmp_path):
    profile = inspect_dataset(
        write_lines(tmp_path / "d.jsonl", [HELLO, chat(("user", "a"), ("assistant", "b")), HELLO])
    )
    assert profile.ok and profile.duplicates == 1
    assert kinds(profile.warnings) == [("duplicate", 3)] and "line 1" in profile.warnings[0].message


def test_profile_is_json_safe_with_a_five_example_preview():
    profile = inspect_dataset(DATA / "glaive_toolcall_en_demo.json")
    as_dict = json.loads(json.dumps(profile.to_dict()))
    assert as_dict["ok"] is True and len(as_dict["preview"]) == 5
    assert set(as_dict["tokens"]) == {"min", "mean", "p95", "max", "estimated"}
    assert as_dict["tokens"]["min"] <= as_dict["tokens"]["p95"] <= as_dict["tokens"]["max"]


# -- normalized shapes ---------------------------------------------------------------------------
def test_alpaca_joins_instruction_and_input_and_keeps_system_and_history(tmp_path):
    record = {
        "instruction": "Translate",
        "input": "chat",
        "output": "cat",
        "system": "Be brief.",
        "history": [["hi", "hello"]],
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps([record], indent=2))
    assert list(read_examples(path, format="alpaca")) == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "Translate\nchat"},
                {"role": "assistant", "content": "cat"},
            ]
        }
    ]


def test_sharegpt_roles_and_tools_are_normalized():
    example = next(read_examples(DATA / "glaive_toolcall_en_demo.json", format="sharegpt"))
    assert [m["role"] for m in example["messages"][:6]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert example["tools"][0]["name"] == "search_recipes"  # JSON text in the file, a list here


def test_typed_parts_are_joined_and_loss_weight_kept():
    example = next(read_examples(DATA / "v1_sft_demo.jsonl", format="chat"))
    assert example["messages"][0] == {"role": "user", "content": "hi", "loss_weight": 0.0}
    assert example["messages"][1]["loss_weight"] == 1.0


def test_openai_tool_calls_are_kept(tmp_path):
    call = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    record = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ]
    }
    profile = inspect_dataset(write_lines(tmp_path / "t.jsonl", [record]))
    assert profile.ok, profile.summary()
    assert profile.preview[0]["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": call,
    }


def test_prompt_completion_and_text(tmp_path):
    pc = write_lines(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    assert inspect_dataset(pc).format == "prompt_completion"
    assert list(read_examples(pc, format="prompt_completion")) == [
        {"prompt": "2+2=", "completion": "4"}
    ]
    assert next(read_examples(DATA / "c4_demo.jsonl", format="text")).keys() == {"text"}


def test_txt_file_is_one_document_per_block(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first doc\nstill first\n\n\nsecond doc\n")
    profile = inspect_dataset(path)
    assert (profile.file_kind, profile.format, profile.rows) == ("txt", "text", 2)
    assert [e["text"] for e in read_examples(path, format="text")] == [
        "first doc\nstill first",
        "second doc",
    ]


def test_column_mapping_renames_and_names_the_users_column(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\n"What is 2+2?",4\n"Empty?",\n')
    profile = inspect_dataset(path, columns={"instruction": "question", "output": "answer"})
    assert (profile.file_kind, profile.format, profile.rows) == ("csv", "alpaca", 2)
    assert (
        kinds(profile.problems) == [("empty_content", 3)] and profile.problems[0].field == "answer"
    )
    assert next(
        read_examples(
            path, format="alpaca", columns={"instruction": "question", "output": "answer"}
        )
    ) == {
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }


def test_explicit_format_checks_every_record_against_it():
    profile = inspect_dataset(DATA / "c4_demo.jsonl", format="prompt_completion")
    assert (
        profile.problem_counts["missing_field"] == 2 * 40 and not profile.ok
    )  # no prompt, no completion


# -- file kinds ----------------------------------------------------------------------------------
def test_gzip_jsonl_and_gzip_json_array(tmp_path):
    for name in ("v1_sft_demo.jsonl", "glaive_toolcall_en_demo.json"):
        packed = tmp_path / (name + ".gz")
        packed.write_bytes(gzip.compress((DATA / name).read_bytes()))
        plain = inspect_dataset(DATA / name)
        profile = inspect_dataset(packed)
        assert profile.file_kind == plain.file_kind + ".gz"
        assert (profile.format, profile.rows, profile.ok) == (plain.format, plain.rows, True)


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in (DATA / "v1_sft_demo.jsonl").read_text().splitlines()]
    path = tmp_path / "v1.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    profile = inspect_dataset(path)
    assert (profile.file_kind, profile.format, profile.rows, profile.ok) == (
        "parquet",
        "chat",
        len(records),
        True,
    )
    assert profile.preview[0]["messages"][0]["content"] == "hi"


def test_jsonl_named_json_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    path.write_bytes((DATA / "toy_chat_fine_tuning.jsonl").read_bytes())
    assert (inspect_dataset(path).file_kind, inspect_dataset(path).rows) == ("jsonl", 5)


def test_json_array_is_decoded_incrementally_with_line_numbers(monkeypatch):
    """Tiny chunks cut nearly every element; each must still come out whole, at the line its { is on."""
    path = DATA / "alpaca_en_demo.json"
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines, start=1) if line.startswith("  {")]
    monkeypatch.setattr(readers, "ARRAY_CHUNK_CHARS", 7)
    events = list(readers.records(readers.sniff(path)[0]))
    assert [record for _, record, _ in events] == json.loads(path.read_text())
    assert [line for line, _, _ in events] == starts


def test_minified_json_array_is_read_in_pieces(tmp_path, monkeypatch):
    records = json.loads((DATA / "identity.json").read_text())
    path = tmp_path / "one_line.json"
    path.write_text(json.dumps(records))
    monkeypatch.setattr(readers, "ARRAY_PIECE_BYTES", 100)
    monkeypatch.setattr(readers, "ARRAY_CHUNK_CHARS", 100)
    profile = inspect_dataset(path)
    assert (profile.rows, profile.ok) == (91, True)


# -- corrupted copies ----------------------------------------------------------------------------
@pytest.fixture
def toy_lines() -> list[str]:
    return (DATA / "toy_chat_fine_tuning.jsonl").read_text().splitlines()


def test_broken_jsonl_line(tmp_path, toy_lines):
    toy_lines[1] = toy_lines[1][:-5]
    profile = inspect_dataset(write_lines(tmp_path / "broken.jsonl", toy_lines))
    assert ("invalid_json", 2) in kinds(profile.problems) and profile.rows == 4
    assert "line 2:" in profile.summary()


def test_broken_json_array_element(tmp_path):
    text = (DATA / "identity.json").read_text()
    lines = text.splitlines()
    lines[8] = lines[8].rstrip(",")  # drop the comma after "input" in the second record
    path = tmp_path / "identity.json"
    path.write_text("\n".join(lines))
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("invalid_json", 10)], profile.summary()
    assert profile.rows == 1  # the records before it; the rest cannot be located


def test_unclosed_json_array(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text((DATA / "identity.json").read_text().rstrip().rstrip("]"))
    profile = inspect_dataset(path)
    assert [p.kind for p in profile.problems] == ["invalid_json"] and profile.rows == 91
    assert "not closed" in profile.problems[0].message


def test_missing_field(tmp_path, toy_lines):
    toy_lines[2] = json.dumps(
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}
    )
    profile = inspect_dataset(write_lines(tmp_path / "m.jsonl", toy_lines))
    assert kinds(profile.problems) == [("missing_field", 3), ("no_user_turn", 4)]
    assert profile.problems[0].field == "messages[0].content"


def test_alpaca_missing_output(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}], indent=1)
    )
    profile = inspect_dataset(path)
    assert [(p.kind, p.line, p.field) for p in profile.problems] == [("missing_field", 6, "output")]


def test_empty_file(tmp_path):
    for name, content in (
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n \n"),
        ("empty.jsonl.gz", gzip.compress(b"")),
    ):
        (tmp_path / name).write_bytes(content)
        assert kinds(inspect_dataset(tmp_path / name).problems) == [("empty_file", None)]


def test_empty_json_array(tmp_path):
    (tmp_path / "e.json").write_text("[]")
    assert kinds(inspect_dataset(tmp_path / "e.json").problems) == [("empty_file", None)]


def test_binary_file(tmp_path):
    path = tmp_path / "model.jsonl"
    path.write_bytes(bytes(range(256)) * 10)
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("binary_file", None)] and not profile.ok


def test_binary_bytes_after_the_first_block(tmp_path, toy_lines):
    path = write_lines(tmp_path / "tail.jsonl", toy_lines)  # over 8 KB: past the first look
    path.write_bytes(path.read_bytes() + b"\x00\x01\x02garbage\n")
    assert ("binary_file", 6) in kinds(inspect_dataset(path).problems)


def test_non_utf8_bytes_name_the_line(tmp_path, toy_lines):
    path = write_lines(tmp_path / "latin1.jsonl", toy_lines)
    raw = path.read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b"book", b"b\xe9ok")
    path.write_bytes(b"\n".join(raw))
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("not_utf8", 3), ("no_user_turn", 4)]
    assert "0xe9" in profile.problems[0].message and profile.rows == 4


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("instruction,output\nCafé?,Oui\nok,fine\n".encode("latin-1"))
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("not_utf8", 2)] and profile.rows == 2


def test_non_utf8_bytes_in_a_json_array_name_the_line(tmp_path):
    raw = (DATA / "identity.json").read_bytes().split(b"\n")
    raw[12] = raw[12].replace(b"Who", b"Wh\xf6")
    path = tmp_path / "identity.json"
    path.write_bytes(b"\n".join(raw))
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("not_utf8", 13)] and profile.rows == 91


def test_mixed_formats(tmp_path, toy_lines):
    toy_lines.insert(2, json.dumps({"instruction": "a", "output": "b"}))
    profile = inspect_dataset(write_lines(tmp_path / "mixed.jsonl", toy_lines))
    assert kinds(profile.problems) == [("mixed_formats", 3), ("no_user_turn", 5)]


def test_conversation_faults(tmp_path):
    records = [
        chat(("user", "hi"), ("assistant", "")),
        chat(("user", "hi"), ("robot", "beep")),
        chat(("user", "hi"), ("user", "again")),
        chat(("assistant", "I start"), ("user", "hi"), ("assistant", "ok")),
        chat(("user", "hi"), ("system", "late"), ("assistant", "ok")),
        chat(("user", "hi"), ("tool", "42"), ("assistant", "ok")),
        chat(("user", "hi"), ("assistant", "a"), ("assistant", "b")),
        {"messages": []},
        {"messages": "hello"},
        ["not", "an", "object"],
        {"something": "else"},
    ]
    profile = inspect_dataset(write_lines(tmp_path / "faults.jsonl", [HELLO, *records]))
    assert kinds(profile.problems) == [
        ("empty_content", 2),
        ("unknown_role", 3),
        ("no_assistant_turn", 4),
        ("role_order", 5),
        ("role_order", 6),
        ("role_order", 7),
        ("empty_content", 9),
        ("wrong_type", 10),
        ("wrong_type", 11),
        ("unknown_format", 12),
    ]
    assert kinds(profile.warnings) == [("repeated_role", 8)]


@pytest.mark.parametrize(("name", "sep"), [("bad.csv", ","), ("bad.tsv", "\t")])
def test_csv_row_with_extra_values(tmp_path, name, sep):
    path = tmp_path / name
    path.write_text(f'instruction{sep}output\n"multi\nline"{sep}ok\na{sep}b{sep}c\n')
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("csv_columns", 4)] and profile.rows == 1


def test_truncated_gzip(tmp_path):
    packed = gzip.compress((DATA / "c4_demo.jsonl").read_bytes())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    profile = inspect_dataset(path)
    assert "unreadable_file" in [p.kind for p in profile.problems] and profile.rows > 0


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1" + b"\x00garbage" * 100)
    assert [p.kind for p in inspect_dataset(path).problems] == ["unreadable_file"]


def test_problems_are_grouped_and_capped(tmp_path):
    path = write_lines(tmp_path / "many.jsonl", ["{broken"] * 30 + [json.dumps(HELLO)])
    profile = inspect_dataset(path)
    assert (
        profile.problem_counts["invalid_json"] == 30 and len(profile.problems) == data.KEPT_PER_KIND
    )
    summary = profile.summary()
    assert "invalid_json (30):" in summary and "... and 25 more" in summary
    assert summary.count("\n    line ") == data.SHOWN_PER_KIND


# -- the caller's mistakes raise -----------------------------------------------------------------
def test_missing_path_raises(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        inspect_dataset(tmp_path / "nope.jsonl")


def test_unknown_format_or_column_raises():
    with pytest.raises(DatasetError, match="unknown format"):
        inspect_dataset(DATA / "c4_demo.jsonl", format="csv")
    with pytest.raises(DatasetError, match="questoin"):
        inspect_dataset(DATA / "c4_demo.jsonl", columns={"questoin": "q"})


def test_profile_fields_are_the_contract():
    names = {f for f in DatasetProfile.__dataclass_fields__}
    assert {
        "path",
        "file_kind",
        "format",
        "rows",
        "problems",
        "warnings",
        "tokens",
        "over_max_seq_length",
        "tokens_per_epoch",
        "preview",
    } <= names


def test_import_loads_nothing_heavy():
    code = (
        "import sys, ftkit.data; heavy = {'torch', 'transformers', 'datasets', 'pyarrow'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# -- limits: what would cost memory, recursion or quadratic time gets a line-numbered problem -----
def test_a_conversation_with_too_many_turns_is_refused_on_its_line(tmp_path):
    def turns(n: int) -> dict:
        return chat(*[(("user", "assistant")[i % 2], f"turn {i}") for i in range(n)])

    path = write_lines(tmp_path / "long.jsonl", [HELLO, turns(data.MAX_MESSAGES), turns(20_000)])
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("too_many_turns", 3)]
    assert "20,000 messages" in profile.problems[0].message and "split" in profile.problems[0].fix


@pytest.mark.parametrize("depth", [data.MAX_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_a_problem_not_a_recursion_error(tmp_path, depth):
    nested = "[" * depth + "]" * depth
    deep_call = HELLO["messages"][:1] + [
        {"role": "assistant", "content": "x", "tool_calls": [json.loads("[" * 200 + "]" * 200)]}
    ]
    path = write_lines(tmp_path / "deep.jsonl", [HELLO, nested, {"messages": deep_call}])
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("too_deep", 2), ("too_deep", 3)]
    array = tmp_path / "deep.json"
    array.write_text(f"[{json.dumps(HELLO)},\n{nested}\n]")
    assert kinds(inspect_dataset(array).problems)[0] in (("too_deep", 2), ("invalid_json", 2))
    columns = tmp_path / "deep.csv"
    shallower = nested[: min(depth, 5000)] + nested[-min(depth, 5000) :]  # CSV fields: < 128 KB
    columns.write_text(f'messages\n"{shallower}"\n')
    assert kinds(inspect_dataset(columns).problems) == [("too_deep", 2)]


def test_an_over_long_line_is_skipped_unread_with_a_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    path = write_lines(tmp_path / "big.jsonl", [HELLO, {"text": "x" * 5000}, HELLO])
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("line_too_long", 2)] and profile.rows == 2
    assert [p.line for p in profile.warnings] == [3]  # the duplicate of line 1: numbering holds


def test_an_over_long_array_element_stops_the_reading_with_a_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(readers, "ARRAY_CHUNK_CHARS", 100)
    path = tmp_path / "big.json"
    path.write_text(json.dumps([HELLO, {"text": "x" * 5000}, HELLO], indent=1))
    profile = inspect_dataset(path)
    assert kinds(profile.problems) == [("element_too_long", 14)] and profile.rows == 1


def test_previews_cut_long_texts(tmp_path):
    profile = inspect_dataset(write_lines(tmp_path / "long.jsonl", [{"text": "y" * 100_000}]))
    shown = profile.preview[0]["text"]
    assert shown.startswith("y" * data.PREVIEW_CHARS) and shown.endswith("more characters)")
    assert len(json.dumps(profile.to_dict())) < 5 * data.PREVIEW_CHARS
