"""The evaluator against slow, obvious reference computations, on the tiny model and real text."""

from __future__ import annotations

import math

import pytest

from client.evaluate import MAX_LABELS, evaluate_model
from shared.data import Record, load_domain, load_task
from shared.errors import DataError


def _reference_nll(model, ids: list[int]) -> float:
    """NLL of ids[1:] given the ids before, one sequence, no padding, no batching."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return -float(logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())


def test_perplexity_matches_a_one_by_one_reference(tiny):
    tok = tiny.tokenizer
    short = [t for t in load_domain("finance") if len(tok(t)["input_ids"]) < 250]
    texts = short[:6]
    nll = tokens = 0.0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        nll += _reference_nll(tiny.model, [tok.bos_token_id, *ids])
        tokens += len(ids)
    result = evaluate_model(tiny.model, tok, [Record(text=t) for t in texts], batch_size=4)
    assert result.kind == "text" and result.n_records == 6 and result.n_tokens == tokens
    assert result.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    words = sum(len(t.split()) for t in texts)
    assert result.word_perplexity == pytest.approx(math.exp(nll / words), rel=1e-4)
    assert result.bits_per_byte == pytest.approx(
        nll / sum(len(t.encode()) for t in texts) / math.log(2), rel=1e-4
    )


def test_long_texts_are_scored_in_windows_every_token_once(tiny):
    long = " ".join(load_domain("law/licenses")[:30])
    ids = tiny.tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 256
    result = evaluate_model(tiny.model, tiny.tokenizer, [Record(text=long)])
    assert result.n_tokens == len(ids)
    assert math.isfinite(result.perplexity) and result.perplexity > 1


def test_batching_and_padding_do_not_change_the_scores(tiny):
    records = [Record(text=t) for t in load_domain("math")[:10]]
    one = evaluate_model(tiny.model, tiny.tokenizer, records, batch_size=1)
    many = evaluate_model(tiny.model, tiny.tokenizer, records, batch_size=7)
    assert one.perplexity == pytest.approx(many.perplexity, rel=1e-4)
    assert one.n_tokens == many.n_tokens


def test_accuracy_is_the_argmax_of_label_likelihoods(tiny):
    tok = tiny.tokenizer
    fits = [r for r in load_task("news/category") if len(tok(r.prompt)["input_ids"]) < 240]
    records = fits[:12]
    labels = sorted({r.response for r in records})
    hits = 0
    for record in records:
        context = tok(f"{record.prompt}\n", add_special_tokens=False)["input_ids"]
        scores = {}
        for label in labels:
            target = tok(label, add_special_tokens=False)["input_ids"]
            full = [*context, *target]
            whole = _reference_nll(tiny.model, full)
            prefix = _reference_nll(tiny.model, context)
            scores[label] = -(whole - prefix)  # log p(target | context)
        hits += max(scores, key=scores.__getitem__) == record.response
    result = evaluate_model(tiny.model, tok, records, batch_size=5, max_length=256)
    assert result.kind == "labelled" and result.n_labels == len(labels)
    assert result.accuracy == pytest.approx(hits / len(records))
    assert 0.0 <= result.accuracy_norm <= 1.0
    assert math.isfinite(result.perplexity)


def test_an_open_label_set_reports_only_the_response_perplexity(tiny):
    records = [Record(prompt=f"Question {i}?", response=f"answer number {i}") for i in range(70)]
    assert len(records) > MAX_LABELS
    result = evaluate_model(tiny.model, tiny.tokenizer, records)
    assert result.accuracy is None and result.n_labels == 0
    assert result.n_tokens > 70 and math.isfinite(result.perplexity)


def test_mixed_or_empty_data(tiny):
    mixed = [Record(text="plain text here"), Record(prompt="Q?", response="A")]
    assert evaluate_model(tiny.model, tiny.tokenizer, mixed).kind == "text"
    with pytest.raises(DataError, match="no records"):
        evaluate_model(tiny.model, tiny.tokenizer, [])


def test_max_words_scores_a_texts_first_words_and_a_prompts_last(tiny):
    """The simulation's speed option: the same maths on records cut before scoring."""
    text = Record(text="one two three four five six")
    pair = Record(prompt="alpha beta gamma delta epsilon", response="zeta eta")
    for record, cut in (
        (text, Record(text="one two three")),
        (pair, Record(prompt="gamma delta epsilon", response="zeta eta")),
    ):
        clipped = evaluate_model(tiny.model, tiny.tokenizer, [record], max_words=3)
        by_hand = evaluate_model(tiny.model, tiny.tokenizer, [cut])
        assert clipped.perplexity == by_hand.perplexity
        assert clipped.n_tokens == by_hand.n_tokens


def test_bfloat16_scoring_runs_in_bfloat16_and_stays_close_to_float32(tiny):
    """``precision="bfloat16"`` autocasts the forward passes (so the score moves by
    rounding, it is not a no-op) and the perplexity stays within a few tenths of a percent."""
    records = [Record(text=t) for t in load_domain("finance")[:8]]
    exact = evaluate_model(tiny.model, tiny.tokenizer, records, max_words=48)
    fast = evaluate_model(tiny.model, tiny.tokenizer, records, max_words=48, precision="bfloat16")
    assert fast.n_tokens == exact.n_tokens
    assert fast.perplexity != exact.perplexity
    assert fast.perplexity == pytest.approx(exact.perplexity, rel=5e-3)
    assert next(tiny.model.parameters()).dtype.is_floating_point  # weights untouched:
    assert str(next(tiny.model.parameters()).dtype) == "torch.float32"
