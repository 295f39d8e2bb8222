"""Where the project keeps its caches (converted models, tokenizers, embeddings).

Nothing is created at import: callers build a ``Home`` (from ``--home``, ``LWM_HOME`` or the
default ``~/.cache/lwm``) and ask it for folders, which are made on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("~/.cache/lwm")


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | Path | None = None) -> Home:
        """``explicit`` wins, then ``$LWM_HOME``, then ``~/.cache/lwm``."""
        raw = explicit if explicit is not None else os.environ.get("LWM_HOME", str(DEFAULT_HOME))
        return cls(Path(raw).expanduser().resolve())

    def folder(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def models(self) -> Path:
        return self.folder("models")

    @property
    def cache(self) -> Path:
        return self.folder("cache")
