"""Public identities of models: names, ids and weight hashes, and the sidecar that caches them.

A market schema names each base or spec model by ``model_id`` and the sha256 of its weights,
so a spec made with other weights (another conversion, a fine-tuned copy) is refused rather
than silently compared. Hashing 135M parameters takes about a second, so the hash is stored
next to the weights in ``lwm-model.json`` and read back instead of recomputed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.files import write_atomically

if TYPE_CHECKING:
    import torch

SIDECAR = "lwm-model.json"
#: 2: ids name what the weights are (``smollm2-135m-instruct-q4_1``) and ``source`` says
#: where they came from; a version-1 folder is rebuilt (same weights, same sha256).
SIDECAR_VERSION = 2


@dataclass(frozen=True)
class ModelRef:
    """A model's public identity: its id and the sha256 of its weights (``weights_sha256``).

    The one record for "which model": a manifest's base model, a schema's spec model or
    encoder, the market's accepted base models. It says nothing about where the model lies
    on a machine (see ``LocalModel``). Records that cross a trust boundary validate it there
    (``Manifest`` checks its ``base_model``), since most refs are computed here from weights.
    """

    model_id: str
    sha256: str


@dataclass(frozen=True)
class LocalModel:
    """A model present on this machine: ``name`` is what ``load_causal_lm`` takes here
    (``tiny``, ``smollm2-135m`` or a resolved folder path), ``ref`` what it is everywhere."""

    name: str
    ref: ModelRef


@dataclass(frozen=True)
class ModelInfo:
    """One line of ``lwm models``: whether a model can be used here and how to get it.

    ``path`` is the local folder once cached: what plain transformers/peft load."""

    name: str
    model_id: str
    description: str
    available: bool
    cached: bool
    path: Path | None
    sha256: str | None
    how_to_get: str


def installed_file(package: str, relative: str) -> Path | None:
    """The existing file ``relative`` inside installed ``package`` (not imported), or None.

    Models ship as data inside PyPI packages (the GGUF, the encoder's folder); finding them
    must not import the package, so that listing models stays instant.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict in sorted key order: name, dtype, shape, raw bytes.

    Independent of file layout (shards, safetensors vs. bin), so the same weights always give
    the same hash. Tied tensors appear under each of their names, as ``state_dict`` lists them.
    """
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write a cache's JSON so that readers never see half a file."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_atomically(path, text.encode("utf-8"))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None if it is missing or unreadable (a cache miss)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_sidecar(folder: Path, name: str, ref: ModelRef, **extra: Any) -> None:
    """Record a built-in model's identity (and ``name``, for a reader) beside its weights;
    ``extra`` says where the weights came from (``source``)."""
    payload = {"version": SIDECAR_VERSION, "name": name, **asdict(ref), **extra}
    write_json_atomic(folder / SIDECAR, payload)


def is_complete(folder: Path) -> bool:
    """A cached model folder is complete once its sidecar (written last) reads back."""
    return read_sidecar(folder) is not None


def read_sidecar(folder: Path) -> ModelRef | None:
    data = read_json(folder / SIDECAR)
    if data is None or data.get("version") != SIDECAR_VERSION:
        return None
    try:
        return ModelRef(model_id=data["model_id"], sha256=data["sha256"])
    except KeyError:
        return None


def fingerprint(folder: Path) -> list[list[Any]]:
    """Names, sizes and modification times of a folder's weight files: a cheap change test."""
    out: list[list[Any]] = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json") and path.name != SIDECAR:
            stat = path.stat()
            out.append([path.name, stat.st_size, stat.st_mtime_ns])
    return out
