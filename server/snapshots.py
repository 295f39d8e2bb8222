"""Saved search indexes: a replica at a million learnwares starts from a file, not a rebuild.

Building the indexes at start means parsing every stored spec and training faiss (minutes at
1M rows); a snapshot is the indexes' arrays (``SpecIndex.arrays``: keys, rows, the
trained approximate index) as one ``.npz`` file in the shared blob folder (``index/``),
named by the change-feed id it covers, next to a ``.json`` that says what it holds and its
sha256. Both are written atomically, the ``.json`` last, so a snapshot without one is
unfinished and never read.

A snapshot is a cache, never the truth: ``load`` returns None (the caller rebuilds) unless
its checksum, format, schema ids, dimensions and index settings all match, and its change
is one this database's feed holds with the same learnware and time (a file from another
database, or one reset since, does not match). What changed after the covered change is
made good by the caller, which compares the snapshot's keys with the USABLE learnwares it
reads now (``server.index_load``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from server.changes import Change
from server.index import SpecIndex
from shared.errors import SpecError
from shared.files import write_atomically

log = logging.getLogger("lwm.snapshots")

FORMAT = 1
_KEEP = 2  # snapshots kept: the newest and the one before (a replica may be reading it)


def fingerprint(change: Change | None) -> str:
    """What identifies a change of one database's feed (its id alone does not)."""
    return "" if change is None else f"{change.id}|{change.at.isoformat()}|{change.learnware_id}"


class IndexSnapshots:
    """The snapshots in ``folder`` (the blob folder's ``index/``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, covered: Change | None, indexes: Mapping[str, SpecIndex]) -> Path:
        """Write the indexes as covering the feed up to ``covered`` (None: an empty feed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"snapshot-{0 if covered is None else covered.id:012d}"
        payload = self.folder / f"{stem}.npz"
        temp = self.folder / f".{stem}.{os.getpid()}.npz.part"
        with ExitStack() as held, temp.open("wb") as handle:
            arrays = {
                f"{kind}.{name}": array
                for kind, index in indexes.items()
                for name, array in held.enter_context(index.arrays()).items()
            }
            np.savez(handle, allow_pickle=False, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, payload)
        meta = {
            "format": FORMAT,
            "change": fingerprint(covered),
            "covered_change": 0 if covered is None else covered.id,
            "sha256": _sha256(payload),
            "kinds": {kind: _describe(index) for kind, index in indexes.items()},
        }
        write_atomically(self.folder / f"{stem}.json", json.dumps(meta, indent=1).encode())
        self._prune()
        log.info("index snapshot %s written (%d kinds)", payload.name, len(indexes))
        return payload

    def load(
        self, indexes: Mapping[str, SpecIndex], change_of: Callable[[int], Change | None]
    ) -> tuple[int, dict[str, SpecIndex]] | None:
        """The newest snapshot that matches ``indexes`` (empty ones, for their kind, schema
        and settings) and this database (``change_of``: the feed's change of an id, or
        None), as (covered change id, restored indexes); None when there is none."""
        for meta_path in self._newest_first():
            try:
                return self._load(meta_path, indexes, change_of)
            except (OSError, ValueError, KeyError, TypeError, SpecError) as error:
                log.warning("index snapshot %s ignored: %s", meta_path.name, error)
        return None

    def _load(
        self,
        meta_path: Path,
        indexes: Mapping[str, SpecIndex],
        change_of: Callable[[int], Change | None],
    ) -> tuple[int, dict[str, SpecIndex]]:
        meta = json.loads(meta_path.read_text())
        covered = int(meta["covered_change"])
        if meta["format"] != FORMAT:
            raise ValueError(f"format {meta['format']}, this build reads {FORMAT}")
        wanted = {kind: _describe(index, rows=False) for kind, index in indexes.items()}
        found = {kind: {**d, "rows": None} for kind, d in meta["kinds"].items()}
        if found != {kind: {**d, "rows": None} for kind, d in wanted.items()}:
            raise ValueError("it was made for other spec schemas or index settings")
        if meta["change"] != fingerprint(change_of(covered) if covered else None):
            raise ValueError(f"change {covered} is not in this database's feed as it was")
        payload = meta_path.with_suffix(".npz")
        if _sha256(payload) != meta["sha256"]:
            raise ValueError("its checksum does not match (corrupt or changed)")
        restored = {}
        with np.load(payload, allow_pickle=False) as data:
            for kind, index in indexes.items():
                arrays = {
                    name.split(".", 1)[1]: data[name]
                    for name in data.files
                    if name.startswith(f"{kind}.")
                }
                restored[kind] = SpecIndex.from_arrays(
                    kind, index.schema_id, index.dim, index.config, arrays
                )
        log.info("index snapshot %s loaded (change %d)", payload.name, covered)
        return covered, restored

    def _newest_first(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("snapshot-*.json"), reverse=True)

    def _prune(self) -> None:
        for meta_path in self._newest_first()[_KEEP:]:
            for path in (meta_path, meta_path.with_suffix(".npz")):
                path.unlink(missing_ok=True)


def _describe(index: SpecIndex, rows: bool = True) -> dict[str, Any]:
    return {
        "schema_id": index.schema_id,
        "dim": index.dim,
        "config": asdict(index.config),
        "rows": len(index) if rows else None,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
