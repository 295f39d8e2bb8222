"""Score a causal LM (base or base + learnware) on a user's data, on the user's machine.

lm-evaluation-harness is not a dependency, so this is a small evaluator with its metrics:

- **Text records** -> rolling log-likelihood (lm-eval's ``loglikelihood_rolling``, its very
  windows): every token of every text is scored once, in windows of the model's context, the
  first conditioned on the BOS (else EOS) token. Reported: token ``perplexity``
  (exp of the mean NLL per token; comparable between models sharing a tokenizer, which a base
  and its adapters always do) and lm-eval's tokenizer-free ``word_perplexity``,
  ``byte_perplexity`` and ``bits_per_byte``.
- **Labelled records** (every record has prompt and response) -> multiple choice over each
  record's own ``choices``, or else the closed label set = the distinct responses of the
  file (``shared.data.tasks.candidates``; lm-eval's ``acc`` and ``acc_norm``, defined in
  ``shared.data.tasks.predict``): each option's log-likelihood given ``prompt + "\\n"`` (the
  layout of ``Record.full_text``, which is what adapters are trained on); the argmax is the
  prediction (``acc_norm`` divides by the option's length first). The reference responses'
  token perplexity is reported too (it falls out of the same forward passes).

The text figures equal lm-evaluation-harness's on the same text by construction (same
windows, contexts, word and byte counts; ``tests/test_harness.py`` checks it), so
``lwm evaluate DATA`` and ``lwm evaluate --tasks DATA`` (``client.harness``) agree.

``evaluate`` is the one entry point for a learnware (``lwm evaluate``, the Python API and
``lwm simulate`` all call it); ``evaluate_model`` scores any causal LM. ``max_words`` is the
simulation's speed option: each record is cut to its first words (a prompt to its last, the
question sits at the end of a maths problem; answers stay whole) before scoring.

Nothing here sends anything anywhere. Heavy imports happen inside functions.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from shared.data import DataPath, Dataset, Record
from shared.errors import DataError, InvalidInput

if TYPE_CHECKING:
    from client.run import LoadedLearnware

#: Above this many distinct responses a file is not a closed-label task: accuracy is skipped
#: and only the responses' perplexity is reported (scoring would cost n x labels passes).
MAX_LABELS = 64
LABEL_SEPARATOR = "\n"
T = TypeVar("T")


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_model`` measured. ``perplexity`` is per token (lower is better).

    ``kind`` is ``"text"`` (perplexity of whole texts) or ``"labelled"`` (perplexity of the
    reference responses given their prompts, plus ``accuracy``/``accuracy_norm`` over
    ``n_labels`` labels (the most options one record has), both None when a record would
    have more than ``MAX_LABELS``).
    """

    kind: str
    n_records: int
    n_tokens: int
    perplexity: float
    word_perplexity: float
    byte_perplexity: float
    bits_per_byte: float
    accuracy: float | None = None
    accuracy_norm: float | None = None
    n_labels: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LearnwareEvaluation:
    """The learnware's scores on the user's data and, when asked, the bare base model's."""

    learnware: Evaluation
    base: Evaluation | None = None


def evaluate(
    learnware: LoadedLearnware,
    data: DataPath | Dataset | Sequence[Record],
    *,
    with_base: bool = False,
    batch_size: int = 16,
    max_labels: int = MAX_LABELS,
    max_words: int | None = None,
    progress: bool = False,
    precision: str = "float32",
) -> LearnwareEvaluation:
    """Perplexity (text) or accuracy (labelled data) of the learnware on ``data``, locally.

    ``with_base`` also scores the base model alone (the adapter switched off), the baseline
    a user compares against. ``max_labels``, ``max_words``, ``precision``: see
    ``evaluate_model``.
    """
    records = _records(data)

    def score(model: Any) -> Evaluation:
        return evaluate_model(
            model,
            learnware.tokenizer,
            records,
            batch_size=batch_size,
            max_labels=max_labels,
            max_words=max_words,
            progress=progress,
            precision=precision,
        )

    return LearnwareEvaluation(*with_and_without_adapter(learnware, score, with_base))


def with_and_without_adapter(
    learnware: LoadedLearnware, score: Callable[[Any], T], with_base: bool = True
) -> tuple[T, T | None]:
    """``score(model)`` with the learnware's adapter on, then (``with_base``) with it switched
    off: the bare base model, the baseline a user compares against, without a second load."""
    model = learnware.active_model()
    result = score(model)
    if not with_base:
        return result, None
    with model.disable_adapter():
        return result, score(model)


