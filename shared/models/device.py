"""Where a model runs: ``--device auto|cpu|cuda|mps`` and ``--dtype float32|bfloat16|float16``.

One ``Placement`` is chosen per command, before any model loads, so asking for a GPU this
machine lacks is a one-line ``ModelUnavailable`` rather than a traceback minutes later.
``auto`` takes cuda if torch sees one, else mps, else the CPU. The dtype defaults to
float32 everywhere: bfloat16 / float16 halve memory and speed up GPUs, but only where asked.

Specifications are always computed in float32 (``for_specs``), on any device: a spec is
compared with specs made on other machines, and a PAVE vector trained in bfloat16 would
carry rounding far larger than a float32 one made on a CPU, while float32 on a GPU agrees
with the CPU to float32 rounding (not bit for bit: GPU reductions sum in another order).
The base model's weight sha256 is always taken over its float32 weights, so a model
loaded in bfloat16 keeps its identity.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidInput, ModelUnavailable

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
#: What scoring (perplexity, accuracy) computes its matmuls in; see ``scoring_precision``.
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class Placement:
    """A concrete device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) and a dtype name.

    Validates names only; whether the device exists here is ``resolve``'s question.
    """

    device: str = "cpu"
    dtype: str = DEFAULT_DTYPE

    def __post_init__(self) -> None:
        kind, _, index = self.device.partition(":")
        if kind not in DEVICES[1:] or (index and (kind != "cuda" or not index.isdigit())):
            raise InvalidInput(f"--device {self.device!r}: use one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")

    @property
    def is_default(self) -> bool:
        """CPU and float32: what every model loads as before any move."""
        return self.device == "cpu" and self.dtype == DEFAULT_DTYPE

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def for_specs(self) -> Placement:
        """The same device in float32: specs stay comparable across machines (see above)."""
        return replace(self, dtype=DEFAULT_DTYPE)

    def place(self, model: Any) -> Any:
        """``model`` moved to this device and cast to this dtype (in place for torch)."""
        return model if self.is_default else model.to(self.device, dtype=self.torch_dtype())


CPU = Placement()


def batch_on(where: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[Any, Any]:
    """A batch (token ids and mask, built on the CPU) on the device of ``where``, a model
    or a parameter, so one training or scoring loop serves every placement."""
    return ids.to(where.device), mask.to(where.device)


def parse(device: str = "auto", dtype: str | None = None) -> Placement:
    """The names checked (``InvalidInput``) without importing torch; ``auto`` reads as the
    CPU here. A config file read on one machine and run on another checks with this."""
    return Placement(device if device != "auto" else "cpu", dtype or DEFAULT_DTYPE)


def resolve(device: str = "auto", dtype: str | None = None) -> Placement:
    """The placement ``--device``/``--dtype`` ask for, checked against this machine.

    ``auto`` picks cuda, then mps, then cpu; ``dtype`` None is float32. Raises
    ``InvalidInput`` for an unknown name and ``ModelUnavailable`` for a device torch
    cannot use here, before any model is loaded.
    """
    chosen = parse(device, dtype)
    if device == "cpu":
        return chosen
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if device == "auto":
        return replace(chosen, device="cuda" if cuda else "mps" if mps else "cpu")
    if chosen.device.startswith("cuda"):
        index = int(chosen.device.partition(":")[2] or 0)
        if not cuda or index >= torch.cuda.device_count():
            raise ModelUnavailable(
                f"--device {device}: torch sees no such CUDA device here "
                f"(torch {torch.__version__}, {torch.cuda.device_count()} GPU(s)); "
                "use --device cpu or auto"
            )
    elif not mps:
        raise ModelUnavailable(
            f"--device {device}: torch sees no Apple MPS device here; use --device cpu or auto"
        )
    return chosen


def scoring_precision(choice: str, device: str = "cpu") -> str:
    """``float32`` or ``bfloat16``: what scoring on ``device`` runs its matmuls in.

    ``auto`` is bfloat16 where the hardware multiplies bfloat16 natively (a CPU with
    AVX512-BF16 or AMX, a CUDA device that supports it) and float32 elsewhere. Scoring only
    compares models on the same records, and bfloat16 autocast (weights stay float32;
    norms, softmax and the loss stay float32) moved SmolLM2's summed log-probability of
    840 tokens by 0.02% while halving the time on this project's 2-core CPU. Training and
    specs never use it (see the module doc).
    """
    if choice not in PRECISIONS:
        raise InvalidInput(f"--score-precision {choice!r}: use one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return choice
    return "bfloat16" if native_bf16(device) else "float32"


def native_bf16(device: str = "cpu") -> bool:
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device == "cpu" and _cpu_has_bf16()


@cache
def _cpu_has_bf16() -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to ask, so stay exact
        return False
    return any(flag in info.split() for flag in ("avx512_bf16", "amx_bf16"))


def autocast(precision: str, device: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """The context scoring runs in: torch's bfloat16 autocast, or nothing for float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.partition(":")[0], dtype=torch.bfloat16)
