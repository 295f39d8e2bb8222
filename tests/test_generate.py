"""``client.run.generate`` on the tiny model: the chat template, sampling options, seeds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from client.run import Sampling, generate
from shared.errors import InvalidInput

#: A minimal chat template in the Hugging Face format (the tiny tokenizer has none).
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def learnware(tiny):
    """The tiny model as ``generate`` takes a loaded learnware (no adapter needed here)."""
    return SimpleNamespace(tokenizer=tiny.tokenizer, active_model=lambda: tiny.model)


@pytest.fixture
def chat_learnware(learnware):
    learnware.tokenizer.chat_template = TEMPLATE
    yield learnware
    learnware.tokenizer.chat_template = None


def test_without_a_template_the_prompt_goes_in_as_plain_text(learnware):
    out = generate(learnware, "The market", 4)

    assert out.prompt == "The market" and not out.chat


def test_the_chat_template_wraps_the_prompt_unless_no_chat(chat_learnware):
    chatted = generate(chat_learnware, "The market", 4)
    plain = generate(chat_learnware, "The market", 4, chat=False)

    assert chatted.chat and chatted.prompt == "<|user|>The market</s><|assistant|>"
    assert not plain.chat and plain.prompt == "The market"


def test_greedy_is_the_default_and_a_seed_reproduces_a_sample(learnware):
    import torch

    hot = Sampling(temperature=1.5, top_p=0.95, top_k=200, seed=7)
    before = torch.random.get_rng_state()

    greedy = [generate(learnware, "Shares fell", 8).text for _ in range(2)]
    seeded = [generate(learnware, "Shares fell", 8, sampling=hot).text for _ in range(2)]
    others = {
        generate(learnware, "Shares fell", 8, sampling=Sampling(1.5, seed=s)).text for s in range(4)
    }

    assert (
        greedy[0]
        == greedy[1]
        == generate(learnware, "Shares fell", 8, sampling=Sampling(seed=3)).text
    )
    assert seeded[0] == seeded[1] != greedy[0]
    assert len(others) > 1  # the seed, not a fixed stream, picks the sample
    assert torch.equal(torch.random.get_rng_state(), before)  # torch's own generator untouched


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"temperature": -0.1}, "--temperature"),
        ({"temperature": float("nan")}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
        ({"top_k": 0}, "--top-k"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_sampling_values_are_refused_with_their_flag(options, flag):
    with pytest.raises(InvalidInput, match=flag):
        Sampling(**options)
