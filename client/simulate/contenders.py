"""The paper's five contenders per user, and the share of the Random -> Oracle gap closed.

All comparisons are on the mean negative log-likelihood per token (``nll`` = log of the token
perplexity; lower is better) of the user's held-out records: for text users their texts, for
task users the reference answers given the prompts. Perplexities are reported as
``exp(mean nll)``, a geometric mean, so one bad user cannot dominate a domain's row.

- **Base**: the bare base model.
- **Random**: a learnware drawn uniformly from the market (the expectation, mean nll).
- **Best-single**: the one learnware with the lowest mean nll over all users, given to all.
- **Learnware**: the market's first pick for the user's DP spec (one per spec kind).
- **Oracle**: the learnware that is best for this user, known only in hindsight.
- **Checked** (issue 16): the pick of the local check before reuse (``lwm reuse --merge``:
  the market's top k, their merge and the base model scored on the user's check records,
  ``client.simulate.checks``), judged on the scored records; never chosen in hindsight.
- **Merged top-k**: the merge of the market's top k for the user (equal weights).

Gap closed = (Random - Learnware) / (Random - Oracle): 1 is the oracle, 0 no better than
chance (the paper reports 90% in finance, 62% medical, 40% maths).

Users with a labelled task (multiple choice, or a closed label set) are also scored as the
paper scores them, by accuracy (``acc`` and ``acc_norm``, ``shared.data.tasks.predict``;
higher is better), each metric on its own: Random is the mean over the learnwares,
Best-single the learnware with the highest mean over the labelled users, Oracle the best
learnware for the user, all by that metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.simulate.checks import Reused

BASE_NAME = "base"
METRICS = ("acc", "acc_norm")  # Evaluation.accuracy and Evaluation.accuracy_norm


@dataclass(frozen=True)
class Accuracy:
    """One accuracy metric of the five contenders: shares of records right, in [0, 1]."""

    base: float
    random: float
    best_single: float
    learnware: dict[str, float]  # kind -> accuracy of the market's pick
    oracle: float


@dataclass(frozen=True)
class AccuracyRow:
    """A domain's labelled users, one metric: the mean of each contender's accuracy."""

    group: str
    metric: str
    users: int
    mean: Accuracy


@dataclass(frozen=True)
class UserContenders:
    user: str
    group: str
    base: float
    random: float
    best_single: float
    learnware: dict[str, float]  # kind -> nll of the market's pick
    picks: dict[str, str]  # kind -> contributor picked
    oracle: float
    oracle_pick: str
    accuracy: dict[str, Accuracy]  # metric -> the contenders (labelled tasks), else empty
    checked: dict[str, float] = field(default_factory=dict)  # kind -> nll of the check's pick
    checked_picks: dict[str, str] = field(default_factory=dict)  # kind -> what it picked
    merged: dict[str, float] = field(default_factory=dict)  # kind -> nll of the merged top k

    def beats_base(self, kind: str) -> bool:
        return self.learnware[kind] < self.base

    def checked_beats_base(self, kind: str) -> bool:
        return self.checked[kind] < self.base


@dataclass(frozen=True)
class GroupRow:
    group: str
    users: int
    base: float  # perplexities (geometric means)
    random: float
    best_single: float
    learnware: dict[str, float]
    oracle: float
    gap_closed: dict[str, float | None]  # None when Random already equals Oracle
    checked: dict[str, float] = field(default_factory=dict)
    merged: dict[str, float] = field(default_factory=dict)


def contenders(
    nll: dict[str, dict[str, float]],
    accuracy: dict[str, dict[str, dict[str, float | None]]],
    picks: dict[str, dict[str, str]],
    groups: dict[str, str],
    reused: Mapping[str, Mapping[str, Reused]] | None = None,
) -> tuple[list[UserContenders], str]:
    """Per user (``nll[user][model]``, model "base" or a contributor) and the best single.

    ``accuracy[metric][user][model]`` (None, or missing, where a user has no labelled task);
    ``picks[user][kind]`` is the market's first pick; ``groups[user]`` its domain row;
    ``reused[user][kind]`` the local check (None: not run).
    """
    users = list(nll)
    learnwares = [m for m in nll[users[0]] if m != BASE_NAME]
    best_single = min(learnwares, key=lambda m: sum(nll[u][m] for u in users))
    scored = {metric: _labelled(accuracy.get(metric, {}), users) for metric in METRICS}
    best_by = {
        metric: max(learnwares, key=lambda m: sum(acc[u][m] for u in acc))
        for metric, acc in scored.items()
        if acc
    }
    rows = []
    for u in users:
        row = nll[u]
        oracle_pick = min(learnwares, key=lambda m: row[m])
        rows.append(
            UserContenders(
                user=u,
                group=groups[u],
                base=row[BASE_NAME],
                random=sum(row[m] for m in learnwares) / len(learnwares),
                best_single=row[best_single],
                learnware={k: row[p] for k, p in picks[u].items()},
                picks=dict(picks[u]),
                oracle=row[oracle_pick],
                oracle_pick=oracle_pick,
                accuracy={
                    metric: _accuracy(scored[metric][u], learnwares, best_by[metric], picks[u])
                    for metric in METRICS
                    if u in scored[metric]
                },
                **_reused((reused or {}).get(u, {})),
            )
        )
    return rows, best_single


def _reused(checks: Mapping[str, Reused]) -> dict[str, dict[str, Any]]:
    """``UserContenders``' fields of the local check, per kind (merges of one: left out)."""
    return {
        "checked": {k: r.nll for k, r in checks.items()},
        "checked_picks": {k: r.pick for k, r in checks.items()},
        "merged": {k: r.merged_nll for k, r in checks.items() if r.merged_nll is not None},
    }


