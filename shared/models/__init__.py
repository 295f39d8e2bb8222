"""Offline models: causal LMs by name or folder, and the sentence encoder for RKME specs.

Importing this package is instant and touches no disk; torch, transformers and
sentence-transformers are imported when a model is first loaded.
"""

from shared.models.causal import LoadedModel, list_models, load_causal_lm, model_ref
from shared.models.encoder import SentenceEncoder, load_encoder
from shared.models.refs import ModelInfo, ModelRef, weights_sha256

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "ModelRef",
    "SentenceEncoder",
    "list_models",
    "load_causal_lm",
    "load_encoder",
    "model_ref",
    "weights_sha256",
]
