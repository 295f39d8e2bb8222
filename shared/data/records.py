"""The in-memory form of user data: plain texts or prompt/response pairs.

Specs and fine-tuning only need text, so a ``Record`` always has a ``full_text``; labelled
records keep the split so evaluation can score the response given the prompt. A
multiple-choice record (a question with its own answer options, as lm-eval's tasks have)
also keeps its ``choices``; its ``response`` is the gold one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from shared.errors import DataError

FIELDS = ("text", "prompt", "response")


@dataclass(frozen=True)
class Record:
    """One example. ``text`` for plain text; ``prompt`` + ``response`` for a labelled pair;
    ``choices`` (with ``response`` among them) for a multiple-choice question."""

    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not any((self.text, self.prompt, self.response)):
            raise DataError("a record needs a non-empty 'text', 'prompt' or 'response'")
        if self.choices and not (self.is_labelled and self.response in self.choices):
            raise DataError("a record with choices needs a prompt and a response among them")

    @property
    def is_labelled(self) -> bool:
        return bool(self.prompt) and bool(self.response)

    @property
    def full_text(self) -> str:
        """What specs and language-model training see: the text, or prompt, newline, response."""
        if self.text:
            return self.text
        return "\n".join(part for part in (self.prompt, self.response) if part)


@dataclass(frozen=True)
class Dataset:
    """Records loaded from one source; never empty (loaders raise ``DataError`` instead)."""

    records: tuple[Record, ...]
    source: str
    format: str
    split: str | None = None  # the DatasetDict split read, if the source had splits

    def __post_init__(self) -> None:
        if not self.records:
            raise DataError(f"{self.source}: no records")

    def __len__(self) -> int:
        return len(self.records)

    def texts(self) -> list[str]:
        return [record.full_text for record in self.records]

    def summary(self) -> dict[str, Any]:
        """Counts and sizes for a CLI table or a manifest; no text content is included."""
        texts = self.texts()
        chars = [len(t) for t in texts]
        words = [len(t.split()) for t in texts]
        fields = [f for f in FIELDS if any(getattr(r, f) for r in self.records)]
        return {
            "count": len(texts),
            "format": self.format,
            "source": self.source,
            "split": self.split,
            "fields": fields,
            "labelled": sum(r.is_labelled for r in self.records),
            "chars": _spread(chars),
            "words": _spread(words),
        }


def _spread(values: list[int]) -> dict[str, float]:
    return {
        "min": float(min(values)),
        "median": float(statistics.median(values)),
        "max": float(max(values)),
    }
