"""The specification record and its file format.

A spec is a float32 vector plus the metadata needed to compare it honestly: its kind, the
schema it was made under, how many texts it summarises (public), and the DP report of its
release. On disk and on the wire it is a safetensors file: one tensor per spec, named by
kind, with the metadata as JSON in the safetensors header (``lwm.spec.<kind>``). No pickle.
A file may hold several specs of different kinds (a learnware's ``spec.safetensors``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import SchemaMismatch, SpecError
from shared.privacy import DPReport
from shared.spec.schema import KINDS, SPEC_FORMAT_VERSION, SpecSchema

MAX_SPEC_DIM = 1 << 20
_META_PREFIX = "lwm.spec."


@dataclass(frozen=True, eq=False)
class Specification:
    """A released (already private, if DP) specification. Safe to publish."""

    kind: str
    schema_id: str
    vector: np.ndarray
    n: int
    privacy: DPReport
    format_version: int = SPEC_FORMAT_VERSION
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"unknown spec kind {self.kind!r}; known kinds: {', '.join(KINDS)}")
        if self.format_version != SPEC_FORMAT_VERSION:
            raise SpecError(
                f"spec format version {self.format_version!r} is not supported "
                f"(this build reads version {SPEC_FORMAT_VERSION})"
            )
        vector = np.asarray(self.vector)
        if vector.ndim != 1 or not (1 <= vector.shape[0] <= MAX_SPEC_DIM):
            raise SpecError(
                f"a spec vector must be 1-D with 1..{MAX_SPEC_DIM} entries, got {vector.shape}"
            )
        if not np.issubdtype(vector.dtype, np.floating):
            raise SpecError(f"a spec vector must hold floats, got {vector.dtype}")
        vector = vector.astype(np.float32)
        if not np.all(np.isfinite(vector)):
            raise SpecError("a spec vector must be finite (found NaN or inf)")
        if self.n < 1:
            raise SpecError(f"a spec must summarise at least one text, got n={self.n!r}")
        vector.setflags(write=False)
        object.__setattr__(self, "vector", vector)

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    @property
    def expected_noise_sq_norm(self) -> float:
        """E||noise||² of the DP noise in the vector: the bias RKME distances subtract."""
        std = self.privacy.noise_std
        return float(self.dim * std * std) if math.isfinite(std) else 0.0

    def check_against(self, schema: SpecSchema) -> None:
        """Raise unless this spec was made under ``schema`` and has its shape."""
        if self.kind != schema.kind:
            raise SchemaMismatch(
                f"spec kind {self.kind!r} does not match schema kind {schema.kind!r}"
            )
        if self.schema_id != schema.schema_id:
            raise SchemaMismatch(
                f"spec was made under schema {self.schema_id}, the market uses {schema.schema_id}: "
                "fetch the current schema and make the spec again"
            )
        if self.dim != schema.spec_dim:
            raise SpecError(
                f"spec has {self.dim} entries, schema {schema.schema_id} expects {schema.spec_dim}"
            )

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "schema_id": self.schema_id,
            "format_version": self.format_version,
            "dim": self.dim,
            "n": self.n,
            "privacy": self.privacy.to_dict(),
            "meta": self.meta,
        }

    @classmethod
    def from_metadata(cls, raw: dict[str, Any], vector: np.ndarray) -> Specification:
        try:
            spec = cls(
                kind=str(raw["kind"]),
                schema_id=str(raw["schema_id"]),
                vector=vector,
                n=int(raw["n"]),
                privacy=DPReport.from_dict(raw["privacy"]),
                format_version=int(raw.get("format_version", -1)),
                meta=dict(raw.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed spec metadata: {exc!r}") from exc
        if "dim" in raw and int(raw["dim"]) != spec.dim:
            raise SpecError(f"spec metadata says dim {raw['dim']}, the vector has {spec.dim}")
        return spec

    def to_bytes(self) -> bytes:
        return specs_to_bytes([self])

    @classmethod
    def from_bytes(cls, data: bytes) -> Specification:
        specs = specs_from_bytes(data)
        if len(specs) != 1:
            raise SpecError(f"expected one spec in the file, found {len(specs)}")
        return specs[0]

    def save(self, path: str | Path) -> Path:
        return save_specs(path, [self])

    @classmethod
    def load(cls, path: str | Path) -> Specification:
        return cls.from_bytes(_read(path))


def specs_to_bytes(specs: list[Specification]) -> bytes:
    from safetensors.numpy import save

    kinds = [s.kind for s in specs]
    if not specs or len(set(kinds)) != len(kinds):
        raise SpecError(f"a spec file holds one spec per kind, got kinds {kinds}")
    tensors = {s.kind: np.ascontiguousarray(s.vector) for s in specs}
    metadata = {_META_PREFIX + s.kind: json.dumps(s.metadata(), sort_keys=True) for s in specs}
    return bytes(save(tensors, metadata=metadata))


def specs_from_bytes(data: bytes) -> list[Specification]:
    """Parse a spec file; anything malformed becomes ``SpecError`` (never a crash)."""
    from safetensors.numpy import load

    try:
        tensors = load(data)
        metadata = _safetensors_metadata(data)
    except Exception as exc:  # safetensors raises several types for corrupt input
        raise SpecError(f"not a readable spec file (safetensors): {exc}") from exc
    specs = []
    for name in sorted(tensors):
        raw_meta = metadata.get(_META_PREFIX + name)
        if raw_meta is None:
            raise SpecError(f"spec tensor {name!r} has no metadata")
        try:
            parsed = json.loads(raw_meta)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec metadata of {name!r} is not JSON: {exc}") from exc
        except RecursionError:  # a hostile file nests thousands deep
            raise SpecError(f"spec metadata of {name!r} is nested too deeply") from None
        spec = Specification.from_metadata(parsed, tensors[name])
        if spec.kind != name:
            raise SpecError(f"spec tensor {name!r} holds metadata of kind {spec.kind!r}")
        specs.append(spec)
    if not specs:
        raise SpecError("the spec file holds no spec")
    return specs


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__", {}))


def save_specs(path: str | Path, specs: list[Specification]) -> Path:
    """Write atomically (``shared.files``) so a crash never leaves half a spec."""
    from shared.files import write_atomically

    target = Path(path)
    write_atomically(target, specs_to_bytes(specs))
    return target


def load_specs(path: str | Path) -> list[Specification]:
    return specs_from_bytes(_read(path))


def _read(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    return p.read_bytes()
