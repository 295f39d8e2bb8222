"""Make specs of local data under a market schema: the step both contributors and users run.

Raw texts go in, a released (DP unless asked otherwise) ``Specification`` comes out; only
the latter ever leaves this machine. Models are loaded lazily, once per ``SpecMaker``, and
PAVE's frozen lower-layer states are kept per text for the maker's life.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import SchemaMismatch
from shared.home import Home
from shared.models.device import CPU, Placement
from shared.privacy import PrivacyBudget
from shared.spec.record import Specification
from shared.spec.schema import MarketSchema, PaveSchema, RkmeSchema


@dataclass
class SpecMaker:
    """Holds the loaded encoder / spec model for a schema and makes specs with them.

    The models run on ``placement``'s device, always in float32 (``Placement.for_specs``:
    a spec must stay comparable with specs made on other machines)."""

    schema: MarketSchema
    home: Home
    placement: Placement = CPU
    _encoder: Any = field(default=None, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)
    _lower: Any = field(default=None, init=False, repr=False)  # PAVE's kept lower states

    def make(
        self,
        texts: Sequence[str],
        kind: str,
        budget: PrivacyBudget,
        progress: bool = False,
        noise_seed: int | None = None,
    ) -> Specification:
        schema = self.schema.for_kind(kind)
        if isinstance(schema, RkmeSchema):
            return self._make_rkme(texts, schema, budget, progress, noise_seed)
        return self._make_pave(texts, schema, budget, progress, noise_seed)

    def embed(self, texts: Sequence[str], progress: bool = False) -> Any:
        """Sentence embeddings under the RKME schema's encoder (cached on disk)."""
        schema = self.schema.for_kind("rkme")
        assert isinstance(schema, RkmeSchema)
        return self.encoder(schema).encode_cached(list(texts), progress=progress)

    def encoder(self, schema: RkmeSchema) -> Any:
        if self._encoder is None:
            from shared.models import load_encoder

            encoder = load_encoder(self.home, self.placement.device)
            if encoder.ref.sha256 != schema.encoder_sha256:
                raise SchemaMismatch(
                    f"the market's RKME schema needs encoder {schema.encoder_id} with weights "
                    f"{schema.encoder_sha256[:12]}, this machine has {encoder.ref.sha256[:12]}"
                )
            self._encoder = encoder
        return self._encoder

    def model(self, schema: PaveSchema) -> Any:
        if self._model is None:
            from shared.models import load_causal_lm

            placement = self.placement.for_specs()
            self._model = load_causal_lm(schema.model_name, self.home, placement)
        return self._model

    def _make_rkme(
        self,
        texts: Sequence[str],
        schema: RkmeSchema,
        budget: PrivacyBudget,
        progress: bool,
        noise_seed: int | None,
    ) -> Specification:
        import numpy as np

        from shared.spec.rkme import make_rkme_spec

        embeddings = (
            self.embed(texts, progress=progress) if texts else np.zeros((0, schema.input_dim))
        )
        rng = np.random.default_rng(noise_seed) if noise_seed is not None else None
        return make_rkme_spec(embeddings, schema, budget, rng)

    def _make_pave(
        self,
        texts: Sequence[str],
        schema: PaveSchema,
        budget: PrivacyBudget,
        progress: bool,
        noise_seed: int | None,
    ) -> Specification:
        from shared.spec.frozen import LowerStates
        from shared.spec.pave import run_pave

        model = self.model(schema)
        if self._lower is None:  # a text's frozen lower-layer states serve every later spec
            self._lower = LowerStates()
        return run_pave(
            texts, model, schema, budget, progress, noise_seed, lower=self._lower
        ).spec
