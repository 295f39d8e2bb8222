"""PAVE: the paper's parameter-vector specification, trained with DP-SGD (DESIGN §4.1).

Every party trains the same public LM with the same LoRA recipe from the same start: LoRA
on the schema's target modules of the top layers, ``lora_A`` drawn from the schema's seed
and frozen, ``lora_B`` starting at zero and the only trainable tensor. After a fixed number
of plain-SGD DP steps, the released vector is the flattened ``lora_B`` (optionally a seeded
projection of it). Because the start point is shared and public, ``lora_B`` is a noisy sum
of clipped per-sample gradients of the holder's data: texts of one domain push it the same
way, and the market compares vectors by cosine.

DP: opacus ``PrivacyEngine`` set up by ``shared.dpsgd`` (RDP accountant, Poisson sampling,
per-sample clipping at ``clip_norm``); the vector is DP by post-processing and the epsilon
recorded is the accountant's. Without DP the same code runs with noise multiplier 0
(clipping kept), so private and non-private specs stay on one scale.

Known trap (opacus#820): opacus over peft can silently not train. The peft model is built
on its final device before ``make_private``, and ``PaveRun.changed`` lets callers and tests
assert that ``lora_B`` moved.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.dpsgd import Forward, Prepare, dpsgd_steps, private_training, trim
from shared.errors import DataError, SchemaMismatch
from shared.models.device import batch_on
from shared.privacy import DPReport, PrivacyBudget
from shared.spec.frozen import LowerStates, forward_top, skeleton_memo, split_index
from shared.spec.record import Specification
from shared.spec.schema import PaveSchema

if TYPE_CHECKING:
    import torch

    from shared.models import LoadedModel

MECHANISM = "dp-sgd (opacus rdp, poisson sampling, per-sample clipping)"  # <= 64 chars


@dataclass(frozen=True)
class PaveRun:
    """A spec plus what training saw: for diagnostics and the no-silent-no-train check."""

    spec: Specification
    raw_vector: np.ndarray
    losses: tuple[float, ...]
    per_sample_grad_norms: tuple[float, ...]
    changed: bool
    #: wall seconds: "lower" (the frozen layers' pass, 0 when none ran) and "steps" (DP-SGD)
    seconds: dict[str, float] = field(default_factory=dict)


def layer_indices(num_layers: int, top_layers: int | None) -> list[int]:
    if top_layers is None or top_layers >= num_layers:
        return list(range(num_layers))
    return list(range(num_layers - top_layers, num_layers))


def raw_dim_for(
    model: Any, target_modules: Sequence[str], top_layers: int | None, rank: int
) -> int:
    """Length of the flattened ``lora_B`` for this model and recipe (no training)."""
    layers = set(layer_indices(model.config.num_hidden_layers, top_layers))
    total = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in target_modules and _layer_of(name) in layers:
            total += int(module.out_features) * rank
    if total == 0:
        raise SchemaMismatch(
            f"the model has no modules named {list(target_modules)} to put LoRA on"
        )
    return total


def pave_schema_for(model: LoadedModel, **recipe: Any) -> PaveSchema:
    """The PAVE schema for ``model`` with a recipe (defaults of ``PaveSchema`` otherwise)."""
    target = tuple(recipe.get("target_modules", PaveSchema.target_modules))
    top = recipe.get("top_layers", PaveSchema.top_layers)
    rank = int(recipe.get("rank", PaveSchema.rank))
    raw = raw_dim_for(model.model, target, top, rank)
    return PaveSchema(
        model_name=model.name,
        model_id=model.ref.model_id,
        model_sha256=model.ref.sha256,
        raw_dim=raw,
        **recipe,
    )


def run_pave(
    texts: Sequence[str],
    model: LoadedModel,
    schema: PaveSchema,
    budget: PrivacyBudget,
    progress: bool = False,
    noise_seed: int | None = None,
    lower: LowerStates | None = None,
    freeze_lower: bool = True,
) -> PaveRun:
    """Train the schema's recipe on ``texts`` and release the DP ``lora_B`` vector
    (``.spec``), with the losses, gradient norms and the change check beside it.

    When the recipe trains only the top layers, the frozen lower layers run once per text
    (``shared.spec.frozen``; ``lower`` keeps their states across calls) and the DP-SGD
    steps run the top layers only: the same spec, far cheaper. ``freeze_lower=False`` runs
    the whole model at every step instead (the naive way, for benchmarks and tests).
    ``noise_seed`` makes the DP noise reproducible (tests, benchmarks); leave it None for
    real releases so the noise comes from a fresh generator.
    """
    if model.ref.sha256 != schema.model_sha256:
        raise SchemaMismatch(
            f"PAVE schema expects model {schema.model_id} with weights {schema.model_sha256[:12]}, "
            f"got {model.ref.model_id} with {model.ref.sha256[:12]}"
        )
    if not texts:
        raise DataError("cannot make a spec of no texts: the data is empty")
    ids, mask = _tokenize(texts, model.tokenizer, schema.max_tokens)
    split = split_index(model.model, schema.top_layers) if freeze_lower else None
    peft_model = _lora_model(model.model, schema, split or 0)
    lora_b = _lora_b_params(peft_model)
    before = _flatten(lora_b)
    inputs: tuple[torch.Tensor, ...] = ()
    head = None
    started = time.perf_counter()
    if split is not None:
        inputs = ((lower or LowerStates()).states(model, texts, ids, mask, split),)
        head = model.model.get_output_embeddings().weight.detach()
    seconds = {"lower": time.perf_counter() - started}
    losses, norms, report = _train(
        peft_model, lora_b, ids, mask, schema, budget, progress, noise_seed, inputs, head
    )
    seconds["steps"] = time.perf_counter() - started - seconds["lower"]
    raw = _flatten(lora_b)
    changed = bool(np.any(raw != before))
    vector = _project(raw, schema)
    spec = Specification(
        kind="pave", schema_id=schema.schema_id, vector=vector, n=len(texts), privacy=report
    )
    return PaveRun(spec, raw, tuple(losses), tuple(norms), changed, seconds)


def _layer_of(module_name: str) -> int | None:
    parts = module_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _tokenize(
    texts: Sequence[str], tokenizer: Any, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(
        list(texts),
        max_length=max_tokens,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if int(mask.sum(dim=1).min()) < 2:
        raise DataError("every text needs at least two tokens to make a PAVE spec")
    return ids, mask


def _lora_model(base: Any, schema: PaveSchema, frozen_below: int = 0) -> Any:
    """A private copy of ``base`` with the schema's frozen-A, zero-B LoRA adapters, in
    float32 on ``base``'s device (specs stay comparable across machines:
    ``shared.models.device``); A is drawn on the CPU, so every device starts alike.
    The ``frozen_below`` lowest layers are left out of the copy (they pass their input
    through: the caller feeds their kept output as ``inputs_embeds``)."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=schema.rank,
        lora_alpha=schema.alpha,
        target_modules=list(schema.target_modules),
        layers_to_transform=layer_indices(base.config.num_hidden_layers, schema.top_layers),
        lora_dropout=0.0,
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skeleton = copy.deepcopy(base, skeleton_memo(base, frozen_below))
        peft_model = get_peft_model(skeleton.to(dtype=torch.float32), config)
    generator = torch.Generator().manual_seed(schema.seed)
    for name, param in sorted(peft_model.named_parameters()):
        if "lora_A" in name:
            with torch.no_grad():
                fan_in = param.shape[1]
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            param.requires_grad_(False)
        elif "lora_B" in name:
            with torch.no_grad():
                param.zero_()
            param.requires_grad_(True)
        else:
            param.requires_grad_(False)
    peft_model.train()
    return peft_model


