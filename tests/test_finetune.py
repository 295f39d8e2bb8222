"""LoRA fine-tuning on real text: it learns the domain, DP-SGD really trains, epsilon is honest."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from client.finetune import FinetuneConfig, finetune_lora, lora_model, perplexity
from shared.data import load_domain, split
from shared.errors import DataError, InvalidInput, LwmError, PrivacyError
from shared.models import load_causal_lm
from shared.privacy import rdp_epsilon


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's ops are too small to gain from threads; on a shared 2-core machine a
    second thread mostly waits for the first (the perplexity test: 4.7 s with one, 34 s with
    two, measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(lwm_home):
    return load_causal_lm("tiny", lwm_home)


@pytest.fixture(scope="module")
def finance():
    """Disjoint training and held-out paragraphs of BBC business news."""
    return split(load_domain("finance"), 300, 80, seed=0)


def _load_adapter(base, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder))


def _lora_b(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        k: v
        for k, v in load_file(str(folder / "adapter_model.safetensors")).items()
        if "lora_B" in k
    }


def test_adapter_lowers_held_out_perplexity_of_its_domain(tiny, finance, tmp_path):
    train, held_out = finance
    base_weights = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    base_ppl = perplexity(tiny.model, tiny.tokenizer, held_out)

    result = finetune_lora(train, tiny, FinetuneConfig(steps=40), tmp_path / "adapter")
    tuned_ppl = perplexity(_load_adapter(tiny, result.adapter_dir), tiny.tokenizer, held_out)

    assert tuned_ppl < 0.95 * base_ppl, (base_ppl, tuned_ppl)
    assert result.report.epsilon is None and result.report.delta == 0.0
    assert len(result.losses) == 40
    # The caller's base model is never adapted in place.
    assert all(torch.equal(v, base_weights[k]) for k, v in tiny.model.state_dict().items())


def test_adapter_is_plain_peft_and_names_the_base_by_public_id(tiny, finance, tmp_path):
    result = finetune_lora(finance[0][:40], tiny, FinetuneConfig(steps=2), tmp_path / "a")
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny.ref.model_id  # no local path leaks
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert not list(result.adapter_dir.glob("*.bin"))  # safetensors only


def test_dp_sgd_changes_lora_weights_and_reports_the_accountants_epsilon(tiny, finance, tmp_path):
    train, _ = finance
    config = FinetuneConfig(steps=8, batch_size=16, dp_epsilon=4.0, delta=1e-5)

    result = finetune_lora(train, tiny, config, tmp_path / "dp", noise_seed=0)

    lora_b = _lora_b(result.adapter_dir)
    assert lora_b and all(t.abs().max() > 0 for t in lora_b.values())  # opacus#820
    report = result.report
    assert report.mechanism == "dp-sgd"
    assert report.sample_rate == pytest.approx(1 / math.ceil(300 / 16))
    assert report.steps == 8 and report.noise_multiplier > 0
    assert report.epsilon == pytest.approx(rdp_epsilon(report.history(), 1e-5), rel=1e-9)
    assert 3.5 < report.epsilon <= 4.0
    assert result.per_sample_grad_norms, "opacus computed no per-sample gradients"
    assert report.details["clip_norm"] == config.clip_norm


def test_dp_noise_is_fresh_although_training_is_seeded(tiny, finance, tmp_path):
    """Training seeds torch (``config.seed``) so batches repeat; the DP noise must not: two
    releases with the same config differ, and the same ``noise_seed`` (tests only) shows the
    noise is the only difference. Before, opacus drew from torch's global generator, seeded
    with 0 for every release, so anyone could regenerate and subtract the noise."""
    train, _ = finance
    config = FinetuneConfig(steps=2, batch_size=16, dp_epsilon=4.0, delta=1e-5)

    def trained(name: str, noise_seed: int | None) -> dict[str, torch.Tensor]:
        return _lora_b(
            finetune_lora(train, tiny, config, tmp_path / name, noise_seed=noise_seed).adapter_dir
        )

    first, second = trained("a", None), trained("b", None)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    seeded, again = trained("c", 7), trained("d", 7)
    assert all(torch.equal(seeded[k], again[k]) for k in seeded)


def test_training_that_does_not_move_the_weights_is_an_error(tiny, finance, tmp_path, monkeypatch):
    """The silent no-train of opacus over peft must not ship a zero adapter."""
    for optimizer in (torch.optim.SGD, torch.optim.AdamW):
        monkeypatch.setattr(optimizer, "step", lambda self, closure=None: None)
    config = FinetuneConfig(steps=2, batch_size=16, dp_epsilon=8.0)
    with pytest.raises(LwmError, match="did not change the LoRA weights"):
        finetune_lora(finance[0][:64], tiny, config, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_bad_settings_are_clear_errors(tiny):
    with pytest.raises(PrivacyError, match="epsilon"):
        FinetuneConfig(dp_epsilon=0.0)
    with pytest.raises(PrivacyError, match="epsilon"):
        FinetuneConfig(dp_epsilon=-1.0)
    with pytest.raises(InvalidInput, match="rank"):
        FinetuneConfig(rank=0)
    with pytest.raises(InvalidInput, match="optimizer"):
        FinetuneConfig(optimizer="rmsprop")
    with pytest.raises(InvalidInput, match="no_such_proj"):
        lora_model(tiny, FinetuneConfig(target_modules=("no_such_proj",)))
    with pytest.raises(DataError, match="empty"):
        finetune_lora([], tiny, FinetuneConfig(), "unused")
