"""A column mapping given at upload (columns={ftkit's name: the file's column}) is part of the data
set record and reaches training: CSV and Parquet files with their own column names train."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import EXAMPLE_DATA
from ftkit import training
from ftkit.config import TrainConfig
from ftkit.data import checked_columns
from ftkit.errors import DatasetError

MAPPING = {"instruction": "question", "output": "answer"}


def qa_rows() -> list[dict[str, str]]:
    """The bundled example data as question/answer pairs, the way a spreadsheet holds them."""
    rows = []
    for line in EXAMPLE_DATA.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        by_role = {m["role"]: m["content"] for m in messages}
        rows.append({"question": by_role["user"], "answer": by_role["assistant"]})
    return rows


def write_csv(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(qa_rows())
    return path


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_csv_with_mapped_columns_trains_end_to_end(client, start_worker, tiny_model, tmp_path):
    start_worker()
    ds = client.upload_dataset(write_csv(tmp_path / "qa.csv"), columns=MAPPING)
    assert (ds.format, ds.rows, ds.columns) == ("alpaca", 120, MAPPING)
    job = client.submit(ds, base_model=str(tiny_model), max_steps=3, max_seq_length=128)
    assert client.store.get(job.id)["dataset"]["columns"] == MAPPING
    final = job.wait(timeout=300, progress=False)
    assert final["status"] == "completed", final["error"]
    report = Path(final["result"]["report"]).read_text()
    assert "dataset_columns" in report and qa_rows()[0]["question"][:40] in report


def test_a_parquet_file_with_mapped_columns_prepares_every_row(tiny_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist(qa_rows()), path)
    config = TrainConfig(base_model=str(tiny_model), max_steps=1, max_seq_length=128)
    _, tokenizer, _ = training.load_model(config)
    data, _, summary = training.prepare_data(str(path), "alpaca", tokenizer, config, MAPPING)
    assert summary["examples"] == 120 and summary["trained_tokens"] > 0
    prompts = training.sample_prompts(str(path), "alpaca", None, tokenizer, [], columns=MAPPING)
    assert prompts[0]["messages"][-1]["content"] == qa_rows()[0]["question"]


def test_without_the_mapping_the_same_file_has_nothing_to_train(tiny_model, tmp_path):
    config = TrainConfig(base_model=str(tiny_model), max_steps=1, max_seq_length=128)
    _, tokenizer, _ = training.load_model(config)
    with pytest.raises(ValueError, match="no usable training examples"):
        training.prepare_data(str(write_csv(tmp_path / "qa.csv")), "alpaca", tokenizer, config)


@pytest.mark.parametrize(
    "bad",
    [["instruction", "question"], {"instruction": 3}, {"instruction": ""}, {"questoin": "q"}],
)
def test_a_malformed_mapping_is_refused_with_what_it_should_look_like(bad):
    with pytest.raises(DatasetError, match="columns="):
        checked_columns(bad)