def _labelled(
    accuracy: dict[str, dict[str, float | None]], users: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The users scored by this metric on every model (base and each learnware)."""
    out: dict[str, dict[str, float]] = {}
    for u in users:
        scores = accuracy.get(u, {})
        if scores and all(v is not None for v in scores.values()):
            out[u] = {m: float(v) for m, v in scores.items() if v is not None}
    return out


def _accuracy(
    acc: dict[str, float], learnwares: Sequence[str], best_single: str, picks: dict[str, str]
) -> Accuracy:
    return Accuracy(
        base=acc[BASE_NAME],
        random=sum(acc[m] for m in learnwares) / len(learnwares),
        best_single=acc[best_single],
        learnware={kind: acc[pick] for kind, pick in picks.items()},
        oracle=max(acc[m] for m in learnwares),
    )


def group_rows(rows: Sequence[UserContenders], kinds: Sequence[str]) -> list[GroupRow]:
    """One row per domain group (first-seen order) and an ``all`` row."""
    order = list(dict.fromkeys(r.group for r in rows))
    out = [_group(g, [r for r in rows if r.group == g], kinds) for g in order]
    out.append(_group("all", list(rows), kinds))
    return out


def accuracy_rows(rows: Sequence[UserContenders], kinds: Sequence[str]) -> list[AccuracyRow]:
    """Per domain group with labelled users (first-seen order) and ``all``, each metric."""
    labelled = [r for r in rows if r.accuracy]
    order = [*dict.fromkeys(r.group for r in labelled), "all"] if labelled else []
    out = []
    for group in order:
        mine = [r.accuracy for r in labelled if group in ("all", r.group)]
        for metric in METRICS:
            values = [a[metric] for a in mine if metric in a]
            if values:
                out.append(AccuracyRow(group, metric, len(values), _mean(values, kinds)))
    return out


def _mean(values: Sequence[Accuracy], kinds: Sequence[str]) -> Accuracy:
    def mean(field: Callable[[Accuracy], float]) -> float:
        return sum(field(v) for v in values) / len(values)

    return Accuracy(
        base=mean(lambda a: a.base),
        random=mean(lambda a: a.random),
        best_single=mean(lambda a: a.best_single),
        learnware={k: sum(v.learnware[k] for v in values) / len(values) for k in kinds},
        oracle=mean(lambda a: a.oracle),
    )


def _group(group: str, rows: Sequence[UserContenders], kinds: Sequence[str]) -> GroupRow:
    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    random = mean([r.random for r in rows])
    oracle = mean([r.oracle for r in rows])
    learnware = {k: mean([r.learnware[k] for r in rows]) for k in kinds}
    return GroupRow(
        group=group,
        users=len(rows),
        base=math.exp(mean([r.base for r in rows])),
        random=math.exp(random),
        best_single=math.exp(mean([r.best_single for r in rows])),
        learnware={k: math.exp(v) for k, v in learnware.items()},
        oracle=math.exp(oracle),
        gap_closed={k: gap_closed(random, learnware[k], oracle) for k in kinds},
        checked=_geometric(rows, "checked", kinds),
        merged=_geometric(rows, "merged", kinds),
    )


def _geometric(rows: Sequence[UserContenders], name: str, kinds: Sequence[str]) -> dict[str, float]:
    """Per kind, exp(mean nll) of field ``name`` over the rows, where every row has it."""
    out = {}
    for k in kinds:
        values = [getattr(r, name).get(k) for r in rows]
        if values and all(v is not None for v in values):
            out[k] = math.exp(sum(values) / len(values))
    return out


def gap_closed(random: float, learnware: float, oracle: float) -> float | None:
    """(Random - Learnware) / (Random - Oracle) on nll; None when there is no gap to close."""
    gap = random - oracle
    if gap <= 1e-12:
        return None
    return (random - learnware) / gap
