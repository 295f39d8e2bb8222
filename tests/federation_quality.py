"""Federated vs solo learnwares on real text: the experiment behind
``tests/test_federation_quality.py`` and ``benchmarks/bench_federation.py --quality``.

K holders get disjoint random samples of one domain's snippets (``shared.data.corpora``);
the pooled held-out set is K more samples of the same domain, disjoint from all training
text. Every model is scored by token perplexity on that pooled held-out set with its adapter
on, and the base model with the adapter off (``client.evaluate.evaluate(with_base=True)``).

Fairness of the comparison: a solo holder trains with the federation's own
``FederationConfig.training`` (same rank, alpha, modules, optimizer, lr, batch and
max_tokens) for ``rounds * local_steps`` steps, as many local optimisation steps as each
holder makes in the federation, and from the same LoRA start (``finetune_lora`` seeds with
``FinetuneConfig.seed`` 0, the ServerApp's initial LoRA with 0 too). What differs is only
what federation is for: each round starts from the average of all holders' adapters.

Only public APIs are used (``make_learnware``, ``run_federation``, ``load_learnware``,
``evaluate``), so this measures what a contributor and a user would get.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from client.contribute import ContributeConfig, make_learnware
from client.evaluate import LearnwareEvaluation, evaluate
from client.federation.config import FederationConfig, Holder, MarketSettings
from client.finetune import FinetuneConfig
from client.publish import LearnwareCard, SpecSettings
from client.run import load_learnware
from client.trust import TrustStore
from shared import signing
from shared.data import Record, load_domain, split
from shared.home import Home

#: The specs of every learnware here. Holders have a few dozen texts, too few for an RKME
#: count at the market's epsilon 4 (``rkme_texts_needed``): these learnwares are scored, not
#: searched, so their specs are made at a large epsilon.
QUALITY_SPEC = SpecSettings(("rkme",), epsilon=64.0)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class QualitySettings:
    """One federated-vs-solo experiment.

    The defaults are the regime where federation should matter, and where it does on tiny
    (see ``benchmarks/bench_federation.py``): small holders (24 texts each) and enough steps
    (50 at batch 8, about 17 epochs of one holder's data) that a holder alone starts to fit
    its own texts, while the federation's average sees three times as much text.
    """

    base_model: str = "tiny"
    domain: str = "finance"
    holders: int = 3
    per_holder: int = 24
    held_out_per_holder: int = 30
    rounds: int = 5
    local_steps: int = 10
    batch_size: int = 8
    max_tokens: int = 64
    rank: int = 8
    lr: float | None = None
    seed: int = 0

    @property
    def solo_steps(self) -> int:
        """A solo holder's steps: what each holder trains over the whole federation."""
        return self.rounds * self.local_steps


@dataclass(frozen=True)
class HolderData:
    """The holders' disjoint training texts and the pooled held-out records."""

    parts: tuple[tuple[str, ...], ...]
    held_out: tuple[Record, ...]


@dataclass(frozen=True)
class QualityResult:
    """Held-out token perplexities (lower is better) and the wall time of each stage."""

    settings: QualitySettings
    base: float
    solos: tuple[float, ...]
    federated: float
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """Best solo perplexity over the federated one: > 1 means federation beat every solo."""
        return min(self.solos) / self.federated


def holder_data(settings: QualitySettings) -> HolderData:
    """Disjoint random samples of the domain (``split``, seeded): K training parts, one pool."""
    k, n = settings.holders, settings.per_holder
    train, held_out = split(
        load_domain(settings.domain), k * n, k * settings.held_out_per_holder, settings.seed
    )
    parts = tuple(tuple(train[i * n : (i + 1) * n]) for i in range(k))
    return HolderData(parts, tuple(Record(text=t) for t in held_out))


def write_holders(data: HolderData, folder: Path) -> list[Path]:
    """Each holder's texts as a JSONL file, the form ``FederationConfig`` holders read."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, texts in enumerate(data.parts):
        path = folder / f"holder-{i}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths.append(path)
    return paths


def new_key(path: Path, home: Home) -> Path:
    """A fresh Ed25519 key at ``path``: it signs the learnwares (no market is involved), and
    is pinned in ``home``'s trust store, since loading a folder checks its signer."""
    key, public = signing.generate_keypair()
    signing.save_private_key(path, key)
    TrustStore.at(home).add(signing.public_key_bytes(public), path.stem)
    return path


def federation_config(
    settings: QualitySettings, paths: Sequence[Path], key: Path, home: Home, out: Path
) -> FederationConfig:
    """The simulated federation that writes its signed package to ``out`` (no market)."""
    return FederationConfig(
        holders=tuple(Holder(f"holder-{i}", p) for i, p in enumerate(paths)),
        learnware=LearnwareCard(
            name="federated-news",
            domain=settings.domain.replace("/", "-"),
            task="text-generation",
            description=f"Federated LoRA over {len(paths)} holders' {settings.domain} text.",
            license="MIT",
            contributor="coordinator",
        ),
        market=MarketSettings(key=key, out=out),
        spec=QUALITY_SPEC,
        training=FinetuneConfig(
            steps=settings.local_steps,
            batch_size=settings.batch_size,
            max_tokens=settings.max_tokens,
            lr=settings.lr,
            rank=settings.rank,
            alpha=2 * settings.rank,
        ),
        base_model=settings.base_model,
        rounds=settings.rounds,
        home=home.root,
    )


def solo_config(fed: FederationConfig, index: int) -> ContributeConfig:
    """Holder ``index`` alone: the federation's training settings, ``rounds*local_steps`` steps.

    Both sides make the same spec (``QUALITY_SPEC``): specs do not touch the adapter.
    """
    card = replace(
        fed.learnware,
        name=f"solo-{index}",
        description=f"Holder {index} alone, for comparison with the federation.",
        contributor="contributor",
    )
    return ContributeConfig(
        card,
        base_model=fed.base_model,
        spec=QUALITY_SPEC,
        finetune=replace(fed.training, steps=fed.total_steps),
    )


def make_solo(
    texts: Sequence[str], fed: FederationConfig, index: int, home: Home, out: Path
) -> Path:
    """Holder ``index``'s own learnware folder (``make_learnware``, signed with the same key)."""
    package = make_learnware(list(texts), solo_config(fed, index), fed.market.key, out, home=home)
    return package.folder


def make_federated(fed: FederationConfig) -> Path:
    """The federated learnware folder (``run_federation``, Flower's simulation engine)."""
    from client.federation.run import run_federation

    return run_federation(fed).published.package.folder


def score(
    folder: Path, held_out: Sequence[Record], home: Home, *, with_base: bool = False
) -> LearnwareEvaluation:
    """Held-out perplexity of a learnware folder (and of its base with the adapter off)."""
    return evaluate(load_learnware(folder, home=home), list(held_out), with_base=with_base)


def compare(
    settings: QualitySettings, home: Home, workdir: Path, progress: Progress | None = None
) -> QualityResult:
    """Train K solo learnwares and the federated one, and score all on the pooled held-out set.

    ``progress`` is told the name of each stage as it starts (a bench's progress bar).
    """
    tell = progress or (lambda _stage: None)
    data = holder_data(settings)
    paths = write_holders(data, workdir / "data")
    key = new_key(workdir / "coordinator.key", home)
    fed = federation_config(settings, paths, key, home, workdir / "federated")
    seconds: dict[str, float] = {}
    solos, base = [], float("nan")
    for i, texts in enumerate(data.parts):
        tell(f"solo {i}")
        started = time.perf_counter()
        folder = make_solo(texts, fed, i, home, workdir / f"solo-{i}")
        seconds[f"solo_{i}"] = time.perf_counter() - started
        scores = score(folder, data.held_out, home, with_base=i == 0)
        solos.append(scores.learnware.perplexity)
        if scores.base is not None:
            base = scores.base.perplexity
    tell("federation")
    started = time.perf_counter()
    folder = make_federated(fed)
    seconds["federation"] = time.perf_counter() - started
    federated = score(folder, data.held_out, home).learnware.perplexity
    return QualityResult(settings, base, tuple(solos), federated, seconds)
