"""The default market schema: which encoder and spec model, with which recipe.

The recipes are chosen from measurements (``benchmarks/bench_identification.py``, figures
in README): they are the settings that identified the right domain best at epsilon = 4 on
the demo corpora within a CPU time budget. A market may publish other values; clients
always make specs under the schema the market publishes.
"""

from __future__ import annotations

from typing import Any

from shared.home import Home
from shared.spec.schema import MarketSchema, PaveSchema, RkmeSchema

#: PAVE recipe per spec model. Small trainable dimension, clip near the per-sample
#: gradient norms, full-data Poisson batches and plain SGD (DESIGN §4.4).
PAVE_RECIPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "target_modules": ("v_proj",),
        "top_layers": None,
        "rank": 4,
        "steps": 5,
        "lr": 0.05,
        "batch_size": 512,
        "max_tokens": 64,
        "clip_norm": 0.05,
    },
    # The real model (issue 13): the lower 28 of 30 layers run once per text
    # (``shared.spec.frozen``), so the cost is one no-grad pass plus one full-batch step of
    # the top two layers and the 49k-word head. 16 tokens per text and one step keep a
    # user's 1,000 texts near a minute on 2 cores (benchmarks/bench_pave_cost.py); v_proj
    # rank 1 on 2 layers is 384 dims (DP noise in a cosine grows with the dimension).
    # Per-sample gradient norms measured 0.21/0.29/0.42 (p10/50/90): a clip of 0.05 clips
    # every text to one length, which keeps the signal-to-noise of the plain sum.
    "smollm2-135m": {
        "target_modules": ("v_proj",),
        "top_layers": 2,
        "rank": 1,
        "steps": 1,
        "lr": 0.05,
        "batch_size": 1024,
        "max_tokens": 16,
        "clip_norm": 0.05,
    },
}

RKME_DEFAULTS: dict[str, Any] = {"dim": 512, "gamma": 0.5}


def rkme_schema(home: Home, **overrides: Any) -> RkmeSchema:
    from shared.models import load_encoder

    encoder = load_encoder(home)
    params = {**RKME_DEFAULTS, **overrides}
    return RkmeSchema(encoder_id=encoder.ref.model_id, encoder_sha256=encoder.ref.sha256, **params)


def pave_schema(home: Home, model: str = "tiny", **overrides: Any) -> PaveSchema:
    from shared.models import load_causal_lm
    from shared.models.causal import builtin_name
    from shared.spec.pave import pave_schema_for

    known = builtin_name(model) or model  # a built-in model's id names it as well
    recipe = {**PAVE_RECIPES.get(known, PAVE_RECIPES["tiny"]), **overrides}
    return pave_schema_for(load_causal_lm(model, home), **recipe)


def default_schema(
    home: Home,
    pave_model: str = "tiny",
    kinds: tuple[str, ...] = ("rkme", "pave"),
    default_kind: str = "rkme",
    pave_overrides: dict[str, Any] | None = None,
) -> MarketSchema:
    """Build the schema from the models available here (loads them once to hash them).

    ``pave_model`` is a built-in name or id, or a local folder; ``pave_overrides`` change
    fields of its recipe (benchmarks that choose one by measurement)."""
    return MarketSchema(
        rkme=rkme_schema(home) if "rkme" in kinds else None,
        pave=pave_schema(home, pave_model, **(pave_overrides or {})) if "pave" in kinds else None,
        default_kind=default_kind,
    )
