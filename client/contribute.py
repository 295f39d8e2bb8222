"""One contributor turns private text into a signed learnware, and optionally submits it.

The Python API behind ``lwm contribute`` (for notebooks)::

    config = ContributeConfig(name="bank-news", domain="finance", task="text-generation",
                              description="...", license="MIT", spec_kinds=("rkme",),
                              spec_epsilon=4.0, finetune=FinetuneConfig(dp_epsilon=8.0))
    make_learnware("data.jsonl", config, "me.key", "out/bank-news")      # package only
    verdict = contribute("data.jsonl", config, Connection("host:7443", Path("me.key"), ca))

What leaves the machine is the adapter, the DP spec, the manifest and the signature; the
texts never do. Everything that can be checked before training is (the output folder, the
data, the key, the market's schema, its base models, the spec model or encoder), so a wrong
argument costs seconds, not a training run. The package is built in temporary folders and
renamed into place by ``build_package``: an error at any step leaves nothing behind.

Privacy: the adapter (DP-SGD, or none) and the spec are two releases on the same data. The
manifest lists both and their RDP composition in one accountant (``DpLedger.compose``); the
total is None (no guarantee) when the adapter is trained without DP.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from client.finetune import FinetuneConfig, finetune_lora
from shared import signing
from shared.errors import AlreadyExists, InvalidInput, SchemaMismatch
from shared.home import Home
from shared.learnware import (
    Contributor,
    DpLedger,
    Manifest,
    SpecEntry,
    build_package,
)
from shared.learnware import _check as check  # the manifest's own rules, checked up front
from shared.learnware.manifest import utc_now_iso
from shared.privacy import DEFAULT_DELTA, DPReport, PrivacyBudget
from shared.spec.schema import KINDS, MarketSchema

if TYPE_CHECKING:
    from client.market import Connection
    from client.specs import SpecMaker
    from shared.models import ModelRef
    from shared.spec.record import Specification

Texts = Sequence[str] | str | Path
Key = signing.Ed25519PrivateKey | str | Path


@dataclass(frozen=True)
class ContributeConfig:
    """What the learnware is and how it is made; validated before anything runs.

    ``base_model`` is ``tiny``, ``smollm2-135m`` or a local Hugging Face folder.
    ``spec_kinds`` are the spec kinds the package carries (one spec of the same data each,
    so each is a release the accountant composes; users search with any of them).
    ``spec_epsilon`` is the DP budget of each spec (always private here); the adapter's is
    ``finetune.dp_epsilon`` (None: trained without DP). ``delta`` applies to both and
    overrides ``finetune.delta``. ``contributor`` is the display name in the manifest.
    """

    name: str
    domain: str
    task: str
    description: str
    license: str
    base_model: str = "tiny"
    spec_kinds: tuple[str, ...] = ("rkme",)
    spec_epsilon: float = 4.0
    delta: float = DEFAULT_DELTA
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    contributor: str = "contributor"

    def __post_init__(self) -> None:
        for name in ("name", "domain", "task"):
            check.slug(name, getattr(self, name))
        check.text("description", self.description, max_len=4000, multiline=True, empty=True)
        check.spdx("license", self.license)
        check.text("contributor", self.contributor, max_len=128)
        if not isinstance(self.base_model, str) or not self.base_model:
            raise InvalidInput(f"base_model must name a model, got {self.base_model!r}")
        if isinstance(self.spec_kinds, str | list):
            kinds = [self.spec_kinds] if isinstance(self.spec_kinds, str) else self.spec_kinds
            object.__setattr__(self, "spec_kinds", tuple(kinds))
        if not self.spec_kinds or len(set(self.spec_kinds)) != len(self.spec_kinds):
            raise InvalidInput(f"spec_kinds must name distinct kinds, got {self.spec_kinds!r}")
        for kind in self.spec_kinds:
            if kind not in KINDS:
                raise SchemaMismatch(f"unknown spec kind {kind!r}; use {', '.join(KINDS)}")
        if not isinstance(self.finetune, FinetuneConfig):
            raise InvalidInput(f"finetune must be a FinetuneConfig, got {self.finetune!r}")
        self.spec_budget  # noqa: B018 - PrivacyError for epsilon <= 0 or a bad delta
        object.__setattr__(self, "finetune", replace(self.finetune, delta=self.delta))

    @property
    def spec_budget(self) -> PrivacyBudget:
        return PrivacyBudget(self.spec_epsilon, self.delta)


@dataclass(frozen=True)
class Verdict:
    """The market's answer to a submission: ``status`` is USABLE, REJECTED or PENDING."""

    learnware_id: str
    status: str
    reason: str
    manifest: Manifest

    @property
    def usable(self) -> bool:
        return self.status == "USABLE"


# ---------------------------------------------------------------- API


