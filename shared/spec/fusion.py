"""Rank fusion: one ranking from the distances of several spec kinds of the same data.

A learnware may carry an RKME and a PAVE spec, and a user may send both of its own; each
kind ranks the candidates on its own scale (debiased MMD², 1 - cosine). Fusion needs no
common scale:

- ``rrf``, reciprocal rank fusion: a candidate scores sum 1/(RRF_K + rank) over the kinds
  (Cormack et al., 2009; RRF_K = 60 as there); a tie (first under one kind, second under
  the other) goes to the first kind's order, the query's own kind;
- ``zsum``: each kind's distances are z-scored over the candidates and summed.

A candidate without a kind's spec (NaN) gets nothing from that kind under ``rrf`` and the
largest z of that kind under ``zsum`` (as far as the farthest one seen). The fused value is
a distance (lower is nearer) so fused rankings go wherever single-kind ones go. Which one
the market uses is measured on the cross-source benchmark (README).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.errors import SpecError

RRF_K = 60.0
FUSIONS = ("rrf", "zsum")
DEFAULT_RANKING = "rkme"
"""How the market ranks a search that sends several kinds, unless it asks: the winner of
the cross-source benchmark (README). RKME alone won: at epsilon 4 on the users both kinds
share, top-1 93% (30 texts) and 100% (100) against zsum 93%/93%, rrf 79%/79% and PAVE on
the tiny model 50%/71%; fusion only mixes in PAVE's errors while PAVE is that weak."""


def fuse(distance_sets: Sequence[np.ndarray], method: str) -> np.ndarray:
    """Fused distances over the last axis of same-shaped arrays (one per kind)."""
    if method not in FUSIONS:
        raise SpecError(f"unknown rank fusion {method!r}; use {', '.join(FUSIONS)}")
    stacked = np.stack([np.asarray(d, dtype=np.float64) for d in distance_sets])
    if method == "rrf":
        ranks = _ranks(stacked)
        tie_break = 1e-9 * np.nan_to_num(ranks[0], nan=ranks.shape[-1] + 1.0)
        return -np.nansum(1.0 / (RRF_K + ranks), axis=0) + tie_break
    return np.sum(_zscores(stacked), axis=0)


def _ranks(d: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis; NaN (no spec of that kind) ranks as NaN."""
    filled = np.where(np.isnan(d), np.inf, d)
    ranks = np.argsort(np.argsort(filled, axis=-1, kind="stable"), axis=-1) + 1.0
    return np.where(np.isnan(d), np.nan, ranks)


def _zscores(d: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(d, axis=-1, keepdims=True)
        std = np.nanstd(d, axis=-1, keepdims=True)
        z = np.where(std > 0, (d - mean) / np.where(std > 0, std, 1.0), 0.0)
    worst = np.nanmax(np.where(np.isnan(z), -np.inf, z), axis=-1, keepdims=True)
    return np.where(np.isnan(d), worst, z)
