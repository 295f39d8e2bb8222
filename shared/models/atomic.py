"""Build a folder somewhere private, then rename it into place in one step.

A model conversion takes tens of seconds; if it is interrupted (Ctrl-C, crash, full disk)
the cache must not hold a folder that looks complete but is not. Renaming a finished
folder is atomic on one file system, so the final path either is complete or is absent.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.models.refs import read_sidecar


def is_complete(folder: Path) -> bool:
    """A cached model folder is complete once its sidecar (written last) reads back."""
    return read_sidecar(folder) is not None


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success rename it to ``final``.

    On any exception the temporary folder is removed. If another process finished the same
    folder first, its result is kept and ours discarded (both are built deterministically).
    A leftover ``final`` without a sidecar (edited by hand) is replaced.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists() and not is_complete(final):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
