"""Preference data as people bring it (plain pairs, TRL's conversational pairs with or without the
prompt, OpenAI's DPO lines, KTO's labelled answers, CSV and Parquet with a column map): detected,
normalized to TRL's conversational shape, checked line by line, profiled, turned into the dataset
TRL's trainers take, and refused at submit (and on the worker) when the method does not fit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import ftkit
from conftest import EXAMPLE_DATA
from ftkit import spec
from ftkit.data import (
    build_preference_dataset,
    detect_format,
    inspect_dataset,
    read_examples,
    read_preference_dataset,
    unpair,
    validate_dataset,
)
from ftkit.errors import ConfigError, DatasetError


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def found(problems) -> list[tuple[str, int | None, str | None]]:
    return [(p.kind, p.line, p.field) for p in problems]


SKY = {
    "prompt": [user("What colour is the sky?")],
    "chosen": [bot("Blue.")],
    "rejected": [bot("Green, mostly.")],
}
SYSTEM = {"role": "system", "content": "Answer briefly."}
FORMS = {
    "plain pair": (
        {"prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green, mostly."},
        SKY,
    ),
    "TRL conversational pair": (copy.deepcopy(SKY), SKY),
    "TRL implicit prompt": (
        {
            "chosen": [SYSTEM, user("Hi"), bot("Hello."), user("Sky?"), bot("Blue.")],
            "rejected": [SYSTEM, user("Hi"), bot("Hello."), user("Sky?"), bot("Green.")],
        },
        {
            "prompt": [SYSTEM, user("Hi"), bot("Hello."), user("Sky?")],
            "chosen": [bot("Blue.")],
            "rejected": [bot("Green.")],
        },
    ),
    "OpenAI DPO": (
        {
            "input": {"messages": [SYSTEM, user("Sky?")], "tools": [], "parallel_tool_calls": True},
            "preferred_output": [bot("Blue.")],
            "non_preferred_output": [bot("Green.")],
        },
        {"prompt": [SYSTEM, user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]},
    ),
    "KTO": (
        {"prompt": "Sky?", "completion": "Blue.", "label": True},
        {"prompt": [user("Sky?")], "completion": [bot("Blue.")], "label": True},
    ),
    "KTO conversational": (
        {"prompt": [user("Sky?")], "completion": [bot("Green.")], "label": False},
        {"prompt": [user("Sky?")], "completion": [bot("Green.")], "label": False},
    ),
}


# -- each form, detected and normalized to the contract's shape ----------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_each_form_is_detected_and_normalized_to_trls_conversational_shape(form, tmp_path):
    record, expected = FORMS[form]
    fmt = "unpaired_preference" if "label" in expected else "preference"
    assert detect_format(record) == fmt
    path = write_lines(tmp_path / "prefs.jsonl", [record])
    profile = validate_dataset(path)
    assert (profile.format, profile.rows) == (fmt, 1), profile.summary()
    assert list(read_examples(path, format=fmt)) == [expected]
    assert profile.preview == [expected]


def test_a_prompt_completion_file_without_label_stays_sft():
    assert detect_format({"prompt": "a", "completion": "b"}) == "prompt_completion"


def test_the_profile_counts_pairs_and_labels(tmp_path):
    pairs = write_lines(tmp_path / "pairs.jsonl", [FORMS["plain pair"][0]] * 2 + [SKY])
    profile = inspect_dataset(pairs)
    assert (profile.pairs, profile.duplicates) == (3, 2)
    assert "(3 pairs)" in profile.summary() and profile.tokens["max"] > 0
    labelled = [
        {"prompt": "Sky?", "completion": answer, "label": good}
        for answer, good in [("Blue.", True), ("Green.", False), ("Azure.", True)]
    ]
    profile = inspect_dataset(write_lines(tmp_path / "kto.jsonl", labelled))
    assert (profile.desirable, profile.undesirable) == (2, 1)
    assert "2 desirable, 1 undesirable" in profile.summary()
    assert profile.to_dict()["desirable"] == 2


def test_the_shipped_example_is_a_ready_set_of_pairs():
    path = ftkit.example_data("preference")
    profile = validate_dataset(path)
    assert profile.format == "preference" and profile.pairs == profile.rows >= 40
    assert not profile.warnings, profile.summary()
    assert ftkit.example_data().name == EXAMPLE_DATA.name  # the default is unchanged
    with pytest.raises(ValueError, match="preference"):
        ftkit.example_data("dpo")


# -- problems, each with its line and a fix ------------------------------------------------------
def test_identical_answers_are_named_with_their_line(tmp_path):
    records = [SKY, {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Blue."}]
    profile = inspect_dataset(write_lines(tmp_path / "p.jsonl", records))
    assert profile.ok and found(profile.warnings) == [("identical_answers", 2, "rejected")]
    assert "remove the pair" in profile.warnings[0].fix


def test_an_empty_side_is_an_error_on_its_line(tmp_path):
    records = [
        SKY,
        {"prompt": "", "chosen": "Blue.", "rejected": "Green."},
        {"prompt": "Sky?", "chosen": "  ", "rejected": "Green."},
        {"prompt": "Sky?", "chosen": "Blue.", "rejected": []},
        {**SKY, "chosen": [bot("")]},
    ]
    profile = inspect_dataset(write_lines(tmp_path / "p.jsonl", records))
    assert found(profile.problems) == [
        ("empty_content", 2, "prompt"),
        ("empty_content", 3, "chosen"),
        ("empty_content", 4, "rejected"),
        ("empty_content", 5, "chosen[0].content"),
    ]
    with pytest.raises(DatasetError, match="line 3 \\[chosen\\]"):
        validate_dataset(tmp_path / "p.jsonl")


def test_pairs_without_a_prompt_must_share_their_first_messages(tmp_path):
    records = [
        {"chosen": "Blue.", "rejected": "Green."},
        {"chosen": [user("Sky?"), bot("Blue.")], "rejected": [user("Sea?"), bot("Blue.")]},
        {"chosen": [user("Sky?"), bot("Blue.")], "rejected": [user("Sky?")]},
        {"prompt": [bot("Hi")], "chosen": "Blue.", "rejected": "Green."},
        {"prompt": "Sky?", "chosen": [user("Blue?")], "rejected": "Green."},
    ]
    profile = inspect_dataset(write_lines(tmp_path / "p.jsonl", records), format="preference")
    assert found(profile.problems) == [
        ("missing_field", 1, "prompt"),
        ("missing_field", 2, "prompt"),
        ("empty_content", 3, "rejected"),
        ("no_user_turn", 4, "prompt"),
        ("role_order", 5, "chosen"),
    ]


def test_a_kto_label_must_be_a_boolean(tmp_path):
    records = [
        {"prompt": "Sky?", "completion": "Blue.", "label": True},
        {"prompt": "Sky?", "completion": "Green.", "label": 0},
        {"prompt": "Sky?", "completion": "Green.", "label": "bad"},
    ]
    profile = inspect_dataset(write_lines(tmp_path / "k.jsonl", records))
    assert found(profile.problems) == [("wrong_type", 2, "label"), ("wrong_type", 3, "label")]
    assert "not a boolean" in profile.problems[0].message
    assert "true" in profile.problems[0].fix and "false" in profile.problems[0].fix


def test_a_kto_set_with_one_label_is_warned_about(tmp_path):
    records = [{"prompt": f"Q{i}?", "completion": "A.", "label": True} for i in range(3)]
    profile = inspect_dataset(write_lines(tmp_path / "k.jsonl", records))
    assert profile.ok and found(profile.warnings) == [("one_label", None, "label")]
    assert "both desirable" in profile.warnings[0].message


def test_a_prompt_longer_than_max_seq_length_is_named_with_its_line(tmp_path, tokenizer):
    long_prompt = " ".join(["word"] * 200)
    records = [SKY, {"prompt": long_prompt, "chosen": "Blue.", "rejected": "Green."}]
    path = write_lines(tmp_path / "p.jsonl", records)
    profile = inspect_dataset(path, tokenizer=tokenizer, max_seq_length=64)
    assert not profile.tokens["estimated"]
    assert ("prompt_too_long", 2, "prompt") in found(profile.warnings)
    assert ("prompt_too_long", 1, "prompt") not in found(profile.warnings)
    assert profile.over_max_seq_length == 1
    estimated = inspect_dataset(path, max_seq_length=64)  # no tokenizer: estimated, same verdict
    assert [p.line for p in estimated.warnings if p.kind == "prompt_too_long"] == [2]


# -- CSV, TSV and Parquet with a column map --------------------------------------------------------
def test_csv_pairs_with_a_column_map(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        'question,good,bad\n"What colour is the sky?",Blue.,"Green, mostly."\nSky?,Blue.,\n',
        encoding="utf-8",
    )
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    profile = inspect_dataset(path, columns=columns)
    assert (profile.format, profile.rows) == ("preference", 2)
    assert found(profile.problems) == [("empty_content", 3, "bad")]  # named as the file names it
    assert list(read_examples(path, format="preference", columns=columns)) == [SKY]


def test_tsv_kto_labels_written_as_words(tmp_path):
    path = tmp_path / "kto.tsv"
    path.write_text("q\tanswer\tlabel\nSky?\tBlue.\ttrue\nSky?\tGreen.\tFALSE\n", encoding="utf-8")
    columns = {"prompt": "q", "completion": "answer"}
    rows = list(read_examples(path, format="unpaired_preference", columns=columns))
    assert [r["label"] for r in rows] == [True, False]
    assert inspect_dataset(path, columns=columns).format == "unpaired_preference"


def test_parquet_pairs_with_message_lists_and_a_column_map(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "context": [[user("Sky?")], [user("Sea?")]],
            "win": [[bot("Blue.")], [bot("Also blue.")]],
            "lose": [[bot("Green.")], [bot("Also blue.")]],
        }
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    columns = {"prompt": "context", "chosen": "win", "rejected": "lose"}
    profile = inspect_dataset(tmp_path / "pairs.parquet", columns=columns)
    assert (profile.format, profile.pairs) == ("preference", 2)
    assert found(profile.warnings) == [("identical_answers", 2, "lose")]
    assert "row 2 [lose]" in profile.summary()


def test_a_csv_cell_may_hold_a_message_list_as_json(tmp_path):
    path = tmp_path / "pairs.csv"
    cell = json.dumps([user("Sky?")]).replace('"', '""')
    path.write_text(f'prompt,chosen,rejected\n"{cell}",Blue.,Green.\n', encoding="utf-8")
    assert list(read_examples(path, format="preference")) == [
        {"prompt": [user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]}
    ]


# -- what the trainers get -----------------------------------------------------------------------
def test_pairs_become_trls_conversational_dataset_and_unpair_for_kto(tokenizer):
    from trl.data_utils import apply_chat_template, is_conversational

    pairs = build_preference_dataset([SKY, FORMS["OpenAI DPO"][1]])
    assert pairs.column_names == ["prompt", "chosen", "rejected"] and len(pairs) == 2
    assert is_conversational(pairs[0]) and pairs[0] == SKY
    rendered = apply_chat_template(pairs[1], tokenizer)
    assert rendered["prompt"].endswith("assistant\n") and rendered["chosen"].startswith("Blue.")
    unpaired = build_preference_dataset(unpair([SKY]))
    assert unpaired.column_names == ["prompt", "completion", "label"]
    assert unpaired["label"] == [True, False]
    assert unpaired[1]["completion"] == SKY["rejected"]


def test_a_file_reads_straight_into_the_dataset(tmp_path):
    path = ftkit.example_data("preference")
    pairs = read_preference_dataset(path, format="preference")
    assert len(pairs) == validate_dataset(path).pairs
    assert len(read_preference_dataset(path, format="preference", unpaired=True)) == 2 * len(pairs)
    with pytest.raises(DatasetError, match="no preference examples"):
        build_preference_dataset([])
    with pytest.raises(DatasetError, match="cannot be mixed"):
        build_preference_dataset([SKY, FORMS["KTO"][1]])


# -- the method must fit the data set: at submit, and again on the worker ------------------------
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_submit_refuses_a_preference_file_for_sft_and_an_sft_file_for_dpo(client):
    pairs = client.upload_dataset(ftkit.example_data("preference"))
    with pytest.raises(ConfigError) as refused:
        client.submit(pairs, max_steps=2)  # method="sft", the default
    assert refused.value.field == "method"
    assert "preference pairs" in str(refused.value) and "method='dpo'" in str(refused.value)
    chat = client.upload_dataset(EXAMPLE_DATA)
    for method in ("dpo", "orpo", "kto"):
        with pytest.raises(ConfigError) as refused:
            client.submit(chat, max_steps=2, method=method)
        assert refused.value.field == "method" and "method='sft'" in str(refused.value)
    assert client.count_jobs() == 0
    for method in ("dpo", "orpo", "kto"):
        client.submit(pairs, max_steps=2, method=method)
    assert client.count_jobs() == 3


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_submit_sends_kto_labels_to_kto_only(client, tmp_path):
    records = [
        {"prompt": "Sky?", "completion": answer, "label": good}
        for answer, good in [("Blue.", True), ("Green.", False)]
    ]
    labelled = client.upload_dataset(write_lines(tmp_path / "kto.jsonl", records))
    for method in ("sft", "dpo", "orpo"):
        with pytest.raises(ConfigError, match="method='kto'"):
            client.submit(labelled, max_steps=2, method=method)
    client.submit(labelled, max_steps=2, method="kto")


def test_the_worker_refuses_a_record_whose_method_does_not_fit_its_data_set():
    record = {
        "job_id": "0123456789ab",
        "dataset": {"sha256": "a" * 64, "name": "train.jsonl", "format": "chat", "columns": None},
        "config": {"base_model": "org/model", "max_steps": 5, "method": "dpo"},
        "submitted_by": "ada",
        "created_at": 1764400000.0,
    }
    with pytest.raises(spec.RecordRefused, match="method='sft'"):
        spec.JobSpec.from_record(record)
    pairs = {**record["dataset"], "format": "preference"}
    sft = {**record["config"], "method": "sft"}
    with pytest.raises(spec.RecordRefused, match="method='dpo'"):
        spec.JobSpec.from_record({**record, "dataset": pairs, "config": sft})
    assert spec.JobSpec.from_record({**record, "dataset": pairs}).config.method == "dpo"
