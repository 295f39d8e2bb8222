"""One contributor turns private text into a signed learnware, and optionally submits it.

The Python API behind ``lwm contribute`` (for notebooks)::

    card = LearnwareCard(name="bank-news", domain="finance", task="text-generation",
                         description="...", license="MIT")
    config = ContributeConfig(card, spec=SpecSettings(("rkme",), 4.0),
                              finetune=FinetuneConfig(dp_epsilon=8.0))
    make_learnware("data.jsonl", config, "me.key", "out/bank-news")      # package only
    verdict = contribute("data.jsonl", config, Connection("host:7443", Path("me.key"), ca))

What leaves the machine is the adapter, the DP spec, the manifest and the signature; the
texts never do. Everything that can be checked before training is (the output folder, the
data, the key, the market's schema, its base models, the spec model or encoder), so a wrong
argument costs seconds, not a training run. Training ends in ``client.publish.publish``,
which writes the manifest, signs, packs (renamed into place: an error at any step leaves
nothing behind) and submits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from client.finetune import NO_DP_MECHANISM, FinetuneConfig, finetune_lora
from client.publish import LearnwareCard, Published, SpecSettings, Verdict, publish
from shared import signing
from shared.data.columns import DataPath
from shared.errors import AlreadyExists, DataError, InvalidInput, SchemaMismatch
from shared.home import Home
from shared.models.device import CPU, Placement
from shared.privacy import DEFAULT_DELTA, PrivacyBudget
from shared.spec.schema import MarketSchema

if TYPE_CHECKING:
    from client.market import Connection, MarketClient
    from client.specs import SpecMaker
    from shared.learnware import Package
    from shared.models import ModelRef
    from shared.spec.record import Specification

Texts = Sequence[str] | DataPath
Key = signing.Ed25519PrivateKey | str | Path


@dataclass(frozen=True)
class ContributeConfig:
    """What the learnware is and how it is made; validated before anything runs.

    ``learnware`` holds the manifest's fields; ``base_model`` is ``tiny``, ``smollm2-135m``
    or a local Hugging Face folder; ``spec`` the spec kinds and their DP epsilon; the
    adapter's budget is ``finetune.dp_epsilon`` (None: trained without DP). ``delta``
    applies to every release and overrides ``finetune.delta``. ``placement`` is where
    training runs (specs: its device, in float32; ``shared.models.device``).
    """

    learnware: LearnwareCard
    base_model: str = "tiny"
    spec: SpecSettings = field(default_factory=SpecSettings)
    delta: float = DEFAULT_DELTA
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    placement: Placement = CPU

    def __post_init__(self) -> None:
        for name, kind in (
            ("learnware", LearnwareCard),
            ("spec", SpecSettings),
            ("finetune", FinetuneConfig),
            ("placement", Placement),
        ):
            if not isinstance(getattr(self, name), kind):
                raise InvalidInput(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not isinstance(self.base_model, str) or not self.base_model:
            raise InvalidInput(f"base_model must name a model, got {self.base_model!r}")
        self.spec_budget  # noqa: B018 - PrivacyError for a bad delta
        object.__setattr__(self, "finetune", replace(self.finetune, delta=self.delta))

    @property
    def spec_budget(self) -> PrivacyBudget:
        return self.spec.budget(self.delta)


# ---------------------------------------------------------------- API


def load_texts(data: Texts) -> list[str]:
    """Texts from a data file or folder (``shared.data.load_dataset``), or given directly."""
    if isinstance(data, DataPath):
        from shared.data import load_dataset

        return load_dataset(data).texts()
    texts = list(data)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError("the texts must be a non-empty list of non-blank strings")
    return texts


def make_learnware(
    data: Texts,
    config: ContributeConfig,
    key: Key,
    out_dir: str | Path,
    *,
    home: Home | None = None,
    schema: MarketSchema | None = None,
    accepted_base_models: Sequence[ModelRef] | None = None,
    progress: bool = False,
    noise_seed: int | None = None,
) -> Package:
    """Fine-tune, make the DP spec, write the manifest, sign: a learnware folder at ``out_dir``.

    ``schema`` is the market's (``MarketClient.schema()``); None uses the local default.
    ``accepted_base_models`` lists the market's base models; None accepts any.
    ``noise_seed`` fixes the DP noise of both releases (tests only). Raises, before any
    training: ``AlreadyExists`` (``out_dir`` exists), ``DataError``, ``InvalidInput``/
    ``NotFound`` (key), ``SchemaMismatch`` (kind or base model not accepted, other spec
    model), ``ModelUnavailable``. Nothing is left at ``out_dir`` on any error.
    """
    private_key = key if isinstance(key, signing.Ed25519PrivateKey) else _load_key(key)
    made = _make(
        data,
        config,
        private_key,
        Path(out_dir),
        home,
        schema,
        accepted_base_models,
        progress=progress,
        noise_seed=noise_seed,
    )
    return made.package


def contribute(
    data: Texts,
    config: ContributeConfig,
    connection: Connection,
    *,
    home: Home | None = None,
    progress: bool = False,
    noise_seed: int | None = None,
) -> Verdict:
    """Make a learnware under the market's schema and submit it; returns the market's verdict.

    ``connection.key_path`` is the contributor key: it signs the package and the calls. Its
    role is asked first (``WhoAmI``) and the schema next, so a key that may not submit
    (``PermissionDenied``, ``Unauthenticated`` when unknown or revoked), an unreachable
    market (``Unavailable``) or a base model it does not accept (``SchemaMismatch``) fails
    before any model loads. A refused submission raises
    the server's error. The package lives in a temporary folder and is always removed.
    """
    from client.market import MarketClient

    if connection.key_path is None:
        raise InvalidInput("contributing needs the contributor's key (--key)")
    private_key = _load_key(connection.key_path)
    with MarketClient(connection) as client:
        client.require_role("contributor", "submitting a learnware")
        texts = load_texts(data)
        remote = client.schema()
        with tempfile.TemporaryDirectory(prefix="lwm-submit-") as tmp:
            made = _make(
                texts,
                config,
                private_key,
                Path(tmp) / config.learnware.name,
                home,
                remote.schema,
                remote.base_models,
                progress=progress,
                noise_seed=noise_seed,
                client=client,
            )
    assert made.verdict is not None  # publish submits when given a client
    return made.verdict


def _make(
    data: Texts,
    config: ContributeConfig,
    key: signing.Ed25519PrivateKey,
    out: Path,
    home: Home | None,
    schema: MarketSchema | None,
    accepted_base_models: Sequence[ModelRef] | None,
    *,
    progress: bool,
    noise_seed: int | None,
    client: MarketClient | None = None,
) -> Published:
    """Check everything that can be checked, train, make the specs, then ``publish``."""
    ready = _prepare(data, out, config, home, schema, accepted_base_models)
    from shared.models import load_causal_lm

    base = load_causal_lm(config.base_model, ready.home, config.placement)
    with tempfile.TemporaryDirectory(prefix="lwm-contribute-") as tmp:
        trained = finetune_lora(
            ready.texts,
            base,
            config.finetune,
            Path(tmp) / "adapter",
            progress=progress,
            noise_seed=noise_seed,
        )
        specs = ready.specs(config, progress, noise_seed)
        return publish(
            config.learnware,
            ready.base_ref,
            trained.adapter_dir,
            trained.report,
            specs,
            key,
            out,
            delta=config.delta,
            client=client,
        )


def package_adapter(
    adapter: str | Path,
    data: Texts,
    config: ContributeConfig,
    key: Key,
    out_dir: str | Path,
    *,
    home: Home | None = None,
    progress: bool = False,
    noise_seed: int | None = None,
) -> Package:
    """Wrap an adapter trained anywhere (a peft LoRA ``save_pretrained`` folder for
    ``config.base_model``) with DP specs of ``data``, a manifest and a signature: a
    learnware folder at ``out_dir``, the same road as ``make_learnware`` without training
    (``config.finetune`` is unused).

    The adapter's config is checked against the market's LoRA policy
    (``shared.learnware.adapter_policy``) before anything else, and its tensors against
    the base model's modules before any spec is made; a refused one raises InvalidInput.
    Its training is not known here, so the manifest claims no DP for it: the learnware's
    total epsilon is None (no guarantee), whatever the specs' budgets.
    """
    from shared.learnware.adapter_policy import check_adapter, check_config, describe_model
    from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
    from shared.models import load_causal_lm
    from shared.privacy import DPReport

    folder = Path(adapter)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise InvalidInput(f"{folder} is not a peft adapter folder: {name} is missing")
    lora = check_config(folder / ADAPTER_CONFIG)
    private_key = key if isinstance(key, signing.Ed25519PrivateKey) else _load_key(key)
    ready = _prepare(data, Path(out_dir), config, home, None, None)
    base = load_causal_lm(config.base_model, ready.home)  # its module shapes only
    shapes = describe_model(config.base_model, ready.base_ref, base.model)
    check_adapter(folder / ADAPTER_WEIGHTS, lora, shapes)
    unknown = DPReport(
        mechanism=f"{NO_DP_MECHANISM} (adapter trained elsewhere: no DP claimed)",
        epsilon=None,
        delta=0.0,
        noise_multiplier=0.0,
    )
    specs = ready.specs(config, progress, noise_seed)
    published = publish(
        config.learnware, ready.base_ref, folder, unknown, specs, private_key, Path(out_dir),
        delta=config.delta,
    )  # fmt: skip
    return published.package


@dataclass(frozen=True)
class _Prepared:
    """What every check before the expensive work gave: the texts, the accepted base
    model's identity and a spec maker with its models loaded."""

    texts: list[str]
    home: Home
    base_ref: ModelRef
    maker: SpecMaker

    def specs(
        self, config: ContributeConfig, progress: bool, noise_seed: int | None
    ) -> list[Specification]:
        """One DP spec of the texts per kind of ``config.spec``."""
        return [
            self.maker.make(self.texts, kind, config.spec_budget, progress, noise_seed)
            for kind in config.spec.kinds
        ]


