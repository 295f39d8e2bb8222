"""Cross-source domains: per domain two sources that share the subject but differ in style.

In a market the user's data is never the holder's: a hospital's own notes against another's
coding manual. Each cross-source domain pairs a *holder* source (what a learnware's
contributor trained on) with a *user* source (what a user who needs that learnware has),
both cut from the offline corpora (``DATA.md``) through the same loaders and snippet rules
as the demo domains (``shared.data.corpora``), so every text obeys the corpus contract.

==========  =======================================  =========================================
domain      holder source                            user source
==========  =======================================  =========================================
medicine    ICD-10-CM code descriptions              the codes' inclusion terms, one list a code
finance     BBC business article paragraphs          BBC business headlines (510)
math        CHAMP problems and solution steps        CHAMP hints and concepts (545)
law/const.  Constitution of India article texts      article titles (3+ words)
law/lic.    copyleft SPDX licences (GPL, MPL, ...)   every other SPDX licence (BSD, MIT, ...)
literature  King James Old Testament                 King James New Testament
software    docstrings of stdlib packages            docstrings of top-level stdlib modules
==========  =======================================  =========================================

Some user sources are small (finance, math, constitution: a few hundred texts); a caller
that asks for more texts than a source has gets all of them and should say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from shared.data import sources
from shared.data.corpora import (
    licence_snippets,
    load_domain,
    math_problem_snippets,
    verse_snippets,
)
from shared.data.text import finalise, stdlib_docstring_files
from shared.errors import DataError

#: SPDX id prefixes of the copyleft family (the holders' licences); the rest are the users'.
COPYLEFT_PREFIXES = (
    "AGPL",
    "GPL",
    "LGPL",
    "GFDL",
    "deprecated_GPL",
    "deprecated_LGPL",
    "MPL",
    "EPL",
    "CDDL",
    "EUPL",
    "CECILL",
    "OSL",
    "CPL",
)
FIRST_NT_BOOK = "Matthew"


@dataclass(frozen=True)
class CrossDomain:
    """One domain of the cross-source setting: what its holder and its users hold."""

    name: str
    holder_source: str
    user_source: str


@dataclass(frozen=True)
class CrossTexts:
    holder: tuple[str, ...]
    user: tuple[str, ...]


CROSS_DOMAINS = (
    CrossDomain("medicine", "ICD-10-CM code descriptions", "ICD-10-CM inclusion terms"),
    CrossDomain("finance", "BBC business article paragraphs", "BBC business headlines"),
    CrossDomain("math", "CHAMP problems and solution steps", "CHAMP hints and concepts"),
    CrossDomain("law/constitution", "Constitution of India article texts", "article titles"),
    CrossDomain("law/licenses", "copyleft SPDX licence texts", "other SPDX licence texts"),
    CrossDomain("literature", "King James Old Testament", "King James New Testament"),
    CrossDomain("software", "stdlib package docstrings", "top-level stdlib module docstrings"),
)


def list_cross_domains() -> list[CrossDomain]:
    return list(CROSS_DOMAINS)


def load_cross(name: str) -> CrossTexts:
    """The holder's and the users' texts of a cross-source domain, each in a fixed order.

    Raises ``DataError`` for an unknown name or a missing corpus package. Cached in memory.
    """
    builders = _builders()
    if name not in builders:
        known = ", ".join(d.name for d in CROSS_DOMAINS)
        raise DataError(f"unknown cross-source domain {name!r}; known: {known}")
    return _load(name)


@cache
def _load(name: str) -> CrossTexts:
    holder, user = (finalise(texts) for texts in _builders()[name]())
    # Boilerplate some sources share (licence clauses) stays the holder's alone.
    held = set(holder)
    texts = CrossTexts(holder, tuple(t for t in user if t not in held))
    if not texts.holder or not texts.user:
        raise DataError(f"cross-source domain {name!r} loaded no text; reinstall its package")
    return texts


Pair = tuple[list[str], list[str]]


def _medicine() -> Pair:
    entries = sources.icd_entries()
    return (
        [e.description for e in entries],
        ["; ".join(e.inclusion_terms) for e in entries if e.inclusion_terms],
    )


def _finance() -> Pair:
    articles = sources.bbc_articles("business")
    return load_domain("finance"), [article[0] for article in articles if article]


def _math() -> Pair:
    data = sources.champ()
    return math_problem_snippets(), [*data.hints, *data.concepts]


def _constitution() -> Pair:
    return load_domain("law/constitution"), [t for t, _ in sources.constitution_articles()]


def _copyleft(licence_id: str) -> bool:
    return licence_id.split("-")[0] in COPYLEFT_PREFIXES


def _licences() -> Pair:
    return licence_snippets(_copyleft), licence_snippets(lambda i: not _copyleft(i))


def _literature() -> Pair:
    verses = sources.kjv_verses()
    start = next(i for i, v in enumerate(verses) if v.book == FIRST_NT_BOOK)
    return verse_snippets(verses[:start]), verse_snippets(verses[start:])


def _software() -> Pair:
    files = stdlib_docstring_files()
    return [t for path, t in files if "/" in path], [t for path, t in files if "/" not in path]


def _builders() -> dict[str, Callable[[], Pair]]:
    return {
        "medicine": _medicine,
        "finance": _finance,
        "math": _math,
        "law/constitution": _constitution,
        "law/licenses": _licences,
        "literature": _literature,
        "software": _software,
    }
