"""What a learnware directory may contain, and how large each part may be (DESIGN §5).

One allow-list used by building, verifying, packing and unpacking, so the four cannot drift
apart: exactly these five regular files, nothing else, no sub-folders, no links, nothing
executable, no pickle anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InvalidInput

FORMAT_VERSION = 1

MANIFEST = "manifest.json"
SIGNATURE = "signature"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
SPEC = "spec.safetensors"

#: Files hashed into the manifest (everything but the manifest and the signature).
PAYLOAD_FILES: frozenset[str] = frozenset({ADAPTER_WEIGHTS, ADAPTER_CONFIG, SPEC})
#: Every file of a learnware directory or tar, and nothing else.
PACKAGE_FILES: frozenset[str] = PAYLOAD_FILES | {MANIFEST, SIGNATURE}

#: Suffixes of formats that may unpickle (run code) on load; named in errors so the fix is clear.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")

SIGNATURE_BYTES = 64

_MIB = 1024 * 1024


@dataclass(frozen=True)
class PackageLimits:
    """Byte limits per file. The market publishes its own in ``GetSchema``'s ``Limits``.

    Defaults fit LoRA adapters of models up to ~8B at moderate rank and PAVE/RKME specs.
    """

    max_adapter_bytes: int = 512 * _MIB
    max_spec_bytes: int = 64 * _MIB
    max_manifest_bytes: int = 256 * 1024
    max_config_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_adapter_bytes",
            "max_spec_bytes",
            "max_manifest_bytes",
            "max_config_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInput(f"PackageLimits.{name} must be a positive int, got {value!r}")

    def max_bytes(self, name: str) -> int:
        """The limit for package file ``name``."""
        return {
            ADAPTER_WEIGHTS: self.max_adapter_bytes,
            ADAPTER_CONFIG: self.max_config_bytes,
            SPEC: self.max_spec_bytes,
            MANIFEST: self.max_manifest_bytes,
            SIGNATURE: SIGNATURE_BYTES,
        }[name]

    @property
    def max_package_bytes(self) -> int:
        """All files at their limits plus tar headers and padding (generous)."""
        return sum(self.max_bytes(name) for name in PACKAGE_FILES) + 64 * 1024


def is_pickle_like(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def refusal(name: str) -> str | None:
    """Why ``name`` may not be in a package, or None if it may (it is on the allow-list)."""
    if name in PACKAGE_FILES:
        return None
    if is_pickle_like(name):
        return f"{name!r}: pickle-like file refused (no pickle anywhere; use safetensors)"
    return f"{name!r}: unexpected file; a learnware holds only {sorted(PACKAGE_FILES)}"
