"""Offline models: causal LMs by name or folder, and the sentence encoder for RKME specs.

Importing this package is instant and touches no disk; torch, transformers and
sentence-transformers are imported when a model is first loaded.
"""

from shared.models.causal import (
    LoadedModel,
    list_models,
    load_causal_lm,
    local_model,
    model_ref,
)
from shared.models.encoder import SentenceEncoder, load_encoder
from shared.models.refs import LocalModel, ModelInfo, ModelRef, weights_sha256

__all__ = [
    "LoadedModel",
    "LocalModel",
    "ModelInfo",
    "ModelRef",
    "SentenceEncoder",
    "list_models",
    "load_causal_lm",
    "load_encoder",
    "local_model",
    "model_ref",
    "weights_sha256",
]