def _records(data: DataPath | Dataset | Sequence[Record]) -> list[Record]:
    if isinstance(data, DataPath):
        from shared.data import load_dataset

        data = load_dataset(data)
    return list(data.records if isinstance(data, Dataset) else data)


@dataclass(frozen=True)
class _Item:
    """One scored sequence: ``ids`` in, log-likelihood of ``ids[start:]`` out."""

    ids: tuple[int, ...]
    start: int  # first position whose token is scored (>= 1)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    data: Dataset | Sequence[Record],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    max_labels: int = MAX_LABELS,
    max_words: int | None = None,
    progress: bool = False,
    precision: str = "float32",
) -> Evaluation:
    """Perplexity on text records; accuracy (+ response perplexity) on labelled ones.

    A file counts as labelled only when every record has a prompt and a response. Texts
    longer than the context are scored in windows; prompts too long are cut from the left.
    ``max_labels`` caps the label set scored for accuracy (each label costs one pass per
    record): above it only the responses' perplexity is measured. ``max_words`` cuts each
    record first (a text to its first words, a prompt to its last; responses stay whole),
    which bounds the cost of scoring many models on the same records. ``precision``
    (``shared.models.device.scoring_precision``: float32 or bfloat16) is what the forward
    passes multiply in.
    Raises ``DataError`` for no records or texts that give no tokens.
    """
    from shared.models.device import autocast

    records = list(data.records if isinstance(data, Dataset) else data)
    if not records:
        raise DataError("no records to evaluate")
    if max_words is not None:
        records = [_clip(r, max_words) for r in records]
    started = time.perf_counter()
    length = max_length or context_length(model, tokenizer)
    with autocast(precision, str(model.device)):
        if all(r.is_labelled for r in records):
            result = _labelled(model, tokenizer, records, length, batch_size, progress, max_labels)
        else:
            result = _text(model, tokenizer, records, length, batch_size, progress)
    return replace(result, seconds=time.perf_counter() - started)


def _clip(record: Record, words: int) -> Record:
    """``record`` cut to ``words`` words: a text keeps its first, a prompt its last."""
    if words < 1:
        raise InvalidInput(f"max_words must be >= 1, got {words}")
    if record.is_labelled:
        return replace(record, prompt=" ".join(str(record.prompt).split()[-words:]))
    return Record(text=" ".join(record.full_text.split()[:words]))


def context_length(model: Any, tokenizer: Any) -> int:
    """The longest sequence scored at once: the model's positions, or the tokenizer's limit."""
    limits = [getattr(model.config, "max_position_embeddings", None)]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 1_000_000:
        limits.append(tok_max)
    known = [x for x in limits if isinstance(x, int) and x > 1]
    return min(known) if known else 1024


def _prefix_token(tokenizer: Any) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise DataError("the tokenizer has no BOS or EOS token to start a text with")


# ---------------------------------------------------------------- text: rolling perplexity


def _text(
    model: Any, tokenizer: Any, records: list[Record], length: int, batch: int, progress: bool
) -> Evaluation:
    texts = [r.full_text for r in records]
    prefix = _prefix_token(tokenizer)
    items = [
        window
        for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        for window in _windows(ids, prefix, length)
    ]
    if not items:
        raise DataError("the texts give no tokens to score")
    scores = _score(model, items, batch, progress, "perplexity")
    nll = -sum(scores)
    tokens = sum(len(i.ids) - i.start for i in items)
    return _totals("text", len(records), nll, tokens, texts)


def _windows(ids: Sequence[int], prefix: int, length: int) -> Iterator[_Item]:
    """lm-eval's rolling windows (``get_rolling_token_windows`` with context 1, made disjoint):
    each token scored once, ``length`` per window; the first window after ``prefix``, each
    later one after the ``length`` tokens before its end (so the last, partial window sees
    more context than its own tokens)."""
    if not ids:
        return
    done = min(length, len(ids))
    yield _Item((prefix, *ids[:done]), 1)
    while done < len(ids):
        end = min(done + length, len(ids))
        yield _Item(tuple(ids[end - length - 1 : end]), 1 + length - (end - done))
        done = end