def _lora_b_params(peft_model: Any) -> list[torch.nn.Parameter]:
    return [p for name, p in sorted(peft_model.named_parameters()) if "lora_B" in name]


def _flatten(params: Sequence[torch.nn.Parameter]) -> np.ndarray:
    return np.concatenate([p.detach().cpu().numpy().ravel() for p in params]).astype(np.float32)


def _train(
    peft_model: Any,
    lora_b: list[torch.nn.Parameter],
    ids: torch.Tensor,
    mask: torch.Tensor,
    schema: PaveSchema,
    budget: PrivacyBudget,
    progress: bool,
    noise_seed: int | None,
    inputs: tuple[torch.Tensor, ...] = (),
    head: torch.Tensor | None = None,
) -> tuple[list[float], list[float], DPReport]:
    """``schema.steps`` plain-SGD DP steps (``shared.dpsgd``), each followed by the L1 pull;
    with ``inputs`` (the kept lower-layer states) and the LM ``head`` only the top
    layers run."""
    import torch

    losses: list[float] = []
    norms: list[float] = []
    bar = _progress_bar(schema.steps, progress)
    with private_training(
        peft_model,
        torch.optim.SGD(lora_b, lr=schema.lr),
        ids,
        mask,
        batch_size=schema.batch_size,
        budget=budget,
        clip_norm=schema.clip_norm,
        calibration_steps=schema.steps,
        noise_seed=noise_seed,
        inputs=inputs,
    ) as dp:
        prepare: Prepare = partial(batch_on, lora_b[0])
        forward: Forward | None = None
        if head is not None:  # only the top layers run: drop the padding columns no text uses
            prepare = lambda i, m: batch_on(lora_b[0], *trim(i, m))  # noqa: E731
            forward = partial(forward_top, head)
        for step in dpsgd_steps(dp, lora_b, schema.steps, prepare, forward):
            losses.append(step.loss)
            norms.extend(step.norms)
            _l1_prox(lora_b, schema.lr * schema.l1)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step.loss:.3f}")
    if bar is not None:
        bar.close()
    epsilon = float(dp.accountant.get_epsilon(budget.delta)) if budget.is_private else None
    report = DPReport(
        mechanism=MECHANISM if budget.is_private else "none (clipped SGD, no noise)",
        epsilon=epsilon,
        delta=budget.delta,
        noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate,
        steps=schema.steps,
        details={
            "clip_norm": schema.clip_norm,
            "expected_batch": ids.shape[0] * dp.sample_rate,
            "lr": schema.lr,
        },
    )
    return losses, norms, report


def _l1_prox(params: Sequence[torch.nn.Parameter], threshold: float) -> None:
    """Soft-threshold towards the start point (zero): data-independent, so free under DP."""
    if threshold <= 0:
        return
    import torch

    with torch.no_grad():
        for p in params:
            p.copy_(torch.sign(p) * torch.clamp(p.abs() - threshold, min=0.0))


def _project(raw: np.ndarray, schema: PaveSchema) -> np.ndarray:
    if schema.projection_dim is None:
        return raw
    rng = np.random.default_rng(schema.seed + 1)
    matrix = rng.normal(
        0.0, 1.0 / math.sqrt(schema.projection_dim), size=(raw.shape[0], schema.projection_dim)
    )
    return (raw.astype(np.float64) @ matrix).astype(np.float32)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="PAVE spec (DP-SGD steps)", unit="step")
