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

Gap closed = (Random - Learnware) / (Random - Oracle): 1 is the oracle, 0 no better than
chance (the paper reports 90% in finance, 62% medical, 40% maths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

BASE_NAME = "base"


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
    accuracy: dict[str, float | None]  # contender -> accuracy (closed tasks), else None

    def beats_base(self, kind: str) -> bool:
        return self.learnware[kind] < self.base


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


def contenders(
    nll: dict[str, dict[str, float]],
    accuracy: dict[str, dict[str, float | None]],
    picks: dict[str, dict[str, str]],
    groups: dict[str, str],
) -> tuple[list[UserContenders], str]:
    """Per user (``nll[user][model]``, model "base" or a contributor) and the best single.

    ``picks[user][kind]`` is the market's first pick; ``groups[user]`` its domain row.
    """
    users = list(nll)
    learnwares = [m for m in nll[users[0]] if m != BASE_NAME]
    best_single = min(learnwares, key=lambda m: sum(nll[u][m] for u in users))
    rows = []
    for u in users:
        row = nll[u]
        oracle_pick = min(learnwares, key=lambda m: row[m])
        acc = accuracy.get(u, {})
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
                accuracy=_accuracies(acc, learnwares, best_single, picks[u], oracle_pick),
            )
        )
    return rows, best_single


def _accuracies(
    acc: dict[str, float | None],
    learnwares: Sequence[str],
    best_single: str,
    picks: dict[str, str],
    oracle_pick: str,
) -> dict[str, float | None]:
    if not acc or any(acc.get(m) is None for m in [BASE_NAME, *learnwares]):
        return {}
    values = [acc[m] for m in learnwares]
    out: dict[str, float | None] = {
        "base": acc[BASE_NAME],
        "random": sum(v for v in values if v is not None) / len(values),
        "best_single": acc[best_single],
        "oracle": acc[oracle_pick],
    }
    for kind, pick in picks.items():
        out[f"learnware:{kind}"] = acc[pick]
    return out


def group_rows(rows: Sequence[UserContenders], kinds: Sequence[str]) -> list[GroupRow]:
    """One row per domain group (first-seen order) and an ``all`` row."""
    order = list(dict.fromkeys(r.group for r in rows))
    out = [_group(g, [r for r in rows if r.group == g], kinds) for g in order]
    out.append(_group("all", list(rows), kinds))
    return out


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
    )


def gap_closed(random: float, learnware: float, oracle: float) -> float | None:
    """(Random - Learnware) / (Random - Oracle) on nll; None when there is no gap to close."""
    gap = random - oracle
    if gap <= 1e-12:
        return None
    return (random - learnware) / gap
