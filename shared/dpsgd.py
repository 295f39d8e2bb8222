"""DP-SGD over a peft model: the one place opacus is set up, for PAVE specs
(``shared.spec.pave``) and DP fine-tuning (``client.finetune``, one-shot or one federated
round).

``private_training`` wraps a model, an optimizer and the texts' token ids with opacus'
``PrivacyEngine`` (RDP accountant, Poisson sampling, per-sample clipping, noise calibrated
for the whole run); ``dpsgd_steps`` runs the steps and says what each one saw. The helpers
make sure what opacus clips is really per sample (``per_sample_loss``), that an empty
Poisson batch still spends its step (``noise_only_step``), and that the clip norm can be
chosen from measured per-sample gradient norms (``grad_sample_norms``).

Known trap (opacus#820): opacus over peft can silently not train. Callers build the peft
model on its final device before calling ``private_training`` and check afterwards that
``lora_B`` moved (``PaveRun.changed``, ``client.finetune.require_trained``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.noise import torch_generator
from shared.privacy import PrivacyBudget, dpsgd_noise_multiplier

if TYPE_CHECKING:
    import torch

History = Sequence[tuple[float, float, int]]  # an RDP accountant's (sigma, sample rate, steps)
HEAD_CHUNK = 1024  # tokens per chunk of ``per_sample_head_loss`` (logits: 200 MB for SmolLM2)
Prepare = Callable[["torch.Tensor", "torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]
#: a batch's loss as ``per_sample_loss`` defines it: (model, token ids, mask, the batch's
#: rows of ``private_training``'s ``inputs``); the default runs the model on the token ids.
Forward = Callable[[Any, "torch.Tensor", "torch.Tensor", Sequence["torch.Tensor"]], "torch.Tensor"]


@dataclass(frozen=True)
class PrivateTraining:
    """What opacus' ``make_private`` returned, plus the noise it was given.

    ``accountant`` starts from the history passed in and grows with every step taken;
    ``sample_rate`` is opacus' Poisson rate (1 / number of batches).
    """

    model: Any
    optimizer: Any
    loader: Any
    accountant: Any
    noise_multiplier: float
    sample_rate: float


@dataclass(frozen=True)
class DPStep:
    """One DP-SGD step: the batch loss (NaN for an empty Poisson batch), the batch size and
    the unclipped per-sample gradient norms opacus saw."""

    loss: float
    batch: int
    norms: list[float]


@contextlib.contextmanager
def private_training(
    module: Any,
    optimizer: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    batch_size: int,
    budget: PrivacyBudget,
    clip_norm: float,
    calibration_steps: int,
    history: History = (),
    noise_seed: int | None = None,
    inputs: Sequence[torch.Tensor] = (),
) -> Iterator[PrivateTraining]:
    """opacus DP-SGD over ``module`` (a peft model already on its device) on ``(ids, mask)``.

    ``inputs`` are further per-text tensors (first dimension n) the loader samples with the
    same Poisson rows, for a ``Forward`` that needs more than token ids (PAVE's cached
    hidden states of the frozen lower layers).

    The noise multiplier spends ``budget`` over ``calibration_steps`` steps at opacus'
    sample rate (0 when ``budget`` is not private: clipping stays, so both runs are on one
    scale). The accountant starts from ``history`` (a federated holder's earlier rounds:
    carried, never reset). The noise comes from a generator seeded from ``os.urandom``
    (``shared.noise``), never from torch's global one, which training seeds for its batches;
    ``noise_seed`` fixes it (tests only). The hooks are removed on exit.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = ids.shape[0]
    loader = DataLoader(TensorDataset(ids, mask, *inputs), batch_size=min(batch_size, n))
    sample_rate = poisson_sample_rate(n, batch_size)
    sigma = dpsgd_noise_multiplier(budget, sample_rate=sample_rate, steps=calibration_steps)
    device = next(p for p in module.parameters() if p.requires_grad).device
    generator = torch_generator(device, noise_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure_mode off: noise from our seeded generator
        engine = PrivacyEngine(accountant="rdp")
        engine.accountant.history = list(history)
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=clip_norm,
            poisson_sampling=True,
            noise_generator=generator,
        )
    try:
        with warnings.catch_warnings():
            # Expected: the inputs are token ids, so hooks fire on output grads only.
            warnings.filterwarnings("ignore", message="Full backward hook")
            yield PrivateTraining(
                dp_model, dp_optimizer, dp_loader, engine.accountant, sigma, sample_rate
            )
    finally:
        dp_model.remove_hooks()


