"""Read user data from disk: JSONL, CSV, plain text, or a Hugging Face ``save_to_disk`` folder.

Every problem a user can fix (missing file, wrong columns, bad line, not UTF-8) is one
``DataError`` whose one-line message names the file, so the CLI can print it as is.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from shared.data.records import Dataset, Record
from shared.errors import DataError

_JSONL = (".jsonl", ".ndjson")
_CSV = (".csv",)
_TEXT = (".txt", ".text")
_HF_MARKERS = ("dataset_info.json", "state.json")


def load_dataset(path: str | Path) -> Dataset:
    """Load user data by file type; see the module doc for formats.

    Whitespace around every field is stripped and blank records are skipped. A dataset
    with no records left is an error, so callers never get an empty ``Dataset``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        records, fmt = _read_hf_folder(path), "hf-arrow"
    else:
        suffix = path.suffix.lower()
        if suffix in _JSONL:
            records, fmt = _read_jsonl(path), "jsonl"
        elif suffix in _CSV:
            records, fmt = _read_csv(path), "csv"
        elif suffix in _TEXT:
            records, fmt = _read_text(path), "text"
        else:
            raise DataError(
                f"{path}: unknown data format {suffix or '(no extension)'!r}; use .jsonl, "
                ".csv, .txt or a Hugging Face save_to_disk folder"
            )
    if not records:
        raise DataError(f"{path}: no records (the file is empty or every record is blank)")
    return Dataset(records=tuple(records), source=str(path), format=fmt)


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 (bad byte at offset {error.start}); re-save it as UTF-8"
        ) from error


def _field(value: Any, name: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return value.strip() or None


def _record(row: Mapping[str, Any], where: str) -> Record | None:
    """A record from a row that has ``text`` or ``prompt`` + ``response``; None if blank."""
    text = _field(row.get("text"), "text", where)
    prompt = _field(row.get("prompt"), "prompt", where)
    response = _field(row.get("response"), "response", where)
    if not (text or prompt or response):
        return None
    return Record(text=text, prompt=prompt, response=response)


def _check_columns(columns: Iterable[str], where: str) -> None:
    present = set(columns)
    if "text" not in present and not {"prompt", "response"} <= present:
        found = ", ".join(sorted(present)) or "none"
        raise DataError(f"{where}: needs 'text' or both 'prompt' and 'response' (found: {found})")


def _read_jsonl(path: Path) -> list[Record]:
    records: list[Record] = []
    for number, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: malformed JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        _check_columns(row.keys(), where)
        record = _record(row, where)
        if record is not None:
            records.append(record)
    return records


def _read_csv(path: Path) -> list[Record]:
    reader = csv.DictReader(io.StringIO(_read_utf8(path), newline=""))
    try:
        _check_columns([c.strip() for c in reader.fieldnames or []], str(path))
        records: list[Record] = []
        for row in reader:
            where = f"{path} line {reader.line_num}"
            clean = {(k or "").strip(): v for k, v in row.items()}
            record = _record(clean, where)
            if record is not None:
                records.append(record)
    except csv.Error as error:
        reason = (str(error).splitlines() or ["unknown error"])[0]
        raise DataError(f"{path} line {reader.line_num}: bad CSV ({reason})") from error
    return records


def _read_text(path: Path) -> list[Record]:
    """One record per paragraph (blank-line separated), or per line if there are no blanks."""
    lines = _read_utf8(path).splitlines()
    has_blank = any(not line.strip() for line in lines) and any(line.strip() for line in lines)
    if not has_blank:
        return [Record(text=line.strip()) for line in lines if line.strip()]
    chunks: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            chunks.append("\n".join(current))
            current = []
    return [Record(text=chunk) for chunk in chunks]


def _is_hf_folder(path: Path) -> bool:
    return any((path / m).is_file() for m in _HF_MARKERS) and any(path.glob("*.arrow"))


def _read_hf_folder(path: Path) -> list[Record]:
    """A ``Dataset.save_to_disk`` folder, or a ``DatasetDict`` one (all splits, in order)."""
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        splits = _json_file(dict_file).get("splits", [])
        if not isinstance(splits, list) or not splits:
            raise DataError(f"{dict_file}: no 'splits' listed")
        records: list[Record] = []
        for split in splits:
            records.extend(_read_hf_folder(path / str(split)))
        return records
    if not _is_hf_folder(path):
        raise DataError(
            f"{path}: a folder, but not a Hugging Face save_to_disk dataset "
            "(expected dataset_info.json or state.json next to .arrow files)"
        )
    records = []
    for arrow in _arrow_files(path):
        records.extend(_read_arrow(arrow))
    return records


def _json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(_read_utf8(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON ({error.msg})") from error
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object")
    return value


def _arrow_files(path: Path) -> list[Path]:
    """The shards in the order ``state.json`` lists them (the dataset's row order)."""
    state = path / "state.json"
    if state.is_file():
        listed = _json_file(state).get("_data_files", [])
        names = [entry.get("filename") for entry in listed if isinstance(entry, dict)]
        files = [path / name for name in names if isinstance(name, str)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{path}: state.json lists missing shard(s): {', '.join(missing)}")
        if files:
            return files
    return sorted(path.glob("*.arrow"))


def _arrow_rows(table: Any) -> Iterator[dict[str, Any]]:
    columns = [c for c in ("text", "prompt", "response") if c in table.column_names]
    values = {c: table.column(c).to_pylist() for c in columns}
    for i in range(table.num_rows):
        yield {c: values[c][i] for c in columns}


def _read_arrow(path: Path) -> list[Record]:
    try:
        import pyarrow as pa
        import pyarrow.ipc
    except ImportError as error:  # pragma: no cover - pyarrow is a declared dependency
        raise DataError(f"{path}: reading Arrow needs pyarrow: pip install pyarrow") from error
    try:
        with pa.memory_map(str(path)) as source:
            try:
                table = pyarrow.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = pyarrow.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as error:
        reason = (str(error).splitlines() or ["unknown error"])[0]
        raise DataError(f"{path}: not a readable Arrow file ({reason})") from error
    _check_columns(table.column_names, str(path))
    records: list[Record] = []
    for number, row in enumerate(_arrow_rows(table)):
        record = _record(row, f"{path} row {number}")
        if record is not None:
            records.append(record)
    return records
