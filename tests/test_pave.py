"""PAVE under opacus: lora_B really trains, epsilon is the accountant's, errors are clear."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared.data import load_domain
from shared.errors import DataError, SchemaMismatch
from shared.models import load_causal_lm
from shared.privacy import PrivacyBudget, rdp_epsilon
from shared.spec.defaults import pave_schema
from shared.spec.frozen import LowerStates
from shared.spec.pave import pave_schema_for, run_pave
from shared.spec.ranking import rank

RECIPE = {"batch_size": 64, "steps": 3, "clip_norm": 0.05, "lr": 0.05, "max_tokens": 32}


@pytest.fixture(scope="module")
def tiny(lwm_home):
    return load_causal_lm("tiny", lwm_home)


@pytest.fixture(scope="module")
def schema(tiny):
    return pave_schema_for(tiny, **RECIPE)


@pytest.fixture(scope="module")
def texts():
    return load_domain("finance")[:80]


def test_lora_b_changes_under_opacus(tiny, schema, texts):
    """opacus over peft can silently not train (opacus#820): lora_B must move."""
    run = run_pave(texts, tiny, schema, PrivacyBudget(4.0), noise_seed=1)
    assert run.changed
    assert np.abs(run.raw_vector).max() > 0
    assert len(run.losses) == schema.steps
    assert run.per_sample_grad_norms, "opacus computed no per-sample gradients"
    assert run.spec.dim == schema.spec_dim and run.spec.schema_id == schema.schema_id


def test_epsilon_reported_is_the_accountants(tiny, schema, texts):
    run = run_pave(texts, tiny, schema, PrivacyBudget(2.0, 1e-5), noise_seed=2)
    report = run.spec.privacy
    recomputed = rdp_epsilon([(report.noise_multiplier, report.sample_rate, report.steps)], 1e-5)
    assert report.epsilon == pytest.approx(recomputed, rel=1e-9)
    assert 1.9 < report.epsilon <= 2.0
    assert report.sample_rate == 0.5  # 80 texts, batches of 64: opacus' rate 1/len(loader)
    assert report.details["clip_norm"] == schema.clip_norm


def test_noise_is_what_makes_runs_differ(tiny, schema, texts):
    clear_a = run_pave(texts, tiny, schema, PrivacyBudget(None), noise_seed=3)
    clear_b = run_pave(texts, tiny, schema, PrivacyBudget(None), noise_seed=4)
    noisy = run_pave(texts, tiny, schema, PrivacyBudget(1.0), noise_seed=3)
    assert clear_a.spec.privacy.epsilon is None
    # Without noise only the Poisson batches differ: the direction is nearly the same.
    cos_clear = _cos(clear_a.raw_vector, clear_b.raw_vector)
    cos_noisy = _cos(clear_a.raw_vector, noisy.raw_vector)
    assert cos_clear > 0.8
    assert cos_noisy < cos_clear


def test_seeded_projection_keeps_cosines(tiny, texts):
    full = pave_schema_for(tiny, **RECIPE)
    projected = dataclasses.replace(full, projection_dim=256)
    a = run_pave(texts[:40], tiny, projected, PrivacyBudget(None), noise_seed=5)
    b = run_pave(load_domain("math")[:40], tiny, projected, PrivacyBudget(None), noise_seed=5)
    assert a.spec.dim == 256
    exact = _cos(a.raw_vector, b.raw_vector)
    approx = _cos(a.spec.vector, b.spec.vector)
    assert abs(exact - approx) < 0.15


def test_wrong_model_and_empty_data_are_clear_errors(tiny, schema):
    other = dataclasses.replace(schema, model_sha256="0" * 64)
    with pytest.raises(SchemaMismatch, match="weights"):
        run_pave(["some text here"], tiny, other, PrivacyBudget(4.0))
    with pytest.raises(DataError, match="empty"):
        run_pave([], tiny, schema, PrivacyBudget(4.0))


def test_frozen_lower_layers_give_the_whole_models_spec(tiny, texts):
    """LoRA on the top 2 of 4 layers: the lower two run once per text, the DP-SGD steps run
    the top only, and the released vector is the naive whole-model run's (full batches, one
    noise seed). Kept states serve a second spec without a second lower pass."""
    schema = pave_schema_for(tiny, **{**RECIPE, "batch_size": 128, "top_layers": 2})
    lower = LowerStates()
    naive = run_pave(texts, tiny, schema, PrivacyBudget(4.0), noise_seed=6, freeze_lower=False)
    split = run_pave(texts, tiny, schema, PrivacyBudget(4.0), noise_seed=6, lower=lower)
    kept = len(lower._rows)
    again = run_pave(texts[:40], tiny, schema, PrivacyBudget(4.0), noise_seed=6, lower=lower)
    assert split.changed and again.changed
    np.testing.assert_allclose(split.raw_vector, naive.raw_vector, rtol=1e-4, atol=1e-7)
    assert split.losses == pytest.approx(naive.losses, rel=1e-5)
    assert kept == len(texts) and len(lower._rows) == kept
    assert naive.seconds["lower"] < 0.01 and split.seconds["steps"] > 0


def test_schema_names_the_model_and_its_layers(tiny, schema, texts, lwm_home):
    """Specs of another layer split are refused like specs of another model; a built-in
    model's id selects its recipe as its short name does."""
    top = dataclasses.replace(schema, top_layers=2)
    assert top.schema_id != schema.schema_id
    holder = run_pave(texts[:40], tiny, top, PrivacyBudget(None), noise_seed=7).spec
    user = run_pave(texts[40:], tiny, schema, PrivacyBudget(None), noise_seed=7).spec
    with pytest.raises(SchemaMismatch, match="different schemas"):
        rank(user, [holder])
    assert pave_schema(lwm_home, "tiny-llama-v1") == pave_schema(lwm_home, "tiny")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
