"""DP-SGD pieces shared by PAVE specs (``shared.spec.pave``) and DP fine-tuning
(``client.finetune``): one per-sample loss, one empty-batch step, one gradient-norm probe.

opacus clips and noises per-sample gradients; these helpers make sure what it clips is
really per sample, that an empty Poisson batch still spends its step, and that the clip
norm can be chosen from measured per-sample gradient norms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def per_sample_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token NLL per text, then the batch mean: samples stay independent (HF's
    ``labels=`` loss averages tokens over the whole batch and couples them)."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :]
    shift_ids = ids[:, 1:]
    shift_mask = mask[:, 1:].to(logits.dtype)
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_ids.reshape(-1), reduction="none"
    ).view(shift_ids.shape)
    per_sample = (nll * shift_mask).sum(dim=1) / shift_mask.sum(dim=1).clamp(min=1.0)
    return per_sample.mean()


def grad_sample_norms(params: Sequence[torch.nn.Parameter]) -> list[float]:
    """Per-sample gradient L2 norms before clipping (to choose the clip norm from data)."""
    import torch

    found = (getattr(p, "grad_sample", None) for p in params)
    samples: list[torch.Tensor] = [g for g in found if g is not None]
    if not samples:
        return []
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in samples], dim=1)
    return [float(x) for x in flat.norm(dim=1)]


def noise_only_step(optimizer: Any, params: Sequence[torch.nn.Parameter]) -> None:
    """An empty Poisson batch: the DP step is noise alone (sum of zero clipped gradients)."""
    import torch

    for p in params:
        setattr(p, "grad_sample", torch.zeros((1, *p.shape), device=p.device))  # noqa: B010 (opacus attribute)
    optimizer.step()
