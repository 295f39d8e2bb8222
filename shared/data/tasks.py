"""Labelled tasks: what their answer options are and how a choice is scored, and the natural
prompt/response tasks found inside the demo corpora.

Each demo task is a small, fixed sample (seeded, so every machine scores the same items).
The prompt is the raw input text and the response the reference answer; how they are put in
a template is the evaluator's choice. ``closed`` tasks draw answers from a fixed label set
(score by accuracy over the labels); open ones are scored by the answer's likelihood. A
user's own file may instead give each question its own options (``Record.choices``).
``candidates`` and ``predict`` are the one definition of multiple choice that
``client.evaluate`` (and through it ``lwm evaluate`` and ``lwm simulate``) scores by.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

from shared.data import sources
from shared.data.records import Record
from shared.data.text import chunk_words, normalise, pack, paragraphs, word_count
from shared.errors import DataError

_SEED = 20261127
_T = TypeVar("_T")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    domain: str
    description: str
    closed: bool


_TASKS = (
    TaskInfo("medicine/icd-chapter", "medicine", "ICD-10-CM description -> chapter title", True),
    TaskInfo("news/category", "news", "BBC paragraph -> category", True),
    TaskInfo("law/license-id", "law", "licence paragraph -> SPDX licence id", True),
    TaskInfo("law/article-title", "law", "constitution article text -> article title", False),
    TaskInfo("math/answer", "math", "CHAMP problem -> final answer", False),
    TaskInfo("literature/book", "literature", "King James verse -> book name", True),
)


def list_tasks() -> list[TaskInfo]:
    return list(_TASKS)


def candidates(records: Sequence[Record], max_labels: int) -> list[tuple[str, ...]] | None:
    """The answers each labelled record is scored over: its own ``choices`` when its file
    gives them, else the task's closed label set (the distinct responses of the records
    without choices, sorted), which is how the closed tasks above are scored.

    None when a record would have more than ``max_labels`` candidates: each candidate costs
    one forward pass per record, so such a task is open and scored by its answers'
    likelihood only.
    """
    labels = tuple(sorted({str(r.response) for r in records if not r.choices}))
    options = [r.choices or labels for r in records]
    return options if all(len(o) <= max_labels for o in options) else None


@dataclass(frozen=True)
class Prediction:
    """The option picked by ``acc`` and by ``acc_norm`` (indices into the candidates)."""

    acc: int
    acc_norm: int


def predict(loglikelihoods: Sequence[float], options: Sequence[str]) -> Prediction:
    """lm-evaluation-harness's multiple-choice predictions, as the paper scores its tasks:
    ``acc`` takes the option with the highest summed log-likelihood given the question,
    ``acc_norm`` the highest after dividing it by the option's length (lm-eval 0.4's
    ``len(choice)``: characters, which are bytes for ASCII options; its ``acc_bytes``
    divides by UTF-8 bytes). Ties go to the first option, as ``numpy.argmax`` does."""
    if len(loglikelihoods) != len(options) or not options:
        raise DataError(f"{len(loglikelihoods)} scores for {len(options)} options")
    order = range(len(options))
    return Prediction(
        acc=max(order, key=lambda i: loglikelihoods[i]),
        acc_norm=max(order, key=lambda i: loglikelihoods[i] / max(len(options[i]), 1)),
    )


def load_task(name: str) -> list[Record]:
    """The task's records (prompt + response) in a fixed order; ``DataError`` if unknown."""
    return list(_load(name))


@cache
def _load(name: str) -> tuple[Record, ...]:
    builder = _BUILDERS.get(name)
    if builder is None:
        known = ", ".join(t.name for t in _TASKS)
        raise DataError(f"unknown task {name!r}; known tasks: {known}")
    pairs = [(normalise(p), normalise(r)) for p, r in builder()]
    return tuple(Record(prompt=p, response=r) for p, r in pairs if p and r)


def _sample(items: Sequence[_T], k: int, salt: str) -> list[_T]:
    """Up to ``k`` items, chosen by a seed fixed per task part, kept in their original order."""
    if len(items) <= k:
        return list(items)
    rng = random.Random(f"{_SEED}:{salt}")
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def _first_chunk(text: str) -> str:
    chunks = chunk_words(text)
    return chunks[0] if chunks else ""


def _icd_chapter() -> list[tuple[str, str]]:
    by_chapter: dict[str, list[sources.IcdEntry]] = {}
    for entry in sources.icd_entries():
        by_chapter.setdefault(entry.chapter, []).append(entry)
    return [
        (entry.description, title)
        for chapter, title in sources.icd_chapters().items()
        for entry in _sample(by_chapter.get(chapter, []), 40, f"icd{chapter}")
    ]


def _news_category() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for category in sources.BBC_FOLDERS:
        articles = [a for a in sources.bbc_articles(category) if len(a) > 1]
        for article in _sample(articles, 100, f"bbc{category}"):
            out.append((_first_chunk(article[1]), category))
    return out


def _license_id() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for licence_id, text in sources.spdx_licences():
        body = [p for p in paragraphs(text) if word_count(p) >= 15]
        if body:
            out.append((_first_chunk(body[0]), licence_id))
    return out


def _article_title() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for title, text in sources.constitution_articles():
        chunks = pack(paragraphs(text), min_words=20)
        if chunks and title:
            out.append((_first_chunk(chunks[0]), title))
    return out


def _math_answer() -> list[tuple[str, str]]:
    return [(p.text, p.answer) for p in sources.champ().problems]


def _verse_book() -> list[tuple[str, str]]:
    by_book: dict[str, list[str]] = {}
    for verse in sources.kjv_verses():
        by_book.setdefault(verse.book, []).append(verse.text)
    return [
        (text, book) for book, texts in by_book.items() for text in _sample(texts, 10, f"kjv{book}")
    ]


_BUILDERS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "medicine/icd-chapter": _icd_chapter,
    "news/category": _news_category,
    "law/license-id": _license_id,
    "law/article-title": _article_title,
    "math/answer": _math_answer,
    "literature/book": _verse_book,
}
