"""Small text helpers shared by the corpus loaders and the tiny model's tokenizer trainer.

Every demo snippet goes through :func:`finalise`, so all domains obey one contract: whitespace
collapsed, 3 to 200 words, no exact duplicates, order kept (so loads are deterministic).
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

MIN_WORDS = 3
MAX_WORDS = 200

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")

# Folders of the standard library that hold tests or third-party code, not library docs.
_STDLIB_SKIP = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled"}
)


def normalise(text: str) -> str:
    """Collapse every run of whitespace (newlines, tabs) to one space and strip the ends."""
    return " ".join(text.split())


def word_count(text: str) -> int:
    return len(text.split())


def paragraphs(text: str) -> list[str]:
    """Split on blank lines; each paragraph is normalised and empty ones dropped."""
    return [p for p in (normalise(part) for part in _PARAGRAPH_BREAK.split(text)) if p]


def chunk_words(text: str, max_words: int = MAX_WORDS) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_words`` words, at sentence ends if possible.

    A single sentence longer than the limit is cut between words: snippets are inputs to
    models with short contexts, and the 200-word bound is part of the corpus contract.
    """
    text = normalise(text)
    if word_count(text) <= max_words:
        return [text] if text else []
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        pieces.extend(" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words))
    return pack(pieces, min_words=max_words, max_words=max_words)


def pack(
    pieces: Iterable[str],
    *,
    min_words: int,
    max_words: int = MAX_WORDS,
    max_pieces: int | None = None,
) -> list[str]:
    """Join consecutive pieces greedily until a chunk has at least ``min_words`` words.

    A chunk is closed early when the next piece would push it over ``max_words`` or when it
    already holds ``max_pieces`` pieces. Used to turn very short units (verses, clauses,
    solution steps) into snippets long enough to say something about their domain.
    """
    chunks: list[str] = []
    current: list[str] = []
    words = 0
    for piece in (normalise(p) for p in pieces):
        if not piece:
            continue
        n = word_count(piece)
        full = max_pieces is not None and len(current) >= max_pieces
        if current and (words + n > max_words or full):
            chunks.append(" ".join(current))
            current, words = [], 0
        current.append(piece)
        words += n
        if words >= min_words:
            chunks.append(" ".join(current))
            current, words = [], 0
    if current:
        chunks.append(" ".join(current))
    return chunks


def finalise(snippets: Iterable[str]) -> tuple[str, ...]:
    """Apply the corpus contract: normalise, cut to <= 200 words, drop < 3 words, dedupe."""
    seen: set[str] = set()
    out: list[str] = []
    for snippet in snippets:
        for piece in chunk_words(snippet):
            if word_count(piece) >= MIN_WORDS and piece not in seen:
                seen.add(piece)
                out.append(piece)
    return tuple(out)


def _stdlib_files(root: Path) -> Iterator[Path]:
    """Yield the standard library's ``.py`` files in sorted order, skipping test folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _STDLIB_SKIP)
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(folder) / name


def _first_paragraphs(source: bytes, filename: str) -> Iterator[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError):
        return
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                first = paragraphs(doc)
                if first:
                    yield first[0]


@lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[str, ...]:
    """First paragraph of every docstring in this Python's standard library, deduplicated.

    Public, human-written English text that every machine running the project already has:
    the tiny model's tokenizer is trained on it (never on a holder's data) and it is the
    ``software`` demo domain. Deterministic for a given Python build (sorted walk, ``ast``
    order); another Python version gives a slightly different list. Takes ~3 s, then cached.
    """
    return tuple(text for _, text in stdlib_docstring_files())


@lru_cache(maxsize=1)
def stdlib_docstring_files() -> tuple[tuple[str, str], ...]:
    """``stdlib_docstrings`` with where each came from: (file path relative to the standard
    library, e.g. ``email/parser.py``, first paragraph); a text found twice keeps its first
    file. The path tells module groups apart (the cross-source ``software`` domain)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for path in _stdlib_files(root):
        try:
            source = path.read_bytes()
        except OSError:
            continue
        for text in _first_paragraphs(source, str(path)):
            if text not in seen:
                seen.add(text)
                out.append((path.relative_to(root).as_posix(), text))
    return tuple(out)
