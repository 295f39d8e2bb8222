"""Public parameters of the specification kinds: what the market publishes in GetSchema.

Two specs are comparable only when they were made under the very same parameters, so each
schema has an id derived from all of them (a hash of its canonical JSON). A spec records
the id it was made under; comparing or submitting a spec of another id is refused with
``SchemaMismatch``. Adding a parameter changes the id, which is what we want.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from shared.canonical import canonical_json
from shared.errors import InvalidInput, SchemaMismatch

SPEC_FORMAT_VERSION = 1
KINDS = ("rkme", "pave")


def _schema_id(kind: str, params: dict[str, Any]) -> str:
    payload = canonical_json({"kind": kind, "format": SPEC_FORMAT_VERSION, "params": params})
    return f"{kind}-{hashlib.sha256(payload).hexdigest()[:16]}"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInput(message)


@dataclass(frozen=True)
class RkmeSchema:
    """RKME over sentence embeddings with random Fourier features (DESIGN §4.2).

    ``dim`` is the number of features D (D/2 frequencies, cos and sin of each), ``gamma``
    the Gaussian kernel's exp(-gamma·||x-y||²) on L2-normalised embeddings, ``seed`` the
    public seed of the frequencies. Noise under DP grows with D while the gap between domain
    means does not, so D stays modest (512 measured best at epsilon 4).
    """

    kind: ClassVar[str] = "rkme"
    encoder_id: str
    encoder_sha256: str
    input_dim: int = 384
    dim: int = 512
    gamma: float = 0.5
    seed: int = 20261127

    def __post_init__(self) -> None:
        _require(
            self.dim >= 2 and self.dim % 2 == 0, f"rkme dim must be even and >= 2, got {self.dim!r}"
        )
        _require(self.input_dim >= 1, f"rkme input_dim must be >= 1, got {self.input_dim!r}")
        _require(
            math.isfinite(self.gamma) and self.gamma > 0,
            f"rkme gamma must be > 0, got {self.gamma!r}",
        )
        _require(bool(self.encoder_id), "rkme encoder_id must not be empty")

    @property
    def spec_dim(self) -> int:
        return self.dim

    @property
    def schema_id(self) -> str:
        return _schema_id(self.kind, self.params())

    def params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PaveSchema:
    """PAVE: the change of frozen-A LoRA ``lora_B`` weights after a fixed DP-SGD recipe.

    Everyone trains the same public model (``model_name`` resolved locally, checked against
    ``model_sha256``) with the same seed-initialised ``lora_A`` on ``target_modules`` of the
    top ``top_layers`` layers (None: all), for ``steps`` plain-SGD steps at learning rate
    ``lr`` on Poisson batches of expected size ``batch_size`` with per-sample clip norm
    ``clip_norm``. ``l1`` pulls ``lora_B`` back to zero after each step (data-independent, so
    free under DP). ``dim`` is the released vector's length: the flattened ``lora_B`` or,
    with ``projection_dim``, a seeded Gaussian projection of it (cosines kept within a few %).
    Per-sample gradients of LoRA-B are small (0.002-0.7 measured): a clip norm near their
    median keeps the signal, opacus' default of 1.0 drowns it in noise.
    """

    kind: ClassVar[str] = "pave"
    model_name: str
    model_id: str
    model_sha256: str
    raw_dim: int
    target_modules: tuple[str, ...] = ("v_proj",)
    top_layers: int | None = None
    rank: int = 4
    alpha: int = 8
    steps: int = 5
    lr: float = 0.05
    batch_size: int = 128
    max_tokens: int = 64
    clip_norm: float = 0.05
    l1: float = 0.0
    seed: int = 20261127
    projection_dim: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # from JSON
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _require(bool(self.target_modules), "pave target_modules must not be empty")
        _require(self.rank >= 1, f"pave rank must be >= 1, got {self.rank!r}")
        _require(self.steps >= 1, f"pave steps must be >= 1, got {self.steps!r}")
        _require(self.batch_size >= 1, f"pave batch_size must be >= 1, got {self.batch_size!r}")
        _require(self.max_tokens >= 2, f"pave max_tokens must be >= 2, got {self.max_tokens!r}")
        _require(self.raw_dim >= 1, f"pave raw_dim must be >= 1, got {self.raw_dim!r}")
        _require(
            self.top_layers is None or self.top_layers >= 1,
            f"pave top_layers must be None or >= 1, got {self.top_layers!r}",
        )
        for name in ("lr", "clip_norm", "alpha"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, f"pave {name} must be > 0, got {value!r}")
        _require(math.isfinite(self.l1) and self.l1 >= 0, f"pave l1 must be >= 0, got {self.l1!r}")
        _require(
            self.projection_dim is None or self.projection_dim >= 1,
            f"pave projection_dim must be None or >= 1, got {self.projection_dim!r}",
        )

    @property
    def spec_dim(self) -> int:
        return self.projection_dim if self.projection_dim is not None else self.raw_dim

    @property
    def schema_id(self) -> str:
        return _schema_id(self.kind, self.params())

    def params(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["target_modules"] = list(self.target_modules)
        return raw


SpecSchema = RkmeSchema | PaveSchema
_SCHEMA_CLASSES: dict[str, type[RkmeSchema] | type[PaveSchema]] = {
    "rkme": RkmeSchema,
    "pave": PaveSchema,
}


def schema_from_params(kind: str, params: dict[str, Any]) -> SpecSchema:
    """Rebuild a kind's schema from its published parameters, rejecting unknown keys."""
    cls = _SCHEMA_CLASSES.get(kind)
    if cls is None:
        raise InvalidInput(f"unknown spec kind {kind!r}; known kinds: {', '.join(KINDS)}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidInput(f"unknown {kind} schema parameters: {', '.join(unknown)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise InvalidInput(f"incomplete {kind} schema: {exc}") from exc


@dataclass(frozen=True)
class MarketSchema:
    """The set of spec kinds a market accepts, and which one it ranks by default."""

    rkme: RkmeSchema | None = None
    pave: PaveSchema | None = None
    default_kind: str = "rkme"

    def __post_init__(self) -> None:
        if self.rkme is None and self.pave is None:
            raise InvalidInput("a market schema needs at least one spec kind")
        if self.default_kind not in self.kinds:
            raise InvalidInput(
                f"default kind {self.default_kind!r} is not among the accepted kinds {self.kinds}"
            )

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if getattr(self, k) is not None)

    def for_kind(self, kind: str) -> SpecSchema:
        schema = getattr(self, kind, None) if kind in KINDS else None
        if schema is None:
            raise SchemaMismatch(
                f"this market does not accept {kind!r} specs; it accepts: {', '.join(self.kinds)}"
            )
        return schema

    def to_dict(self) -> dict[str, Any]:
        return {
            "default_kind": self.default_kind,
            "kinds": {k: self.for_kind(k).params() for k in self.kinds},
        }

    def to_json(self) -> str:
        return canonical_json(self.to_dict()).decode("utf-8")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MarketSchema:
        kinds = raw.get("kinds")
        if not isinstance(kinds, dict):
            raise InvalidInput("market schema JSON needs a 'kinds' object")
        built = {kind: schema_from_params(kind, params) for kind, params in kinds.items()}
        return cls(
            rkme=built.get("rkme"),  # type: ignore[arg-type]
            pave=built.get("pave"),  # type: ignore[arg-type]
            default_kind=str(raw.get("default_kind", "rkme")),
        )

    @classmethod
    def from_json(cls, text: str) -> MarketSchema:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"market schema is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)
