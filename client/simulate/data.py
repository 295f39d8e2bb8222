"""Who holds which text: disjoint slices of the real corpora for every holder and user.

Each corpus (and each task's records) is shuffled once with the simulation's seed and dealt
out in config order, holders first and users after, so no text is both trained on and
evaluated, and no two holders share one. A consortium's own file is dealt the same way (its
records through ``shared.data.load_dataset``; as texts when it is a source, as records when
it is a task). The same config gives the same deal on every machine with the same package
versions (and the same files).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from client.simulate.config import Contributor, SimulationConfig, Source, source_label
from shared.data import Record
from shared.errors import DataError


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
    check_n: int = 0

    def spec_texts(self) -> list[str]:
        return [r.full_text for r in self.records]

    def eval_records(self) -> list[Record]:
        return list(self.records[: self.eval_n])

    def check_user(self) -> UserData:
        """The same user holding the local check's records (``Users.check_records`` after
        the scored ones) as the records to score."""
        rest = self.records[self.eval_n : self.eval_n + self.check_n]
        return replace(self, name=f"{self.name}:check", records=rest, eval_n=len(rest))


@dataclass(frozen=True)
class Deal:
    holders: dict[str, tuple[HolderData, ...]]  # contributor name -> its holders
    users: tuple[UserData, ...]


@dataclass(frozen=True)
class Pool:
    """Items dealt from one source: ``name`` seeds the shuffle and is shown in errors (a
    file's name, not its folder, so a moved folder deals the same); ``key`` tells pools
    apart (the file's whole path)."""

    name: str
    key: str

    @classmethod
    def of(cls, what: str, source: Source) -> Pool:
        if isinstance(source, str):
            return cls(f"{what}:{source}", f"{what}:{source}")
        options = {k: v for k, v in vars(source).items() if k != "path" and v is not None}
        suffix = f"{options}" if options else ""
        return cls(f"{what}:{source.path.name}{suffix}", f"{what}:{source.path}{suffix}")


class _Dealer:
    """Hands out each pool's items in a fixed shuffled order, never the same item twice."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.pools: dict[str, list[Any]] = {}

    def take(self, pool: Pool, n: int, load: Callable[[], Sequence[Any]], who: str) -> list[Any]:
        if pool.key not in self.pools:
            items = list(dict.fromkeys(load()))
            random.Random(f"{self.seed}:{pool.name}").shuffle(items)
            self.pools[pool.key] = items
        items = self.pools[pool.key]
        if len(items) < n:
            raise DataError(f"{pool.name} has {len(items)} items left, {who} needs {n}")
        taken, self.pools[pool.key] = items[:n], items[n:]
        return taken


def deal(config: SimulationConfig) -> Deal:
    dealer = _Dealer(config.seed)
    holders: dict[str, tuple[HolderData, ...]] = {}
    for c in config.contributors:
        holders[c.name] = tuple(_holder(dealer, c, h) for h in range(c.holders))
    users: list[UserData] = []
    for c in config.contributors:
        sources = c.user_sources or c.sources
        texts = _spread(dealer, sources, config.users.texts, f"user of {c.name}")
        users.append(
            UserData(
                name=f"{c.name}-user",
                kind="text",
                source="+".join(source_label(s) for s in sources),
                group=c.domain,
                right=(c.name,),
                records=tuple(Record(text=t) for t in texts),
                eval_n=config.users.eval_records,
                check_n=config.users.check_records,
            )
        )
    for t in config.tasks:
        task = t.name if t.data is None else t.data
        records = _task_records(dealer, task, config.users.task_records, t.name)
        users.append(
            UserData(
                name=t.name.replace("/", "-"),
                kind="task" if all(r.is_labelled for r in records) else "text",
                source=source_label(task),
                group=config.task_domain(t),
                right=t.right,
                records=tuple(records),
                eval_n=config.users.eval_records,
                check_n=config.users.check_records,
            )
        )
    return Deal(holders, tuple(users))


def _holder(dealer: _Dealer, c: Contributor, h: int) -> HolderData:
    name = c.name if c.holders == 1 else f"{c.name}-{h + 1}"
    texts = _spread(dealer, c.sources, c.texts, name)
    records: list[Record] = []
    for task in c.tasks:
        records.extend(_task_records(dealer, task, c.task_records, name))
    return HolderData(name, tuple(texts), tuple(records))


def _task_records(dealer: _Dealer, task: Source, n: int, who: str) -> list[Record]:
    return dealer.take(Pool.of("task", task), n, partial(_records, task), who)


def _records(source: Source) -> list[Record]:
    """A built-in task's records, or the records of the user's file."""
    from shared.data import load_dataset, load_task

    return load_task(source) if isinstance(source, str) else list(load_dataset(source).records)


def _texts(source: Source) -> list[str]:
    """A built-in corpus's texts, or those of the user's file (``Record.full_text``)."""
    from shared.data import load_dataset, load_domain

    return load_domain(source) if isinstance(source, str) else load_dataset(source).texts()


def _spread(dealer: _Dealer, sources: Sequence[Source], n: int, who: str) -> list[str]:
    """``n`` texts drawn as evenly as possible from each source, interleaved."""
    share, extra = divmod(n, len(sources))
    parts = [
        dealer.take(Pool.of("text", s), share + (i < extra), partial(_texts, s), who)
        for i, s in enumerate(sources)
    ]
    mixed = [text for group in _interleave(parts) for text in group]
    return [str(t) for t in mixed]


def _interleave(parts: list[list[object]]) -> list[list[object]]:
    longest = max((len(p) for p in parts), default=0)
    return [[p[i] for p in parts if i < len(p)] for i in range(longest)]
