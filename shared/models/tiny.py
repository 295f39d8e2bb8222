"""The ``tiny`` model: a small random Llama with a byte-level BPE tokenizer, built in seconds.

It lets every test and CI run exercise the real code paths (peft, opacus, specs, checker)
without a download. Weights come from a fixed torch seed, so every machine builds the same
weights and the same sha256; the tokenizer is trained on public text only (first paragraphs
of the Python standard library's docstrings), never on a holder's data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from shared.models.refs import ModelRef, weights_sha256, write_sidecar

NAME = "tiny"
MODEL_ID = "tiny-llama-v1"
FOLDER = "tiny-v1"
SEED = 20261127
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3
ARCHITECTURE: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def train_tokenizer() -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` (2,048 tokens) trained on stdlib docs.

    No automatic BOS/EOS and no chat template: a plain text-in, ids-out tokenizer, padded on
    the right with ``<pad>``. Byte-level, so any text encodes without ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from shared.data.text import stdlib_docstrings

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=ARCHITECTURE["vocab_size"],
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(stdlib_docstrings(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )


def init_model() -> Any:
    """The random ``LlamaForCausalLM``, seeded without touching torch's global RNG state."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**ARCHITECTURE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model: Any = LlamaForCausalLM(config)
    return model.float().eval()


def build(folder: Path) -> ModelRef:
    """Write the tiny model, tokenizer and sidecar into an (empty, temporary) ``folder``.

    The hash is taken from the folder's weights as a later load will see them.
    """
    from shared.models.causal import load_folder

    tokenizer = train_tokenizer()
    init_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model, _ = load_folder(folder)
    ref = ModelRef(model_id=MODEL_ID, sha256=weights_sha256(model))
    tokenizer_hash = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    source = {
        "weights": f"random LlamaForCausalLM, torch seed {SEED}",
        "tokenizer": "byte-level BPE trained on Python standard library docstrings",
        "tokenizer_sha256": tokenizer_hash,
    }
    write_sidecar(folder, NAME, ref, source=source)
    return ref
