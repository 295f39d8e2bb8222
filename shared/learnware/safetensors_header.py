"""Read and check a ``.safetensors`` header without torch and without trusting the file.

Why here: verifying a package must prove that ``adapter_model.safetensors`` and
``spec.safetensors`` really are safetensors (a pickle renamed ``.safetensors`` must fail),
and the market's checker wants tensor names and shapes (adapter modules, spec dim) cheaply.

Format: 8-byte little-endian header length N, N bytes of UTF-8 JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``),
then the data buffer, which the tensors must tile exactly (no gaps, no overlap, no tail).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import IntegrityError

DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}
MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape; ``IntegrityError`` (naming the file) if malformed."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise IntegrityError(f"{path.name}: too short to be safetensors")
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise IntegrityError(f"{path.name}: not safetensors (header length {length})")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{path.name}: not safetensors (bad header JSON: {err})") from err
    except RecursionError:  # a hostile header nests thousands deep
        raise IntegrityError(f"{path.name}: not safetensors (header nested too deeply)") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{path.name}: not safetensors (header is not an object)")
    return _tensors(path.name, header, data_bytes=size - 8 - length)


def _tensors(name: str, header: dict[str, Any], data_bytes: int) -> dict[str, TensorInfo]:
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise IntegrityError(f"{name}: __metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int]] = []
    for key, entry in header.items():
        info, span = _tensor(name, key, entry, data_bytes)
        tensors[key] = info
        spans.append(span)
    cursor = 0
    for begin, end in sorted(spans):
        if begin != cursor:
            raise IntegrityError(f"{name}: tensor data has a gap or overlap at byte {begin}")
        cursor = end
    if cursor != data_bytes:
        raise IntegrityError(f"{name}: {data_bytes - cursor} trailing bytes after the tensors")
    return tensors


def _tensor(
    name: str, key: str, entry: object, data_bytes: int
) -> tuple[TensorInfo, tuple[int, int]]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise IntegrityError(f"{name}: tensor {key!r} has a malformed entry {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise IntegrityError(f"{name}: tensor {key!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise IntegrityError(f"{name}: tensor {key!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(o) for o in offsets)
        or not offsets[0] <= offsets[1] <= data_bytes
    ):
        raise IntegrityError(f"{name}: tensor {key!r} has bad data_offsets {offsets!r}")
    info = TensorInfo(dtype=dtype, shape=tuple(shape))
    if info.numel * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise IntegrityError(f"{name}: tensor {key!r} size does not match its shape {shape}")
    return info, (offsets[0], offsets[1])


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
