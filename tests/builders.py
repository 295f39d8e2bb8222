"""Build real, signed learnware packages for tests (checker, store, service, client).

Everything here is the real thing, only small: a peft LoRA adapter of the ``tiny`` model
trained 0 or 1 SGD steps and saved with ``save_pretrained`` (safetensors), an RKME spec made
by ``make_rkme_spec`` under the real market schema (random unit vectors stand in for MiniLM
embeddings, which would only cost time), a manifest that describes both, packaged by
``build_package`` and signed with an Ed25519 key. The usual flow::

    private, public = signing.generate_keypair()
    adapter = train_lora_adapter(home, tmp / "adapter")             # ~2 s, reuse it
    spec = write_specs(tmp / "spec.safetensors", [random_rkme_spec(rkme_schema(home))])
    package = build_learnware(tmp / "lw", adapter=adapter, spec_file=spec,
                              base=model_ref("tiny", home), private_key=private)

To make a *bad* package that is still correctly signed (what the checker must catch after
the signature holds), edit one part and rebuild: ``edit_adapter_weights`` /
``edit_adapter_config`` / ``write_raw_spec``, then ``rebuild_learnware``. To make a tampered
one, ``flip_byte`` in a built package. Nothing here touches a module-level state or the disk
outside the paths given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from shared import signing
from shared.home import Home
from shared.learnware import (
    Contributor,
    DpLedger,
    DpPart,
    DpTotal,
    Manifest,
    SpecEntry,
    build_package,
)
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, SPEC
from shared.models.refs import ModelRef
from shared.privacy import PrivacyBudget
from shared.spec.record import Specification, save_specs
from shared.spec.rkme import make_rkme_spec
from shared.spec.schema import RkmeSchema

__all__ = [
    "DELETE",
    "TRAINING_TEXTS",
    "build_learnware",
    "edit_adapter_config",
    "edit_adapter_weights",
    "flip_byte",
    "manifest_for",
    "random_rkme_spec",
    "rebuild_learnware",
    "rkme_schema",
    "train_lora_adapter",
    "write_raw_spec",
    "write_specs",
]

#: Public text for the one training step (never a holder's data).
TRAINING_TEXTS = (
    "The heart pumps blood through the arteries and veins of the body.",
    "A learnware is a model shipped with a specification of what it is good at.",
)
#: Pass as a value to ``edit_adapter_config`` to remove a key.
DELETE = object()


# ---------------------------------------------------------------- parts


def train_lora_adapter(
    home: Home,
    out_dir: Path,
    *,
    base: str = "tiny",
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 4,
    alpha: int = 8,
    steps: int = 1,
    lr: float = 0.1,
    use_dora: bool = False,
    seed: int = 0,
) -> Path:
    """A real peft LoRA adapter folder (``save_pretrained``, safetensors) for ``base``.

    ``steps=0`` leaves ``lora_B`` at zero (the adapter changes nothing); one SGD step on
    ``TRAINING_TEXTS`` makes it a real, non-trivial adapter. Deterministic for a ``seed``;
    torch's global RNG is left as it was. The folder also holds peft's README.md, which
    ``build_package`` leaves out.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from shared.models import load_causal_lm

    lm = load_causal_lm(base, home)  # a fresh copy: peft wraps the model in place
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(lm.model, config)
        if steps:
            _train(model, lm.tokenizer, steps, lr)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def _train(model: Any, tokenizer: Any, steps: int, lr: float) -> None:
    import torch

    batch = tokenizer(list(TRAINING_TEXTS), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def rkme_schema(home: Home, **overrides: Any) -> RkmeSchema:
    """The market's real RKME schema (MiniLM identity; loads the encoder once per home, ~5 s)."""
    from shared.spec.defaults import rkme_schema as default_rkme_schema

    return default_rkme_schema(home, **overrides)


def random_rkme_spec(
    schema: RkmeSchema, *, n: int = 200, epsilon: float | None = 4.0, seed: int = 0
) -> Specification:
    """A real DP RKME spec of ``n`` random unit vectors standing in for text embeddings."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, schema.input_dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return make_rkme_spec(x.astype(np.float32), schema, PrivacyBudget(epsilon), rng)


def write_specs(path: Path, specs: Sequence[Specification]) -> Path:
    """``spec.safetensors`` holding ``specs`` (one per kind), in the project's format."""
    return save_specs(path, list(specs))


def write_raw_spec(path: Path, kind: str, vector: np.ndarray, metadata: dict[str, Any]) -> Path:
    """A spec file WITHOUT validation (NaN, wrong dim, odd metadata): for negative tests.

    ``metadata`` is what ``Specification.metadata()`` returns; take one from a valid spec
    and change what the test needs.
    """
    from safetensors.numpy import save_file

    save_file(
        {kind: np.ascontiguousarray(vector)}, str(path), {f"lwm.spec.{kind}": json.dumps(metadata)}
    )
    return path


# ---------------------------------------------------------------- manifest and package


def manifest_for(
    specs: Sequence[Specification],
    base: ModelRef,
    public_key: signing.Ed25519PublicKey,
    **changes: Any,
) -> Manifest:
    """A manifest that describes ``specs`` exactly, for ``base``, signed by ``public_key``.

    The adapter is declared non-DP, so the total epsilon is None. ``changes`` replace any
    top-level field (``name``, ``domain``, ``specs``, ``base_model``, ...).
    """
    entries = tuple(_spec_entry(spec) for spec in specs)
    parts = tuple(
        DpPart(f"spec:{e.kind}", e.epsilon, e.delta, specs[i].privacy.mechanism_name)
        for i, e in enumerate(entries)
    )
    manifest = Manifest(
        name="test-learnware",
        domain="medicine",
        task="text-generation",
        description="A tiny LoRA adapter built by tests/builders.py.",
        license="Apache-2.0",
        base_model=base,
        specs=entries,
        dp=DpLedger(
            parts=(*parts, DpPart("adapter", None, 0.0, "none")),
            total=DpTotal(epsilon=None, delta=0.0, accountant="rdp"),
        ),
        contributor=Contributor(key_id=signing.key_id(public_key), name="test-hospital"),
        created_at="2026-11-27T09:46:00+00:00",
    )
    return replace(manifest, **changes)


def _spec_entry(spec: Specification) -> SpecEntry:
    epsilon = spec.privacy.epsilon
    return SpecEntry(
        kind=spec.kind,
        schema_id=spec.schema_id,
        dim=spec.dim,
        epsilon=epsilon,
        delta=spec.privacy.delta if epsilon is not None else 0.0,
        n=spec.n,
        extra={"noise_std": spec.privacy.noise_std},
    )


def build_learnware(
    out_dir: Path,
    *,
    adapter: Path | tuple[Path, Path],
    spec_file: Path,
    base: ModelRef,
    private_key: signing.Ed25519PrivateKey,
    **manifest_changes: Any,
) -> Path:
    """A signed learnware folder at new ``out_dir``; the manifest describes ``spec_file``.

    ``adapter`` is a ``save_pretrained`` folder or a ``(weights, config)`` pair.
    """
    from shared.spec.record import load_specs

    specs = load_specs(spec_file)
    manifest = manifest_for(specs, base, private_key.public_key(), **manifest_changes)
    return build_package(out_dir, adapter, spec_file, manifest, private_key).folder


def rebuild_learnware(
    package_dir: Path,
    out_dir: Path,
    private_key: signing.Ed25519PrivateKey,
    *,
    weights: Path | None = None,
    config: Path | None = None,
    spec_file: Path | None = None,
    manifest: Manifest | None = None,
) -> Path:
    """Re-package ``package_dir`` at ``out_dir`` with some parts replaced, freshly signed.

    The manifest's file hashes are recomputed, so the result verifies: the way to make a
    package whose *content* is bad while its signature is good.
    """
    return build_package(
        out_dir,
        (weights or package_dir / ADAPTER_WEIGHTS, config or package_dir / ADAPTER_CONFIG),
        spec_file or package_dir / SPEC,
        manifest or Manifest.from_json((package_dir / MANIFEST).read_bytes()),
        private_key,
    ).folder


# ---------------------------------------------------------------- edits


def edit_adapter_weights(
    src: Path, dst: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]
) -> Path:
    """Write ``edit(tensors)`` of safetensors file ``src`` (name -> torch tensor) to ``dst``."""
    from safetensors.torch import load_file, save_file

    save_file(edit(dict(load_file(str(src)))), str(dst))
    return dst


def edit_adapter_config(src: Path, dst: Path, **changes: Any) -> Path:
    """Write ``src``'s JSON with ``changes`` applied (value ``DELETE`` removes a key)."""
    config = json.loads(src.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    dst.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return dst


def flip_byte(path: Path, index: int = -1) -> None:
    """Tamper with a file in place: flip the lowest bit of one byte."""
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
