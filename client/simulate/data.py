"""Who holds which text: disjoint slices of the real corpora for every holder and user.

Each corpus (and each task's records) is shuffled once with the simulation's seed and dealt
out in config order, holders first and users after, so no text is both trained on and
evaluated, and no two holders share one. The same config gives the same deal on every
machine with the same package versions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from client.simulate.config import Contributor, SimulationConfig
from shared.data import Record
from shared.errors import DataError

Loader = Callable[[str], Sequence[Any]]


@dataclass(frozen=True)
class HolderData:
    """One data holder's private training data: domain texts plus task records."""

    name: str
    texts: tuple[str, ...]
    records: tuple[Record, ...]

    def training_texts(self) -> list[str]:
        """What the adapter and the spec see: texts, then records as ``prompt\\nresponse``."""
        return [*self.texts, *(r.full_text for r in self.records)]


@dataclass(frozen=True)
class UserData:
    """One user's private task: ``records`` make the spec, the first ``eval_n`` are scored.

    ``right`` names the contributors whose learnware is a correct pick for this user;
    ``group`` is the domain row of the report's table. The evaluator cuts the scored records
    to the config's ``eval_words`` (``client.evaluate``'s ``max_words``).
    """

    name: str
    kind: str  # "text" (held-out corpus text) or "task" (prompt/answer records)
    source: str
    group: str
    right: tuple[str, ...]
    records: tuple[Record, ...]
    eval_n: int

    def spec_texts(self) -> list[str]:
        return [r.full_text for r in self.records]

    def eval_records(self) -> list[Record]:
        return list(self.records[: self.eval_n])


@dataclass(frozen=True)
class Deal:
    holders: dict[str, tuple[HolderData, ...]]  # contributor name -> its holders
    users: tuple[UserData, ...]


class _Dealer:
    """Hands out each pool's items in a fixed shuffled order, never the same item twice."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.pools: dict[str, list[Any]] = {}

    def take(self, name: str, n: int, load: Callable[[], Sequence[Any]], who: str) -> list[Any]:
        if name not in self.pools:
            items = list(dict.fromkeys(load()))
            random.Random(f"{self.seed}:{name}").shuffle(items)
            self.pools[name] = items
        pool = self.pools[name]
        if len(pool) < n:
            raise DataError(f"{name} has {len(pool)} items left, {who} needs {n}")
        taken, self.pools[name] = pool[:n], pool[n:]
        return taken


def deal(config: SimulationConfig) -> Deal:
    from shared.data.corpora import load_domain, load_task

    dealer = _Dealer(config.seed)
    holders: dict[str, tuple[HolderData, ...]] = {}
    for c in config.contributors:
        holders[c.name] = tuple(
            _holder(dealer, c, h, load_domain, load_task) for h in range(c.holders)
        )
    users: list[UserData] = []
    for c in config.contributors:
        texts = _spread(dealer, c.sources, config.users.texts, f"user of {c.name}", load_domain)
        users.append(
            UserData(
                name=f"{c.name}-user",
                kind="text",
                source="+".join(c.sources),
                group=c.domain,
                right=(c.name,),
                records=tuple(Record(text=t) for t in texts),
                eval_n=config.users.eval_records,
            )
        )
    for t in config.tasks:
        records = dealer.take(
            f"task:{t.name}", config.users.task_records, partial(load_task, t.name), t.name
        )
        users.append(
            UserData(
                name=t.name.replace("/", "-"),
                kind="task",
                source=t.name,
                group=t.name.split("/")[0],
                right=t.right,
                records=tuple(records),
                eval_n=config.users.eval_records,
            )
        )
    return Deal(holders, tuple(users))


def _holder(
    dealer: _Dealer, c: Contributor, h: int, load_domain: Loader, load_task: Loader
) -> HolderData:
    name = c.name if c.holders == 1 else f"{c.name}-{h + 1}"
    texts = _spread(dealer, c.sources, c.texts, name, load_domain)
    records: list[Record] = []
    for task in c.tasks:
        taken = dealer.take(f"task:{task}", c.task_records, partial(load_task, task), name)
        records.extend(taken)
    return HolderData(name, tuple(texts), tuple(records))


def _spread(
    dealer: _Dealer, sources: Sequence[str], n: int, who: str, load_domain: Loader
) -> list[str]:
    """``n`` texts drawn as evenly as possible from each source, interleaved."""
    share, extra = divmod(n, len(sources))
    parts = [
        dealer.take(f"text:{s}", share + (i < extra), partial(load_domain, s), who)
        for i, s in enumerate(sources)
    ]
    mixed = [text for group in _interleave(parts) for text in group]
    return [str(t) for t in mixed]


def _interleave(parts: list[list[object]]) -> list[list[object]]:
    longest = max((len(p) for p in parts), default=0)
    return [[p[i] for p in parts if i < len(p)] for i in range(longest)]
