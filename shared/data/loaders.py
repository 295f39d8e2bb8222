"""Read user data from disk through Hugging Face ``datasets``: JSONL, JSON (an array of
records or JSON lines), CSV, parquet, Arrow files, ``save_to_disk`` folders (a ``Dataset`` or
a ``DatasetDict``, one split of it), and plain text.

``datasets`` runs offline here: the packaged builders read local files only, into memory,
with their working cache in a temporary folder, so nothing lands in the user's home. Rows
become records in ``shared.data.columns`` (one place for every format). Every problem a user
can fix (missing file, wrong columns, unknown split, bad line, not UTF-8) is one
``DataError`` whose one-line message names the file, so the CLI can print it as is.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.data.columns import ColumnMap, DataPath, DataSource
from shared.data.records import Dataset, Record
from shared.errors import DataError

# suffix -> (format reported, datasets packaged builder)
_BUILDERS = {
    ".jsonl": ("jsonl", "json"),
    ".ndjson": ("jsonl", "json"),
    ".json": ("json", "json"),
    ".csv": ("csv", "csv"),
    ".parquet": ("parquet", "parquet"),
    ".arrow": ("arrow", "arrow"),
}
_TEXT = (".txt", ".text")
_KNOWN = ", ".join([*_BUILDERS, *_TEXT])


def load_dataset(source: DataPath) -> Dataset:
    """Load user data by file type (see the module doc), with a ``DataSource``'s split and
    columns (a bare path: ``train`` and the usual column names).

    Whitespace around every field is stripped and blank records are skipped. A dataset
    with no records left is an error, so callers never get an empty ``Dataset``.
    """
    options = source if isinstance(source, DataSource) else DataSource(Path(source))
    path = options.path.expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    split = None
    if path.is_dir():
        table, split = _pick_split(_load_folder(path), path, options.split)
        fmt = "hf-arrow"
    else:
        suffix = path.suffix.lower()
        if suffix not in _BUILDERS and suffix not in _TEXT:
            raise DataError(
                f"{path}: unknown data format {suffix or '(no extension)'!r}; use {_KNOWN} "
                "or a Hugging Face save_to_disk folder"
            )
        if options.split is not None:
            raise DataError(
                f"{path}: one table without splits; --split {options.split} is for a "
                "DatasetDict save_to_disk folder"
            )
        if suffix in _TEXT:
            return _dataset(_read_text(path), path, "text", None)
        fmt, builder = _BUILDERS[suffix]
        table = _load_file(path, builder)
    where = f"{path}" if split is None else f"{path} split {split}"
    return _dataset(_records(table, options, where), path, fmt, split)


def _dataset(records: list[Record], path: Path, fmt: str, split: str | None) -> Dataset:
    if not records:
        raise DataError(f"{path}: no records (the file is empty or every record is blank)")
    return Dataset(records=tuple(records), source=str(path), format=fmt, split=split)


def _records(table: Any, options: DataSource, where: str) -> list[Record]:
    columns = ColumnMap.resolve(table.column_names, options, where)
    records: list[Record] = []
    for number, row in enumerate(table.select_columns(columns.names)):
        record = columns.record(row, f"{where} row {number}")
        if record is not None:
            records.append(record)
    return records


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """``datasets`` imported, its progress bars off and its own error log held back for the
    call (the failure becomes our one-line ``DataError`` instead)."""
    import datasets

    logger = logging.getLogger("datasets")
    level, bars = logger.level, datasets.is_progress_bar_enabled()
    logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _load_file(path: Path, builder: str) -> Any:
    """One file through the packaged builder, kept in memory; its cache is thrown away."""
    if builder in ("json", "csv"):
        _read_utf8(path)  # an empty file or one not in UTF-8 is said plainly here
    with _quiet_datasets() as datasets, tempfile.TemporaryDirectory(prefix="lwm-data-") as tmp:
        try:
            return datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=tmp, keep_in_memory=True
            )
        except Exception as error:  # noqa: BLE001 - any reader failure is the file's fault
            raise DataError(f"{path}: not a readable {builder} file ({_reason(error)})") from error


def _load_folder(path: Path) -> Any:
    with _quiet_datasets() as datasets:
        try:
            return datasets.load_from_disk(str(path), keep_in_memory=True)
        except FileNotFoundError as error:
            raise DataError(
                f"{path}: a folder, but not a Hugging Face save_to_disk dataset "
                "(expected dataset_info.json and state.json, or dataset_dict.json)"
            ) from error
        except Exception as error:  # noqa: BLE001 - a damaged folder is the user's to fix
            raise DataError(
                f"{path}: not a readable save_to_disk folder ({_reason(error)})"
            ) from error


def _pick_split(loaded: Any, path: Path, split: str | None) -> tuple[Any, str | None]:
    """One split of a ``DatasetDict`` (``train`` by default), never several merged: training
    on a test split would leak it into the results."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None:
            raise DataError(f"{path}: one dataset without splits; drop --split {split}")
        return loaded, None
    names = ", ".join(loaded)
    chosen = split if split is not None else "train"
    if chosen not in loaded:
        asked = f"no split {split!r}" if split is not None else "no 'train' split"
        raise DataError(f"{path}: {asked}; choose one with --split: {names}")
    return loaded[chosen], chosen


def _reason(error: BaseException) -> str:
    """The first line of the deepest cause: what the reader actually tripped on."""
    while error.__cause__ is not None:
        error = error.__cause__
    return (str(error).splitlines() or [type(error).__name__])[0] or type(error).__name__


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 (bad byte at offset {error.start}); re-save it as UTF-8"
        ) from error
    if not text.strip():
        raise DataError(f"{path}: no records (the file is empty or every record is blank)")
    return text


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
