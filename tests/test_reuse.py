"""``lwm reuse`` and ``client.reuse``: the top matches checked on the user's own data here.

Against the real loopback market of ``tests/test_user.py`` (four learnwares of real domains
on ``tiny``), plus the merge's maths on the tiny model alone.
"""

from __future__ import annotations

import json
import math

import pytest
import test_user
from test_user import _jsonl, _market_args, lwm

from client.evaluate import Evaluation, evaluate_model
from client.reuse import (
    BASE,
    MERGED,
    Candidate,
    _write,
    check,
    choose,
    holdout_records,
    merge_adapters,
    reuse,
)
from client.user import fetch_learnware
from shared.data import Record
from shared.errors import InvalidInput

# test_user's market and its thread setting, as fixtures of this module too
world, one_thread = test_user.world, test_user.one_thread


def _evaluation(perplexity: float) -> Evaluation:
    return Evaluation("text", 1, 10, perplexity, perplexity, 1.0, 0.0)


def _candidate(name: str, perplexity: float) -> Candidate:
    members = () if name == BASE else (name,)
    return Candidate(name, name, members, (1.0,) * len(members), 1, _evaluation(perplexity))


def test_the_check_keeps_the_base_model_unless_a_match_beats_it():
    assert choose([_candidate(BASE, 10.0), _candidate("a", 12.0)]).name == BASE
    assert choose([_candidate(BASE, 10.0), _candidate("a", 10.0)]).name == BASE  # a tie
    picked = choose([_candidate(BASE, 10.0), _candidate("a", 9.0), _candidate("b", 8.0)])
    assert picked.name == "b"


def test_a_bad_score_precision_is_refused_before_the_market_is_contacted(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ["a text"] * 20)
    with pytest.raises(InvalidInput, match="--score-precision 'int8'"):
        reuse(data, object(), precision="int8")  # type: ignore[arg-type]  # never reached


def test_the_held_out_slice_is_seeded_and_bounded():
    records = [Record(text=f"text {i}") for i in range(30)]
    first = holdout_records(records, 10, seed=3)
    assert first == holdout_records(records, 10, seed=3) != holdout_records(records, 10, seed=4)
    assert len(set(first)) == 10
    for n in (0, 31):
        with pytest.raises(InvalidInput, match="--holdout"):
            holdout_records(records, n, seed=0)
    assert len(holdout_records(records, None, seed=0)) == 30  # the default, capped by the data
    assert len(holdout_records(records * 2, None, seed=0)) == 50


def test_a_merge_is_the_weighted_sum_of_the_adapters_updates(tiny):
    """peft's ``cat`` merge, exactly: weights (1, 1) act as both adapters switched on at
    once, (1, 0) as the first alone; ranks, alphas and modules may differ."""
    import torch
    from peft import LoraConfig, get_peft_model

    def lora(r: int, alpha: int, modules: list[str]) -> LoraConfig:
        return LoraConfig(r=r, lora_alpha=alpha, target_modules=modules, init_lora_weights=False)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(tiny.model, lora(4, 8, ["q_proj", "v_proj"]), adapter_name="one")
        model.add_adapter("two", lora(8, 4, ["v_proj", "down_proj"]))
    model.eval()
    ids = torch.tensor([[1, 5, 9, 20, 33, 4]])

    def logits(adapter: str | list[str]) -> torch.Tensor:
        model.base_model.set_adapter(adapter)
        with torch.inference_mode():
            return model(input_ids=ids).logits

    both, alone = logits(["one", "two"]), logits("one")
    for weights, expected in (([1.0, 1.0], both), ([1.0, 0.0], alone)):
        merged = merge_adapters(model, ["one", "two"], weights)
        assert torch.allclose(logits(merged), expected, atol=1e-5)
    assert not torch.allclose(alone, both, atol=1e-3)
    with pytest.raises(InvalidInput, match="2 or more"):
        merge_adapters(model, ["one"], [1.0])