def poisson_sample_rate(n: int, batch_size: int) -> float:
    """opacus' Poisson rate for ``n`` texts at ``batch_size``: 1 / the loader's batch count.

    ``private_training`` builds its loader with ``min(batch_size, n)`` per batch, and opacus
    samples each text with probability 1 / len(loader). Public (n is public), so the market
    recomputes it to check a PAVE spec's report (``shared.spec.claims``)."""
    return 1.0 / math.ceil(n / min(batch_size, n))


def dpsgd_steps(
    dp: PrivateTraining,
    params: Sequence[torch.nn.Parameter],
    steps: int,
    prepare: Prepare | None = None,
    forward: Forward | None = None,
) -> Iterator[DPStep]:
    """``steps`` DP-SGD steps, re-iterating the Poisson loader; an empty batch is a noise
    step. Yields after each optimizer step (a caller may post-process the weights there).
    ``prepare`` maps a batch before the forward pass (trim padding, move to a device);
    ``forward`` computes its loss (default: ``per_sample_loss`` of the model's logits)."""
    taken = 0
    while taken < steps:
        for batch_ids, batch_mask, *inputs in dp.loader:
            if taken >= steps:
                break
            dp.optimizer.zero_grad(set_to_none=True)
            taken += 1
            if batch_ids.shape[0] == 0:
                noise_only_step(dp.optimizer, params)
                yield DPStep(float("nan"), 0, [])
                continue
            if prepare is not None:
                batch_ids, batch_mask = prepare(batch_ids, batch_mask)
            if forward is None:
                logits = dp.model(input_ids=batch_ids, attention_mask=batch_mask).logits
                loss = per_sample_loss(logits, batch_ids, batch_mask)
            else:
                loss = forward(dp.model, batch_ids, batch_mask, inputs)
            loss.backward()
            norms = grad_sample_norms(params)
            dp.optimizer.step()
            yield DPStep(float(loss.detach()), int(batch_ids.shape[0]), norms)


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no text of this batch uses (padding is on the right)."""
    if ids.shape[0] == 0:
        return ids, mask
    length = max(int(mask.sum(dim=1).max()), 2)
    return ids[:, :length], mask[:, :length]


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


def per_sample_head_loss(
    hidden: torch.Tensor, head: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``per_sample_loss`` of the logits ``hidden @ head.T``, never holding them all.

    For a frozen LM head (``head``: vocabulary x hidden) the logits of a large batch are
    what fills memory (1,000 texts x 16 tokens x SmolLM2's 49,152 words: 3 GB, and as much
    again for their gradient). Here the real (unpadded) target tokens go through the head a
    chunk at a time; each token's NLL gradient in ``hidden``, ``head.T (softmax - onehot)``,
    is computed there and kept instead (hidden-sized). Same values and gradients, the same
    two products per token as autograd's.
    """
    import torch

    valid = mask[:, 1:].bool()
    sample = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(valid)[valid]
    nll = _head_nll_class().apply(hidden[:, :-1][valid], head, ids[:, 1:][valid])
    total = torch.zeros(ids.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, sample, nll)
    return (total / valid.sum(dim=1).clamp(min=1).to(nll.dtype)).mean()


def _head_nll_class() -> Any:
    import torch

    class HeadNLL(torch.autograd.Function):
        """Token NLLs through a frozen head, chunked; backward uses the kept gradients."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, head: Any, targets: Any) -> Any:
            nll = hidden.new_empty(hidden.shape[0])
            grad = torch.empty_like(hidden)
            with torch.no_grad():
                for start in range(0, hidden.shape[0], HEAD_CHUNK):
                    rows = slice(start, start + HEAD_CHUNK)
                    logits = hidden[rows] @ head.T
                    lse = torch.logsumexp(logits, dim=1)
                    nll[rows] = lse - logits.gather(1, targets[rows, None])[:, 0]
                    probs = logits.sub_(lse[:, None]).exp_()
                    probs[torch.arange(probs.shape[0]), targets[rows]] -= 1.0
                    grad[rows] = probs @ head
            ctx.save_for_backward(grad)
            return nll

        @staticmethod
        def backward(ctx: Any, upstream: Any) -> Any:
            (grad,) = ctx.saved_tensors
            return upstream[:, None] * grad, None, None

    return HeadNLL


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
