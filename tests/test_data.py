"""User data loading: every format, and every user mistake as a one-line DataError."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest

from shared.data import Dataset, Record, load_dataset
from shared.errors import DataError


def _write_arrow(folder: Path, shards: list[dict[str, list[str | None]]]) -> None:
    """The layout ``datasets.Dataset.save_to_disk`` writes: stream shards + two JSON files."""
    folder.mkdir(parents=True)
    names = []
    for i, columns in enumerate(shards):
        name = f"data-{i:05d}-of-{len(shards):05d}.arrow"
        table = pa.table(columns)
        with (
            pa.OSFile(str(folder / name), "wb") as sink,
            pyarrow.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
        names.append({"filename": name})
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (folder / "state.json").write_text(
        json.dumps({"_data_files": names, "_fingerprint": "abc", "_split": None})
    )


def _error(path: Path) -> str:
    with pytest.raises(DataError) as excinfo:
        load_dataset(path)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- formats ----------------------------------------------------------------------------------


def test_jsonl_text_and_pairs(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [
        {"text": "  First note about the ledger.  ", "id": 1},
        {"prompt": "What is 2+2?", "response": "4", "extra": [1, 2]},
        {"text": "   "},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")

    data = load_dataset(path)

    assert data.format == "jsonl" and data.source == str(path)
    assert data.records == (
        Record(text="First note about the ledger."),
        Record(prompt="What is 2+2?", response="4"),
    )
    assert data.texts() == ["First note about the ledger.", "What is 2+2?\n4"]
    assert [r.is_labelled for r in data.records] == [False, True]


def test_csv_text_and_pairs(tmp_path: Path) -> None:
    (tmp_path / "text.csv").write_text('id,text\n1,"Hello, world"\n2,"multi\nline"\n3,\n')
    (tmp_path / "pairs.csv").write_text("prompt,response\nQ1, A1 \nQ2,A2\n")

    text = load_dataset(tmp_path / "text.csv")
    pairs = load_dataset(tmp_path / "pairs.csv")

    assert text.texts() == ["Hello, world", "multi\nline"]
    assert text.format == "csv"
    assert pairs.records == (Record(prompt="Q1", response="A1"), Record(prompt="Q2", response="A2"))


def test_text_paragraphs_and_lines(tmp_path: Path) -> None:
    (tmp_path / "paragraphs.txt").write_text("First para\ncontinues.\n\n\n  Second para.\n\n")
    (tmp_path / "lines.txt").write_text("line one\nline two\n  line three  \n")

    assert load_dataset(tmp_path / "paragraphs.txt").texts() == [
        "First para\ncontinues.",
        "Second para.",
    ]
    assert load_dataset(tmp_path / "lines.txt").texts() == ["line one", "line two", "line three"]


def test_hf_arrow_folder_keeps_shard_order(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    _write_arrow(folder, [{"text": ["a first text", None]}, {"text": ["a second text"]}])

    data = load_dataset(folder)

    assert data.format == "hf-arrow"
    assert data.texts() == ["a first text", "a second text"]


def test_hf_dataset_dict_reads_every_split(tmp_path: Path) -> None:
    root = tmp_path / "dict"
    _write_arrow(root / "train", [{"prompt": ["p1"], "response": ["r1"]}])
    _write_arrow(root / "test", [{"prompt": ["p2"], "response": ["r2"]}])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))

    data = load_dataset(root)

    assert data.records == (Record(prompt="p1", response="r1"), Record(prompt="p2", response="r2"))


def test_summary_counts_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one two three"}\n{"prompt": "a b", "response": "c"}\n')

    summary = load_dataset(path).summary()

    assert summary["count"] == 2
    assert summary["fields"] == ["text", "prompt", "response"]
    assert summary["labelled"] == 1
    assert summary["words"] == {"min": 3.0, "median": 3.0, "max": 3.0}
    assert summary["chars"]["max"] == len("one two three")


def test_records_and_datasets_validate_themselves() -> None:
    with pytest.raises(DataError):
        Record()
    with pytest.raises(DataError):
        Dataset(records=(), source="x", format="jsonl")


# --- mistakes ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _error(tmp_path / "nope.jsonl")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    assert "unknown data format '.parquet'" in _error(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.txt"])
def test_empty_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("")
    message = _error(path)
    assert str(path) in message


def test_only_blank_records(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text('{"text": "  "}\n{"text": null}\n')
    assert "no records" in _error(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    message = _error(path)
    assert "not UTF-8" in message and str(path) in message


def test_malformed_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n')
    message = _error(path)
    assert f"{path} line 3" in message and "malformed JSON" in message


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text('["a", "b"]\n')
    assert "line 1: expected a JSON object" in _error(path)


def test_json_line_without_fields(tmp_path: Path) -> None:
    path = tmp_path / "fields.jsonl"
    path.write_text('{"text": "fine"}\n{"prompt": "only a prompt"}\n')
    assert "line 2: needs 'text' or both 'prompt' and 'response'" in _error(path)


def test_json_value_of_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "types.jsonl"
    path.write_text('{"text": 42}\n')
    assert "'text' must be a string" in _error(path)


def test_csv_without_needed_columns(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("question,answer\nq,a\n")
    message = _error(path)
    assert "found: answer, question" in message and str(path) in message


def test_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a Hugging Face save_to_disk dataset" in _error(tmp_path)


def test_arrow_folder_without_text_columns(tmp_path: Path) -> None:
    folder = tmp_path / "wrong"
    _write_arrow(folder, [{"label": ["x"]}])
    assert "found: label" in _error(folder)


def test_arrow_shard_that_is_not_arrow(tmp_path: Path) -> None:
    folder = tmp_path / "corrupt"
    _write_arrow(folder, [{"text": ["x"]}])
    (folder / "data-00000-of-00001.arrow").write_bytes(b"garbage, not arrow")
    assert "not a readable Arrow file" in _error(folder)