def test_reuse_checks_the_top_matches_here_and_spends_only_the_search(world, lwm_home, tmp_path):
    from client.privacy_ledger import PrivacyLedgers

    texts = world["users"]["finance"]
    data = _jsonl(tmp_path / "finance.jsonl", texts)
    before = PrivacyLedgers.at(lwm_home).get(texts)
    out = tmp_path / "pick"
    done = reuse(data, world["uma"], top_k=3, holdout=20, merge=True, out=out, home=lwm_home)
    names = [c.name for c in done.candidates]
    assert names[0] == BASE and names[-1] == MERGED and len(names) == 5
    assert names[1:4] == [m.id for m in done.search.matches]
    best = min(done.candidates, key=lambda c: c.nll)
    assert done.chosen.nll <= done.candidates[0].nll and done.chosen is choose(done.candidates)
    assert done.chosen is best or best.nll >= done.candidates[0].nll
    spent = len(before.releases) if before is not None else 0
    assert done.search.ledger is not None and len(done.search.ledger.releases) == spent + 1
    if done.chosen.name == BASE:
        assert done.written is None and not out.exists()
    else:
        assert done.written == out and (out / "adapter_model.safetensors").is_file()


def test_a_merged_pick_is_written_as_a_plain_peft_folder_that_scores_the_same(
    world, lwm_home, tmp_path
):
    """The merge as ``lwm reuse --out`` writes it: plain peft loads it and scores what the
    check measured (the merged scaling survives the reload)."""
    from peft import AutoPeftModelForCausalLM

    from client.run import load_learnwares
    from shared.models import load_causal_lm

    ids = [world["ids"]["finance"], world["ids"]["math"]]
    verified = {i: fetch_learnware(world["uma"], i, tmp_path / i, home=lwm_home) for i in ids}
    loaded = load_learnwares(verified, home=lwm_home)
    records = [Record(text=t) for t in world["users"]["finance"][:8]]
    matches = [_match(i, rank) for rank, i in enumerate(ids, 1)]
    merged = check(loaded, matches, records, merge=True)[-1]
    assert merged.name == MERGED and merged.weights == (0.5, 0.5)
    written = _write(merged, loaded, tmp_path / "merged", lwm_home)
    assert written is not None
    plain = AutoPeftModelForCausalLM.from_pretrained(str(written)).eval()
    tokenizer = load_causal_lm("tiny", lwm_home).tokenizer
    again = evaluate_model(plain, tokenizer, records)
    assert math.isclose(again.perplexity, merged.evaluation.perplexity, rel_tol=1e-4)


def _match(learnware_id: str, rank: int):  # type: ignore[no-untyped-def]
    from client.user import SearchMatch

    return SearchMatch(
        rank, learnware_id, f"lw{rank}", "d", "t", "alice", "k", "tiny", "sha", 1.0, 0.0,
        "usable", "MIT", None, 1,
    )


def test_cli_reuse_prints_the_check_and_its_pick(world, lwm_home, tmp_path):
    data = _jsonl(tmp_path / "math.jsonl", world["users"]["math"])
    out = tmp_path / "pick"
    args = ["reuse", str(data), *_market_args(world), "--top-k", "2", "--holdout", "12"]
    args += ["--budget-epsilon", "inf"]
    found = json.loads(lwm(world, lwm_home, *args, "--merge", "--json", "--out", str(out)).stdout)
    assert [c["name"] for c in found["candidates"]][0] == BASE
    assert len(found["candidates"]) == 4 and found["check"]["records"] == 12
    assert "no privacy spent" in found["check"]["privacy"]
    chosen = [c for c in found["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["name"] == found["chosen"]
    scores = {c["name"]: c["evaluation"]["perplexity"] for c in found["candidates"]}
    assert scores[found["chosen"]] == min(scores.values()) or found["chosen"] == BASE
    assert (found["written"] is None) == (found["chosen"] == BASE)
    assert found["search"]["results"][0]["domain"] == "math"
    table = lwm(world, lwm_home, *args).stdout
    assert "local check: 12 held-out records" in table and "no privacy spent" in table
    assert "picked" in table or "kept the base model" in table
