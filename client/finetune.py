"""LoRA fine-tuning of a base model on a holder's texts, optionally with DP-SGD (DESIGN §4, §5).

The adapter is plain peft LoRA (r=8, alpha=16 on q_proj+v_proj by default), saved with
``save_pretrained`` as safetensors, so ``PeftModel.from_pretrained(base, dir)`` loads it.

Without DP: AdamW over shuffled batches. With DP (``FinetuneConfig.dp_epsilon`` set): opacus
``PrivacyEngine(accountant="rdp")``, Poisson sampling, per-sample clipping at ``clip_norm``
and Gaussian noise calibrated so that ``steps`` steps spend ``dp_epsilon`` at ``delta``; the
epsilon reported is the accountant's after training, never the target. Both paths use the
per-sample loss of ``shared.spec.pave`` (mean token NLL per text, then the batch mean): HF's
``labels=`` loss averages tokens over the whole batch and couples the samples, which breaks
the per-sample clipping DP relies on.

Clip norm 0.5 sits near the median per-sample gradient norm of the LoRA weights at the start
of training on finance text (tiny 0.47, SmolLM2-135M 0.64); ``per_sample_grad_norms``
reports them for other models. Optimizer "auto": AdamW (lr 1e-2) without DP, plain SGD
(lr 0.5) under DP, which trained tiny better than Adam at epsilon 8 and 2 (figures in
``benchmarks/bench_contribute.py``'s notes) and keeps each update a noisy sum of clipped
gradients. DP at small batches barely moves SmolLM2: raise ``batch_size`` under DP.

Known trap (opacus#820): opacus over peft can silently not train. The peft model is built on
its final device before ``make_private``, and training raises if ``lora_B`` did not move.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.dpsgd import History, dpsgd_steps, private_training, trim
from shared.errors import DataError, InvalidInput, LwmError
from shared.models.device import batch_on
from shared.privacy import DEFAULT_DELTA, DPReport, PrivacyBudget, rdp_epsilon

if TYPE_CHECKING:
    import torch

    from shared.models import LoadedModel

DP_MECHANISM = "dp-sgd"
NO_DP_MECHANISM = "none"
OPTIMIZERS = ("auto", "adam", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """How the adapter is trained. ``dp_epsilon`` None trains without DP (no guarantee).

    ``batch_size`` is the expected Poisson batch under DP (sample rate = 1/ceil(n/batch)) and
    the exact batch without. ``optimizer`` "auto" is AdamW without DP and SGD under DP;
    ``lr`` None picks the optimizer's default (Adam 1e-2, SGD 0.5). ``max_tokens`` truncates
    each text; batches are trimmed to their longest text, so short texts cost little.
    """

    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 30
    batch_size: int = 8
    lr: float | None = None
    max_tokens: int = 128
    dp_epsilon: float | None = None
    delta: float = DEFAULT_DELTA
    clip_norm: float = 0.5
    optimizer: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("rank", "steps", "batch_size"):
            _positive_int(name, getattr(self, name))
        _positive_int("max_tokens", self.max_tokens, minimum=2)
        if not self.target_modules or not all(
            isinstance(m, str) and m for m in self.target_modules
        ):
            raise InvalidInput(f"target_modules must name modules, got {self.target_modules!r}")
        for name in ("alpha", "clip_norm", "lr"):
            if name != "lr" or self.lr is not None:
                _positive_number(name, getattr(self, name))
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInput(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.budget  # noqa: B018 - validates dp_epsilon and delta (PrivacyError)

    @property
    def budget(self) -> PrivacyBudget:
        return PrivacyBudget(self.dp_epsilon, self.delta)

    def check_fits(self, n: int, steps: int | None = None) -> None:
        """Refuse DP-SGD that ``n`` texts cannot carry, before any model loads: delta must
        be below 1/n, and the noise for ``steps`` (default ``self.steps``; a federated
        holder's rounds x local steps) is calibrated now, so a budget too small to train at
        all fails in a second, not after loading."""
        if not self.budget.is_private:
            return
        from shared.dpsgd import poisson_sample_rate
        from shared.privacy import dpsgd_noise_multiplier

        self.budget.require_texts(n)
        rate = poisson_sample_rate(n, self.batch_size)
        dpsgd_noise_multiplier(self.budget, sample_rate=rate, steps=steps or self.steps)

    @property
    def optimizer_name(self) -> str:
        if self.optimizer != "auto":
            return self.optimizer
        return "sgd" if self.budget.is_private else "adam"

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-2 if self.optimizer_name == "adam" else 0.5


@dataclass(frozen=True)
class FinetuneResult:
    """The saved adapter and what its training cost in privacy and time.

    ``report.epsilon`` is None without DP. ``per_sample_grad_norms`` are the unclipped norms
    opacus saw (DP only): compare them with ``clip_norm``. Per step: the loss (NaN for an
    empty Poisson batch), the batch size and the wall time; ``seconds`` is the whole call.
    """

    adapter_dir: Path
    report: DPReport
    losses: tuple[float, ...]
    per_sample_grad_norms: tuple[float, ...]
    step_seconds: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    seconds: float


@dataclass
class TrainTrace:
    """What the training loops record, step by step (mutable).

    Public because the federation's ClientApp (``client.federation.client_app``) runs the
    same loops one round at a time and reads the losses back from it; ``bar`` is a tqdm bar
    or None (a SuperNode has no terminal to draw on).
    """

    bar: Any
    losses: list[float] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    def step(self, loss: float, batch: int, started: float) -> None:
        self.step_seconds.append(time.perf_counter() - started)
        self.losses.append(loss)
        self.batch_sizes.append(batch)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name} must be an int >= {minimum}, got {value!r}")


def _positive_number(name: str, value: object) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and math.isfinite(float(value)) and float(value) > 0):  # type: ignore[arg-type]
        raise InvalidInput(f"{name} must be a finite number > 0, got {value!r}")


# ---------------------------------------------------------------- public API


def finetune_lora(
    texts: Sequence[str],
    base: LoadedModel,
    config: FinetuneConfig,
    out_dir: str | Path,
    *,
    progress: bool = False,
    noise_seed: int | None = None,
) -> FinetuneResult:
    """Train a LoRA adapter of ``base`` on ``texts`` and save it at ``out_dir`` (peft format).

    ``base`` is left untouched (a private copy is adapted). ``noise_seed`` makes the DP noise
    reproducible for tests; leave it None for real releases. Raises ``DataError`` (no texts),
    ``PrivacyError`` (budget unreachable) or ``LwmError`` when the LoRA weights did not move.
    """
    import torch

    if not texts:
        raise DataError("cannot fine-tune on no texts: the data is empty")
    started = time.perf_counter()
    ids, mask = tokenize(texts, base.tokenizer, config.max_tokens)
    private = config.budget.is_private
    trace = TrainTrace(_progress_bar(config.steps, progress, private))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        peft_model = lora_model(base, config)
        before = lora_b_snapshot(peft_model)
        try:
            if private:
                report = _train_dp(peft_model, ids, mask, config, trace, noise_seed)
            else:
                report = train_plain(peft_model, ids, mask, config, trace)
        finally:
            if trace.bar is not None:
                trace.bar.close()
    require_trained(before, lora_b_snapshot(peft_model))
    out = Path(out_dir)
    peft_model.eval()
    with warnings.catch_warnings():
        # peft looks for the base's config under base_model_name_or_path, a public id here.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        peft_model.save_pretrained(str(out), safe_serialization=True)
    return FinetuneResult(
        adapter_dir=out,
        report=report,
        losses=tuple(trace.losses),
        per_sample_grad_norms=tuple(trace.norms),
        step_seconds=tuple(trace.step_seconds),
        batch_sizes=tuple(trace.batch_sizes),
        seconds=time.perf_counter() - started,
    )


def perplexity(
    model: Any, tokenizer: Any, texts: Sequence[str], max_tokens: int = 128, batch_size: int = 16
) -> float:
    """Token-weighted perplexity of ``model`` on ``texts`` (each truncated to ``max_tokens``).

    The held-out quality check of a learnware: lower than the base model's on text of its
    domain means the adapter learnt the domain.
    """
    import torch
    import torch.nn.functional as F

    if not texts:
        raise DataError("cannot measure perplexity on no texts")
    ids, mask = tokenize(texts, tokenizer, max_tokens)
    total_nll, total_tokens = 0.0, 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            batch_ids, batch_mask = batch_on(
                model, *trim(ids[start : start + batch_size], mask[start : start + batch_size])
            )
            logits = model(input_ids=batch_ids, attention_mask=batch_mask).logits[:, :-1, :]
            targets, weight = batch_ids[:, 1:], batch_mask[:, 1:].to(logits.dtype)
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)
            total_nll += float((nll * weight).sum())
            total_tokens += float(weight.sum())
    model.train(was_training)
    return math.exp(total_nll / max(total_tokens, 1.0))


def tokenize(
    texts: Sequence[str], tokenizer: Any, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, padded to the longest text (at most ``max_tokens``)."""
    enc = tokenizer(
        list(texts), max_length=max_tokens, truncation=True, padding="longest", return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if int(mask.sum(dim=1).min()) < 2:
        raise DataError("every text needs at least two tokens to train on")
    return ids, mask


def lora_model(base: LoadedModel, config: FinetuneConfig) -> Any:
    """A peft LoRA model over a private copy of ``base``, built on ``base``'s device.

    The base is loaded on its device (``load_causal_lm(..., placement)``) BEFORE wrapping,
    which matters under opacus (opacus#820); peft keeps the LoRA weights in float32 even
    over a bfloat16 base. The adapter config names the base model by its public id, not by
    a path on this machine.
    """
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model: Any = copy.deepcopy(base.model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, lora)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise InvalidInput(f"cannot put LoRA on {list(config.target_modules)}: {err}") from err
    peft_model.peft_config["default"].base_model_name_or_path = base.ref.model_id
    peft_model.train()
    return peft_model


# ---------------------------------------------------------------- training loops
# Public so that the federation's ClientApp trains each round with exactly these loops.


def trainable_params(peft_model: Any) -> list[torch.nn.Parameter]:
    """The LoRA weights, in a fixed (sorted) order: what the optimizer and opacus see."""
    return [p for _, p in sorted(peft_model.named_parameters()) if p.requires_grad]


def make_optimizer(
    params: list[torch.nn.Parameter], config: FinetuneConfig
) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, built the same way for one-shot and federated runs."""
    import torch

    if config.optimizer_name == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate)
    # No weight decay under DP: it is data-independent but pulls lora_B back to zero.
    decay = 0.0 if config.budget.is_private else 0.01
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=decay)


def train_plain(
    peft_model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    config: FinetuneConfig,
    trace: TrainTrace,
) -> DPReport:
    """``config.steps`` steps of shuffled epochs of exact batches, no DP (no guarantee)."""
    import torch

    from shared.dpsgd import per_sample_loss

    optimizer = make_optimizer(trainable_params(peft_model), config)
    n, batch = ids.shape[0], min(config.batch_size, ids.shape[0])
    order: list[int] = []
    for _ in range(config.steps):
        started = time.perf_counter()
        if len(order) < batch:
            order += torch.randperm(n).tolist()
        picked, order = order[:batch], order[batch:]
        batch_ids, batch_mask = batch_on(peft_model, *trim(ids[picked], mask[picked]))
        optimizer.zero_grad(set_to_none=True)
        logits = peft_model(input_ids=batch_ids, attention_mask=batch_mask).logits
        loss = per_sample_loss(logits, batch_ids, batch_mask)
        loss.backward()
        optimizer.step()
        trace.step(float(loss.detach()), batch, started)
    return adapter_report(config, n, [], steps=config.steps)


def _train_dp(
    peft_model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    config: FinetuneConfig,
    trace: TrainTrace,
    noise_seed: int | None,
) -> DPReport:
    """opacus DP-SGD: Poisson batches, per-sample clipping, noise for the whole run."""
    n = ids.shape[0]
    accountant, _, sample_rate = private_steps(
        peft_model, ids, mask, config, trace, noise_seed=noise_seed
    )
    return adapter_report(
        config, n, accountant.history, steps=config.steps, expected_batch=n * sample_rate
    )


def private_steps(
    peft_model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    config: FinetuneConfig,
    trace: TrainTrace,
    *,
    calibration_steps: int | None = None,
    history: History = (),
    noise_seed: int | None = None,
) -> tuple[Any, float, float]:
    """``config.steps`` DP-SGD steps (``shared.dpsgd``) on ``(ids, mask)``, for a
    contributor's whole run and for a federated holder's round.

    The noise multiplier spends ``config.budget`` over ``calibration_steps`` steps (default
    ``config.steps``; a federation passes rounds x local steps), and the RDP accountant
    starts from ``history`` (a holder's earlier rounds: carried, never reset). Returns the
    accountant, the noise multiplier and the sample rate.
    """
    params = trainable_params(peft_model)
    with private_training(
        peft_model,
        make_optimizer(params, config),
        ids,
        mask,
        batch_size=config.batch_size,
        budget=config.budget,
        clip_norm=config.clip_norm,
        calibration_steps=calibration_steps or config.steps,
        history=history,
        noise_seed=noise_seed,
    ) as dp:
        started = time.perf_counter()
        prepare = lambda i, m: batch_on(params[0], *trim(i, m))  # noqa: E731
        for step in dpsgd_steps(dp, params, config.steps, prepare):
            trace.norms.extend(step.norms)
            trace.step(step.loss, step.batch, started)
            started = time.perf_counter()
    return dp.accountant, dp.noise_multiplier, dp.sample_rate


# ---------------------------------------------------------------- checks and reports


def lora_b_snapshot(peft_model: Any) -> list[torch.Tensor]:
    """Copies of every lora_B (zero at init): compare before and after with require_trained."""
    return [p.detach().clone() for n, p in sorted(peft_model.named_parameters()) if "lora_B" in n]


def require_trained(before: list[torch.Tensor], after: list[torch.Tensor]) -> None:
    """Refuse an adapter whose lora_B never moved (``before``/``after``: lora_b_snapshot).

    opacus#820: loss falls, epsilon grows, and yet the LoRA weights never move; checked
    after every local training, one-shot or one federated round.
    """
    import torch

    if not before or all(torch.equal(a, b) for a, b in zip(before, after, strict=True)):
        raise LwmError(
            "fine-tuning did not change the LoRA weights (lora_B still at its start); "
            "no adapter was written (opacus over peft can silently not train: opacus#820)"
        )


def adapter_report(
    config: FinetuneConfig, n: int, history: History, *, steps: int, **extra: Any
) -> DPReport:
    """The adapter's DP report from the accountant ``history`` of its training: the one
    place it is made, for a contributor's run and for a federation's averaged adapter.

    ``history`` is an opacus RDP accountant's (sigma, sample rate, steps) list; under DP it
    must be one noise level at one rate (what ``private_steps`` runs), reported as one
    entry with all its steps, so an auditor can recompute the epsilon. Without DP
    (``config.dp_epsilon`` None) the report says so (epsilon None, no guarantee) and
    ``steps`` is what was trained. ``n`` is the number of texts; ``extra`` joins the details.
    """
    details = {
        "clip_norm": config.clip_norm if config.budget.is_private else None,
        "lr": config.learning_rate,
        "optimizer": config.optimizer_name,
        "rank": config.rank,
        "target_modules": list(config.target_modules),
        "n": n,
        **extra,
    }
    if not config.budget.is_private:
        return DPReport(
            mechanism=NO_DP_MECHANISM,
            epsilon=None,
            delta=0.0,
            noise_multiplier=0.0,
            sample_rate=min(1.0, config.batch_size / max(n, 1)),
            steps=steps,
            details=details,
        )
    if not history:
        raise LwmError("DP-SGD was asked for but no accountant history was reported")
    sigmas = {float(s) for s, _, _ in history}
    rates = {float(q) for _, q, _ in history}
    if len(sigmas) != 1 or len(rates) != 1:
        raise LwmError("the accountant mixes noise levels; cannot summarise it")
    return DPReport(
        mechanism=DP_MECHANISM,
        epsilon=rdp_epsilon(list(history), config.delta),
        delta=config.delta,
        noise_multiplier=sigmas.pop(),
        sample_rate=rates.pop(),
        steps=sum(int(k) for _, _, k in history),
        details=details,
    )


def _progress_bar(total: int, enabled: bool, private: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    desc = "fine-tune (LoRA, DP-SGD)" if private else "fine-tune (LoRA)"
    return tqdm(total=total, desc=desc, unit="step")