def load_texts(data: Texts) -> list[str]:
    """Texts from a data file or folder (``shared.data.load_dataset``), or given directly."""
    if isinstance(data, str | Path):
        from shared.data import load_dataset

        return load_dataset(data).texts()
    texts = list(data)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        from shared.errors import DataError

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
) -> Path:
    """Fine-tune, make the DP spec, write the manifest, sign: a learnware folder at ``out_dir``.

    ``schema`` is the market's (``MarketClient.schema()``); None uses the local default.
    ``accepted_base_models`` lists the market's base models; None accepts any.
    ``noise_seed`` fixes the DP noise of both releases (tests only). Raises, before any
    training: ``AlreadyExists`` (``out_dir`` exists), ``DataError``, ``InvalidInput``/
    ``NotFound`` (key), ``SchemaMismatch`` (kind or base model not accepted, other spec
    model), ``ModelUnavailable``. Nothing is left at ``out_dir`` on any error.
    """
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise AlreadyExists(f"{out} exists; choose a new folder for the learnware")
    texts = load_texts(data)
    private_key = key if isinstance(key, signing.Ed25519PrivateKey) else _load_key(key)
    home = home or Home.resolve()
    schema = schema or local_schema(home, *config.spec_kinds)
    base_ref = accepted_base(config.base_model, home, accepted_base_models)
    maker = spec_maker(schema, home, *config.spec_kinds)
    from shared.models import load_causal_lm

    base = load_causal_lm(config.base_model, home)
    with tempfile.TemporaryDirectory(prefix="lwm-contribute-") as tmp:
        work = Path(tmp)
        trained = finetune_lora(
            texts, base, config.finetune, work / "adapter", progress=progress, noise_seed=noise_seed
        )
        specs = [
            maker.make(texts, kind, config.spec_budget, progress, noise_seed)
            for kind in config.spec_kinds
        ]
        from shared.spec.record import save_specs

        spec_file = save_specs(work / "spec.safetensors", specs)
        manifest = build_manifest(config, base_ref, trained.report, specs, private_key)
        return build_package(out, trained.adapter_dir, spec_file, manifest, private_key)


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

    ``connection.key_path`` is the contributor key: it signs the package and the calls. The
    schema is fetched first, so an unreachable market (``Unavailable``) or a base model it
    does not accept (``SchemaMismatch``) fails before training. A refused submission raises
    the server's error. The package lives in a temporary folder and is always removed.
    """
    from client.market import MarketClient, status_name

    if connection.key_path is None:
        raise InvalidInput("contributing needs the contributor's key (--key)")
    texts = load_texts(data)
    private_key = _load_key(connection.key_path)
    with MarketClient(connection) as client:
        remote = client.schema()
        with tempfile.TemporaryDirectory(prefix="lwm-submit-") as tmp:
            package = make_learnware(
                texts,
                config,
                private_key,
                Path(tmp) / config.name,
                home=home,
                schema=remote.schema,
                accepted_base_models=remote.base_models,
                progress=progress,
                noise_seed=noise_seed,
            )
            manifest = Manifest.from_json((package / "manifest.json").read_bytes())
            reply = client.submit(package)
    return Verdict(reply.id, status_name(reply.status), reply.reason, manifest)


# ---------------------------------------------------------------- steps


def accepted_base(name: str, home: Home, accepted: Sequence[ModelRef] | None) -> ModelRef:
    """The base model's identity, refused (``SchemaMismatch``) unless the market accepts it."""
    from shared.models import model_ref

    ref = model_ref(name, home)
    if accepted is not None and ref not in set(accepted):
        listed = ", ".join(f"{a.model_id} ({a.sha256[:12]})" for a in accepted) or "none"
        raise SchemaMismatch(
            f"the market does not accept base model {ref.model_id} with weights "
            f"{ref.sha256[:12]}; it accepts: {listed}"
        )
    return ref


def build_manifest(
    config: ContributeConfig,
    base: ModelRef,
    adapter: DPReport,
    specs: Specification | Sequence[Specification],
    key: signing.Ed25519PrivateKey,
) -> Manifest:
    """The manifest of one adapter and its specs (one per kind), every release on the same
    data composed in one accountant."""
    from shared.spec.record import Specification

    specs = [specs] if isinstance(specs, Specification) else list(specs)
    return Manifest(
        name=config.name,
        domain=config.domain,
        task=config.task,
        description=config.description,
        license=config.license,
        base_model=base,
        specs=tuple(_spec_entry(s) for s in specs),
        dp=DpLedger.compose(
            [("adapter", adapter), *((f"spec:{s.kind}", s.privacy) for s in specs)],
            config.delta,
        ),
        contributor=Contributor(key_id=signing.key_id(key.public_key()), name=config.contributor),
        created_at=utc_now_iso(),
    )


def _spec_entry(spec: Specification) -> SpecEntry:
    epsilon = spec.privacy.epsilon
    return SpecEntry(
        kind=spec.kind,
        schema_id=spec.schema_id,
        dim=spec.dim,
        epsilon=epsilon,
        delta=spec.privacy.delta if epsilon is not None else 0.0,
        n=spec.n,
        extra=spec.privacy.accounting(),
    )


def _load_key(path: str | Path) -> signing.Ed25519PrivateKey:
    return signing.load_private_key(path)


def local_schema(home: Home, *kinds: str) -> MarketSchema:
    """The local default schema of ``kinds`` only (other kinds' models are not loaded).

    What a learnware is made under when no market is asked: ``make_learnware`` without a
    schema, and a federation that writes its package to a folder.
    """
    from shared.spec.defaults import default_schema

    return default_schema(home, kinds=kinds, default_kind=kinds[0])


def spec_maker(schema: MarketSchema, home: Home, *kinds: str) -> SpecMaker:
    """A ``SpecMaker`` whose encoder and spec model are loaded and checked against the schema.

    Loading first makes a wrong spec model fail before any training; a federated holder
    makes its share of the spec with the same checks.
    """
    from client.specs import SpecMaker
    from shared.spec.schema import PaveSchema, RkmeSchema

    maker = SpecMaker(schema, home)
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