def count_words(text: str) -> int:
    """Words as lm-eval counts them for ``word_perplexity`` (``Task.count_words``)."""
    return len(re.split(r"\s+", text))


def _totals(kind: str, n: int, nll: float, tokens: int, texts: Sequence[str]) -> Evaluation:
    words = sum(count_words(t) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return Evaluation(
        kind=kind,
        n_records=n,
        n_tokens=tokens,
        perplexity=_exp(nll / tokens),
        word_perplexity=_exp(nll / max(words, 1)),
        byte_perplexity=_exp(nll / max(nbytes, 1)),
        bits_per_byte=nll / max(nbytes, 1) / math.log(2),
    )


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


# ---------------------------------------------------------------- labelled: multiple choice


def _labelled(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    length: int,
    batch: int,
    progress: bool,
    max_labels: int = MAX_LABELS,
) -> Evaluation:
    from shared.data.tasks import candidates, predict

    closed = candidates(records, max_labels)
    options = closed or [(str(r.response),) for r in records]
    encode = _encoder(tokenizer)
    items: list[_Item] = []
    gold: list[int] = []  # the index in items of each record's reference answer
    for record, answers in zip(records, options, strict=True):
        context = encode(f"{record.prompt}{LABEL_SEPARATOR}")
        gold.append(len(items) + answers.index(str(record.response)))
        items.extend(_choice(context, encode(answer), length) for answer in answers)
    scores = _score(model, items, batch, progress, "accuracy" if closed else "perplexity")
    nll = -sum(scores[g] for g in gold)
    tokens = sum(len(items[g].ids) - items[g].start for g in gold)
    result = _totals("labelled", len(records), nll, tokens, [str(r.response) for r in records])
    if closed is None:
        return result
    hits = hits_norm = start = 0
    for right, answers in zip(gold, options, strict=True):
        picked = predict(scores[start : start + len(answers)], answers)
        hits += start + picked.acc == right
        hits_norm += start + picked.acc_norm == right
        start += len(answers)
    n, most = len(records), max(len(answers) for answers in options)
    return replace(result, accuracy=hits / n, accuracy_norm=hits_norm / n, n_labels=most)


def _encoder(tokenizer: Any) -> Any:
    cache: dict[str, tuple[int, ...]] = {}

    def encode(text: str) -> tuple[int, ...]:
        if text not in cache:
            cache[text] = tuple(
                tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            )
        return cache[text]

    return encode


def _choice(context: tuple[int, ...], target: tuple[int, ...], length: int) -> _Item:
    """Context then target, cut from the left to fit (the model reads all but the last token,
    as lm-eval does); the target is always scored whole."""
    if not target:
        raise DataError("a response gives no tokens to score")
    if len(target) > length:
        raise DataError(
            f"a response of {len(target)} tokens does not fit the {length}-token context"
        )
    ids = (*context, *target)[-(length + 1) :]
    return _Item(ids, len(ids) - len(target))


# ---------------------------------------------------------------- batched scoring


def _score(model: Any, items: list[_Item], batch: int, progress: bool, what: str) -> list[float]:
    """Sum of log-probabilities of each item's scored tokens, in input order.

    Items are batched longest first (fewer pad tokens, and an out-of-memory shows at once).
    An item may be one token longer than the context: its last token is only predicted.
    """
    import torch

    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    scores = [0.0] * len(items)
    bar = _progress(len(items), progress, what)
    with torch.inference_mode():
        for begin in range(0, len(order), batch):
            chunk = order[begin : begin + batch]
            for i, value in zip(chunk, _score_batch(model, [items[i] for i in chunk]), strict=True):
                scores[i] = value
            bar.update(len(chunk))
    bar.close()
    return scores


def _score_batch(model: Any, items: list[_Item]) -> list[float]:
    import torch

    width = max(len(i.ids) for i in items)
    ids = torch.zeros((len(items), width), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    scored = torch.zeros((len(items), width - 1), dtype=torch.bool)
    for row, item in enumerate(items):
        ids[row, : len(item.ids)] = torch.tensor(item.ids)
        mask[row, : len(item.ids)] = 1
        scored[row, item.start - 1 : len(item.ids) - 1] = True
    ids, mask, scored = (t.to(model.device) for t in (ids, mask, scored))  # its placement
    logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(dim=1).tolist()


def _progress(total: int, enabled: bool, what: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"scoring ({what})", unit="seq", disable=not enabled)
