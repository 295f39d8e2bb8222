"""User data loading: every format, and every user mistake as a one-line DataError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from shared.data import Dataset, DataSource, Record, load_dataset
from shared.errors import DataError


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def _save_dict(root: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    """A ``DatasetDict.save_to_disk`` folder, written by ``datasets`` itself."""
    import datasets

    datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    ).save_to_disk(str(root))


def _error(source: Path | DataSource) -> str:
    with pytest.raises(DataError) as excinfo:
        load_dataset(source)
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


PAIRS = [
    {"prompt": "What is 2+2?", "response": "4"},
    {"prompt": "Capital of France?", "response": "Paris"},
]
PAIR_RECORDS = tuple(Record(prompt=r["prompt"], response=r["response"]) for r in PAIRS)


def _write_json_array(path: Path) -> None:
    path.write_text(json.dumps(PAIRS))


def _write_parquet(path: Path) -> None:
    import pandas as pd

    pd.DataFrame(PAIRS).to_parquet(path)


def _write_arrow_stream(path: Path) -> None:
    table = _rows_table(PAIRS)
    with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)


def _write_arrow_file(path: Path) -> None:
    table = _rows_table(PAIRS)
    with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def _write_saved(path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(PAIRS).save_to_disk(str(path))


def _write_csv_pandas(path: Path) -> None:
    import pandas as pd

    pd.DataFrame(PAIRS).to_csv(path, index=False)


@pytest.mark.parametrize(
    ("name", "write", "fmt"),
    [
        ("pairs.json", _write_json_array, "json"),
        ("pairs.csv", _write_csv_pandas, "csv"),
        ("pairs.parquet", _write_parquet, "parquet"),
        ("stream.arrow", _write_arrow_stream, "arrow"),
        ("file.arrow", _write_arrow_file, "arrow"),
        ("saved", _write_saved, "hf-arrow"),
    ],
)
def test_every_format_gives_the_same_records(tmp_path: Path, name: str, write, fmt: str) -> None:
    path = tmp_path / name
    write(path)

    data = load_dataset(path)

    assert (data.format, data.source, data.split) == (fmt, str(path), None)
    assert data.records == PAIR_RECORDS


def test_dataset_dict_reads_train_by_default_and_never_merges(tmp_path: Path) -> None:
    root = tmp_path / "dict"
    _save_dict(root, {"train": [{"text": "train text"}], "test": [{"text": "test text"}]})

    train = load_dataset(root)
    test = load_dataset(DataSource(root, split="test"))

    assert (train.texts(), train.split) == (["train text"], "train")
    assert (test.texts(), test.split) == (["test text"], "test")
    assert load_dataset(root).summary()["split"] == "train"


def test_dataset_dict_without_train_is_refused_with_its_splits(tmp_path: Path) -> None:
    root = tmp_path / "dict"
    _save_dict(root, {"validation": [{"text": "v"}], "test": [{"text": "t"}]})

    assert "no 'train' split; choose one with --split: validation, test" in _error(root)
    dev = DataSource(root, split="dev")
    assert "no split 'dev'; choose one with --split: validation, test" in _error(dev)


def test_split_on_a_single_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "x"}\n')
    assert "--split test is for a DatasetDict" in _error(DataSource(path, split="test"))
    folder = tmp_path / "saved"
    _write_saved(folder)
    assert "drop --split test" in _error(DataSource(folder, split="test"))


def test_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "qa.parquet"
    pq.write_table(_rows_table([{"question": " Q1 ", "answer": "A1", "note": "n1"}]), path)

    pairs = load_dataset(DataSource(path, prompt_column="question", response_column="answer"))
    notes = load_dataset(DataSource(path, text_column="note"))

    assert pairs.records == (Record(prompt="Q1", response="A1"),)
    assert notes.texts() == ["n1"]


def test_bad_column_name_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "qa.parquet"
    pq.write_table(_rows_table([{"question": "Q1", "answer": "A1"}]), path)

    message = _error(DataSource(path, text_column="body"))

    assert message == f"{path}: no column 'body' (--text-column; found: answer, question)"


def test_prompt_completion_and_messages_become_the_same_texts(tmp_path: Path) -> None:
    completion = tmp_path / "completion.jsonl"
    completion.write_text('{"prompt": "What is 2+2?", "completion": " 4 "}\n')
    chat = tmp_path / "chat.json"
    turns = [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
        [{"role": "user", "content": "no answer yet"}],
    ]
    chat.write_text(json.dumps([{"messages": m} for m in turns]))

    assert load_dataset(completion).records == (Record(prompt="What is 2+2?", response="4"),)
    assert load_dataset(chat).records == (
        Record(prompt="What is 2+2?", response="4"),
        Record(prompt="Be brief.\nHi", response="Hello"),
        Record(text="no answer yet"),
    )


def test_messages_of_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text('{"messages": [{"role": "user"}]}\n')
    assert "row 0: 'messages' must be a list of {role, content} strings" in _error(path)


def test_nothing_is_cached_in_home(tmp_path: Path) -> None:
    """``datasets`` reads offline and keeps its working cache out of the user's home."""
    home = tmp_path / "home"
    home.mkdir()
    path = tmp_path / "d.parquet"
    _write_parquet(path)
    code = f"from shared.data import load_dataset; print(len(load_dataset({str(path)!r})))"
    env = {"HOME": str(home), "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    env |= {k: v for k, v in __import__("os").environ.items() if k == "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "2"
    assert list(home.rglob("*")) == []


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
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    assert "unknown data format '.xlsx'" in _error(path)


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    assert f"{path}: not a readable parquet file" in _error(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.txt"])
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
    assert f"{path}: not a readable json file" in message and "JSON parse error" in message


def test_json_list_of_strings_is_texts(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text('["a", "b"]\n')
    assert load_dataset(path).texts() == ["a", "b"]  # datasets reads it as a 'text' column


def test_json_without_fields(tmp_path: Path) -> None:
    path = tmp_path / "fields.jsonl"
    path.write_text('{"title": "fine"}\n{"prompt": "only a prompt"}\n')
    assert "needs 'text', 'prompt' and 'response' (or 'completion'), or 'messages'" in _error(path)


def test_json_value_of_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "types.jsonl"
    path.write_text('{"text": 42}\n')
    assert f"{path} row 0: 'text' must be a string, got int" == _error(path)


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
    _save_dict(folder, {"train": [{"label": "x"}]})
    assert "found: label" in _error(folder)


def test_arrow_file_that_is_not_arrow(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.arrow"
    path.write_bytes(b"garbage, not arrow")
    assert f"{path}: not a readable arrow file" in _error(path)


# --- end to end -------------------------------------------------------------------------------


def test_lwm_data_inspect_and_spec_make_read_parquet(lwm_home, tmp_path: Path) -> None:
    """The CLI reads a parquet file through the column options, and refuses a DatasetDict
    without the split it needs as one line with exit code 3 (a DataError)."""
    from test_cli import lwm

    from shared.data import load_domain

    path = tmp_path / "notes.parquet"
    texts = load_domain("software")[:20]
    pq.write_table(pa.table({"id": list(range(len(texts))), "body": texts}), path)
    columns = ("--text-column", "body")

    summary = json.loads(lwm(lwm_home, "data", "inspect", str(path), *columns, "--json").stdout)
    out = tmp_path / "spec.safetensors"
    made = lwm(lwm_home, "spec", "make", str(path), *columns, "--out", str(out)).stdout

    assert (summary["format"], summary["count"], summary["split"]) == ("parquet", 20, None)
    assert f"rkme spec of {len(texts)} texts" in made and out.is_file()
    missing = lwm(lwm_home, "data", "inspect", str(path), check=False)
    assert missing.returncode == 3
    assert (
        missing.stderr.strip().endswith("--text-column, --prompt-column, --response-column")
        and "found: body, id" in missing.stderr
    )
    folder = tmp_path / "dict"
    _save_dict(folder, {"validation": [{"text": "v"}], "test": [{"text": "t"}]})
    refused = lwm(lwm_home, "data", "inspect", str(folder), check=False)
    assert refused.returncode == 3 and "choose one with --split: validation, test" in refused.stderr
    picked = lwm(lwm_home, "data", "inspect", str(folder), "--split", "test", "--json").stdout
    assert json.loads(picked)["split"] == "test"