def _prepare(
    data: Texts,
    out: Path,
    config: ContributeConfig,
    home: Home | None,
    schema: MarketSchema | None,
    accepted_base_models: Sequence[ModelRef] | None,
) -> _Prepared:
    """The checks that cost seconds, before any that costs minutes: output folder, data,
    base model accepted, spec models loaded and matching the schema."""
    if out.exists() or out.is_symlink():
        raise AlreadyExists(f"{out} exists; choose a new folder for the learnware")
    texts = load_texts(data)
    config.spec.check_fits(len(texts), config.delta)
    config.finetune.check_fits(len(texts))
    home = home or Home.resolve()
    kinds = config.spec.kinds
    schema = schema or local_schema(home, *kinds)
    base_ref = accepted_base(config.base_model, home, accepted_base_models)
    maker = spec_maker(schema, home, *kinds, placement=config.placement)
    return _Prepared(texts, home, base_ref, maker)


# ---------------------------------------------------------------- steps


def accepted_base(name: str, home: Home, accepted: Sequence[ModelRef] | None) -> ModelRef:
    """The base model's identity, refused (``SchemaMismatch``) unless the market accepts it."""
    from shared.models.causal import builtin_model_id, model_ref

    listed = ", ".join(f"{a.model_id} ({a.sha256[:12]})" for a in accepted or ()) or "none"
    model_id = builtin_model_id(name)
    if accepted is not None and model_id not in (None, *(a.model_id for a in accepted)):
        raise SchemaMismatch(  # before a conversion of minutes
            f"the market does not accept base model {model_id}; it accepts: {listed}"
        )
    ref = model_ref(name, home)
    if accepted is not None and ref not in set(accepted):
        raise SchemaMismatch(
            f"the market does not accept base model {ref.model_id} with weights "
            f"{ref.sha256[:12]}; it accepts: {listed}"
        )
    return ref


