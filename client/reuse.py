"""Reuse with a local check: the market's top matches, tried on the user's own data first.

The market ranks learnwares by how close their specs are to the user's; closeness of data
is not the same as help on it (a learnware may have learned its source's surface form as
much as its domain). So before anything is reused, ``reuse``:

1. searches exactly as ``lwm search`` does (``private_search``: one DP spec of the data,
   recorded in the data's privacy ledger; the only release of the whole command);
2. fetches the top ``top_k`` matches with every check ``fetch_learnware`` makes (a folder
   fetched before is re-checked with ``check_folder``);
3. takes a seeded held-out slice of the user's records (``holdout`` of them; 50 by
   default, all when there are fewer) and scores the base model and each match on it
   with ``client.evaluate`` (token perplexity; the references' perplexity given their
   prompts for labelled data), all on this machine: nothing is sent anywhere, so the
   check spends no privacy;
4. with ``merge``, adds one more candidate, the top matches merged into one LoRA adapter
   (``merge_adapters``: peft's ``add_weighted_adapter``, ``cat``, equal weights: the
   average of their weight updates, exactly);
5. ``choose``: the candidate with the lowest perplexity, the base model unless one beats it.

The candidates are fixed before the slice is scored (equal merge weights, not fitted on
it), so the check picks among a fixed set and its figures are fair to each. The slice was
part of the data the spec described, but no candidate was trained on it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.evaluate import Evaluation, evaluate_model
from client.user import SearchMatch, SearchOutcome, check_id, private_search
from shared.data import DataPath, Record, load_dataset
from shared.errors import AlreadyExists, InvalidInput, NotFound
from shared.files import check_writable
from shared.home import Home
from shared.models.device import CPU, Placement, scoring_precision

if TYPE_CHECKING:
    from client.market import Connection, MarketClient
    from client.run import LoadedLearnware
    from client.trust import TrustStore

BASE = "base"
MERGED = "merged"
#: Records scored by default: enough to tell candidates apart, cheap on two cores.
DEFAULT_HOLDOUT = 50


@dataclass(frozen=True)
class Candidate:
    """One model the check scored: the base model (``BASE``), a learnware (its id) or the
    merged adapter of ``members`` (``MERGED``).

    ``weights`` are the members' shares (equal); ``rank`` the market's rank of a learnware
    (0 for the others)."""

    name: str
    label: str
    members: tuple[str, ...]
    weights: tuple[float, ...]
    rank: int
    evaluation: Evaluation

    @property
    def single(self) -> bool:
        """One learnware of the market, as it was published (not a merge, not the base)."""
        return self.members == (self.name,)

    @property
    def shown(self) -> str:
        """How tables name it: a learnware by its name, domain and id."""
        return f"{self.label} {self.name}" if self.single else self.label

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per token (log of the token perplexity)."""
        return math.log(self.evaluation.perplexity)


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate with the lowest perplexity; the base model (``BASE``) keeps the
    place on a tie, so a learnware must beat it to be picked."""
    base = next(c for c in candidates if c.name == BASE)
    others = [c for c in candidates if c.name != BASE]
    best = min(others, key=lambda c: c.nll, default=base)
    return best if best.nll < base.nll else base


def holdout_records(records: Sequence[Record], n: int | None, seed: int) -> list[Record]:
    """``n`` of ``records`` (None: ``DEFAULT_HOLDOUT``, or all when there are fewer), drawn
    with ``seed`` (kept in file order)."""
    if n is None:
        n = min(DEFAULT_HOLDOUT, len(records))
    if not 1 <= n <= len(records):
        raise InvalidInput(
            f"--holdout must be between 1 and the data's {len(records)} records, got {n}"
        )
    picked = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in picked]


def merge_adapters(model: Any, names: Sequence[str], weights: Sequence[float]) -> str:
    """Add to the peft ``model`` one adapter that is the weighted sum of the weight updates
    of adapters ``names``; returns its name (made once per names and weights).

    peft's ``add_weighted_adapter`` with ``combination_type="cat"``: the new adapter's rank
    is the sum of theirs and its update is exactly sum(w_i * B_i A_i * scaling_i) (``svd``
    and ``linear`` approximate it). ``cat`` folds each scaling into A, so the merged scaling
    must be 1: peft's copy of the first config gives alpha = r, which is 1 except under
    rsLoRA (alpha / sqrt(r)), so it is set here. DoRA magnitudes do not add up: refused.
    """
    if len(names) < 2 or len(weights) != len(names):
        raise InvalidInput(f"a merge needs 2 or more adapters with one weight each: {names}")
    for name in names:
        if getattr(model.peft_config[name], "use_dora", False):
            raise InvalidInput(f"adapter {name} is a DoRA adapter, which cannot be merged")
    blob = repr((list(names), [float(w) for w in weights])).encode()
    merged = f"{MERGED}-{hashlib.sha256(blob).hexdigest()[:12]}"
    if merged not in model.peft_config:
        model.add_weighted_adapter(list(names), list(weights), merged, combination_type="cat")
        model.peft_config[merged].use_rslora = False  # saved so: a reload scales by 1 too
        for module in model.modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and merged in scaling:
                scaling[merged] = 1.0
    return merged


@dataclass(frozen=True)
class ReuseOutcome:
    """What ``reuse`` did: the search, every candidate scored, the pick and its folder.

    ``written`` is the plain peft folder of the pick (``out``), None when no ``out`` was
    given or the base model was kept. ``check_seconds`` covers loading and scoring."""

    search: SearchOutcome
    candidates: tuple[Candidate, ...]
    chosen: Candidate
    n_checked: int
    seed: int
    fetch_seconds: float
    check_seconds: float
    written: Path | None


def reuse(
    data: DataPath,
    conn: Connection | MarketClient,
    *,
    top_k: int = 3,
    holdout: int | None = None,
    seed: int = 0,
    merge: bool = False,
    out: Path | None = None,
    home: Home | None = None,
    base_model: str | Path | None = None,
    revoked_keys: Collection[str] = (),
    trust: TrustStore | None = None,
    placement: Placement = CPU,
    batch_size: int = 16,
    precision: str = "auto",
    **search_options: Any,
) -> ReuseOutcome:
    """Search with ``data``, fetch the top ``top_k``, check them here, pick (module doc).

    ``holdout`` None scores ``DEFAULT_HOLDOUT`` records (all, when the data has fewer).
    ``precision``: what the check's scores multiply in (``scoring_precision``; ``auto``
    is bfloat16 autocast where the hardware has it). ``search_options`` go to
    ``private_search`` (kind, epsilon, no_dp, delta, budget_epsilon, domain, task,
    progress, ...). ``out`` (a new folder) receives the
    pick as a plain peft folder (``client.run.write_adapter_folder``). Bad input fails
    before the market is contacted: ``--top-k``/``--holdout`` out of range, an existing
    ``out``, unreadable data.
    """
    from client.user import _client

    if top_k < 1:
        raise InvalidInput(f"--top-k must be at least 1, got {top_k}")
    precision = scoring_precision(precision, placement.device)
    if out is not None:
        if out.exists() or out.is_symlink():
            raise AlreadyExists(f"{out} exists: --out must name a new folder")
        check_writable(out, force=True, parents=True)
    home = home or Home.resolve()
    dataset = load_dataset(data)
    checked = holdout_records(dataset.records, holdout, seed)
    with _client(conn) as client:
        found = private_search(dataset.texts(), client, top_k=top_k, home=home, **search_options)
        if not found.matches:
            raise NotFound("no learnware matches (check the filters): nothing to check")
        started = time.perf_counter()
        verified = _fetch(found.matches, client, home, base_model, revoked_keys, trust)
        fetched = time.perf_counter() - started
    started = time.perf_counter()
    loaded = _load(verified, home, placement)
    candidates = check(
        loaded, found.matches, checked, merge=merge, batch_size=batch_size, precision=precision
    )
    chosen = choose(candidates)
    check_seconds = time.perf_counter() - started
    written = None if out is None else _write(chosen, loaded, out, home)
    return ReuseOutcome(
        found, tuple(candidates), chosen, len(checked), seed, fetched, check_seconds, written
    )


def check(
    loaded: Mapping[str, LoadedLearnware],
    matches: Sequence[SearchMatch],
    records: Sequence[Record],
    *,
    merge: bool = False,
    batch_size: int = 16,
    max_words: int | None = None,
    precision: str = "float32",
) -> list[Candidate]:
    """Score the base model, each of ``matches`` (loaded together, keyed by id) and, with
    ``merge``, their merged adapter, on ``records``, here (in ``precision``, resolved)."""
    first = next(iter(loaded.values()))
    model, tokenizer = first.model, first.tokenizer

    def score(adapter: str | None) -> Evaluation:
        with _switched(model, adapter):
            return evaluate_model(
                model,
                tokenizer,
                records,
                batch_size=batch_size,
                max_words=max_words,
                precision=precision,
            )

    out = [Candidate(BASE, "base model", (), (), 0, score(None))]
    for m in matches:
        out.append(Candidate(m.id, f"{m.name} ({m.domain})", (m.id,), (1.0,), m.rank, score(m.id)))
    ids = [m.id for m in matches]
    if merge and len(ids) > 1:
        weights = tuple(1.0 / len(ids) for _ in ids)
        merged = merge_adapters(model, ids, weights)
        label = f"merge of top {len(ids)}"
        out.append(Candidate(MERGED, label, tuple(ids), weights, 0, score(merged)))
    return out


@contextmanager
def _switched(model: Any, adapter: str | None) -> Iterator[None]:
    """``adapter`` switched on; None: every adapter off (the bare base model)."""
    if adapter is None:
        with model.disable_adapter():
            yield
        return
    model.set_adapter(adapter)
    yield


def _fetch(
    matches: Sequence[SearchMatch],
    client: MarketClient,
    home: Home,
    base_model: str | Path | None,
    revoked_keys: Collection[str],
    trust: TrustStore | None,
) -> dict[str, Any]:
    """Each match verified: fetched into the cache (``HOME/learnwares/ID``), or the folder
    a fetch left there re-checked (``client.run.verified_source``)."""
    from client.run import verified_source
    from client.trust import TrustStore

    trust = trust or TrustStore.at(home)
    return {
        m.id: verified_source(check_id(m.id), home, base_model, client, revoked_keys, trust)
        for m in matches
    }


def _load(verified: Mapping[str, Any], home: Home, placement: Placement) -> dict[str, Any]:
    from client.run import load_learnwares

    return load_learnwares(verified, home=home, placement=placement)


def _write(
    chosen: Candidate, loaded: Mapping[str, LoadedLearnware], out: Path, home: Home
) -> Path | None:
    """The pick as a plain peft folder at ``out``; None when the base model was kept."""
    import tempfile

    from client.run import write_adapter_folder

    if chosen.name == BASE:
        return None
    first = next(iter(loaded.values()))
    if chosen.name != MERGED:
        return write_adapter_folder(loaded[chosen.name].path, first.base_model, out, home)
    merged = merge_adapters(first.model, list(chosen.members), list(chosen.weights))
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        first.model.save_pretrained(tmp, selected_adapters=[merged], safe_serialization=True)
        return write_adapter_folder(Path(tmp) / merged, first.base_model, out, home)