def _load_key(path: str | Path) -> signing.Ed25519PrivateKey:
    return signing.load_private_key(path)


def local_schema(home: Home, *kinds: str) -> MarketSchema:
    """The local default schema of ``kinds`` only (other kinds' models are not loaded).

    What a learnware is made under when no market is asked: ``make_learnware`` without a
    schema, and a federation that writes its package to a folder.
    """
    from shared.spec.defaults import default_schema

    return default_schema(home, kinds=kinds, default_kind=kinds[0])


def spec_maker(
    schema: MarketSchema, home: Home, *kinds: str, placement: Placement = CPU
) -> SpecMaker:
    """A ``SpecMaker`` whose encoder and spec model are loaded and checked against the schema.

    Loading first makes a wrong spec model fail before any training; a federated holder
    makes its share of the spec with the same checks.
    """
    from client.specs import SpecMaker
    from shared.spec.schema import PaveSchema, RkmeSchema

    maker = SpecMaker(schema, home, placement)
    for kind in kinds:
        kind_schema = schema.for_kind(kind)
        if isinstance(kind_schema, RkmeSchema):
            maker.encoder(kind_schema)
        elif isinstance(kind_schema, PaveSchema):
            model = maker.model(kind_schema)
            if model.ref.sha256 != kind_schema.model_sha256:
                raise SchemaMismatch(
                    f"the market's PAVE schema needs spec model {kind_schema.model_id} with "
                    f"weights {kind_schema.model_sha256[:12]}, this machine has "
                    f"{model.ref.sha256[:12]}"
                )
    return maker
