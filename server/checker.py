"""The market's checks on an uploaded learnware (DESIGN §6 "Checker"), cheapest first.

1. ``check_static``: in this process, reading only JSON and safetensors *headers*, never
   importing, unpickling or running anything from the package: files, hashes and signature
   (``verify_package``), the base model is one this market serves (id and weight hash), every
   spec parses, is finite and has the market schema's kind, id and dim and agrees with the
   manifest, its privacy report, n and norm are possible (``shared.spec.claims``: a forged
   noise would buy a negative distance and the top of every ranking), the peft config is a
   plain LoRA config (policy below), and every adapter tensor is a LoRA tensor whose shape
   fits its base-model module and the config's ``r``.
2. ``run_smoke`` (``server/smoke.py``): base model + adapter with plain
   ``PeftModel.from_pretrained`` in a *subprocess* with a timeout, a few greedy tokens,
   finite logits. The subprocess isolates crashes, hangs and memory blow-ups from the server;
   it runs under ``SmokeLimits`` (``server/sandbox.py``), and at most as many run at once
   as the ``JudgingGate`` (``server/judging.py``) allows.
3. ``Checker`` ties both together. ``Market.submit`` runs its two stages apart, so that a
   package is stored (as PENDING) between them: ``check_static`` raises for a bad package
   (the upload is refused, nothing is kept), ``judge`` runs the smoke stage and returns a
   ``Judgment`` (USABLE or REJECTED with a one-line reason). ``check`` runs both and never
   raises for a bad package; every stage raises for the market's own faults (a base model
   it cannot load).

Failures raise the project's errors: ``IntegrityError`` (hashes, signature, file set, pickle),
``ResourceExhausted`` (sizes), ``SchemaMismatch`` (spec schema or base model not accepted),
``SpecError`` (spec malformed, disagreeing with the manifest, or claiming noise, n or a norm
its mechanism cannot give), ``InvalidInput`` (adapter).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from server.judging import JudgingGate
from server.records import Status
from server.sandbox import SmokeLimits
from server.smoke import SmokeResult, one_line, run_smoke
from shared import signing
from shared.errors import (
    InvalidInput,
    LwmError,
    ResourceExhausted,
    SchemaMismatch,
    SpecError,
)
from shared.home import Home
from shared.learnware import (
    FileEntry,
    Manifest,
    PackageLimits,
    VerifiedPackage,
    verify_package,
)
from shared.learnware.adapter_policy import (
    AcceptedBase,
    check_adapter,
    check_config,
    describe_model,
)
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SPEC
from shared.spec.claims import SpecLimits, check_claims
from shared.spec.record import Specification, specs_from_bytes
from shared.spec.schema import MarketSchema

__all__ = [
    "AcceptedBase",
    "Checker",
    "SmokeResult",
    "Judgment",
    "StaticResult",
    "check_static",
    "describe_base_model",
    "describe_base_models",
    "run_smoke",
]


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class StaticResult:
    """What the static checks proved; ``lora_modules`` are base-model paths, sorted.

    ``specs`` are parsed once, here, from ``spec_bytes``: the package's spec file as
    received, which the market stores as is (it never re-encodes a spec)."""

    manifest: Manifest
    specs: tuple[Specification, ...]
    spec_bytes: bytes
    base: AcceptedBase
    signer_key_id: str
    rank: int
    lora_modules: tuple[str, ...]


@dataclass(frozen=True)
class Judgment:
    """The checker's judgment of one package. ``reason`` is one line ("" when USABLE).

    ``error`` is the exception behind a rejection, so the service can answer with its gRPC
    status (``error.status``); ``manifest`` is set whenever the package verified (even if a
    later check rejected it); ``smoke`` is None when the smoke run was skipped or not reached.
    """

    status: Status
    reason: str
    manifest: Manifest | None
    specs: list[Specification]
    seconds: float
    error: LwmError | None = None
    smoke: SmokeResult | None = None


# ---------------------------------------------------------------- base models


def describe_base_model(name: str, home: Home) -> AcceptedBase:
    """Load base model ``name`` once and record its identity and module shapes (seconds)."""
    from shared.models import load_causal_lm

    loaded = load_causal_lm(name, home)
    return describe_model(name, loaded.ref, loaded.model)


def describe_base_models(names: list[str], home: Home) -> dict[str, AcceptedBase]:
    """``describe_base_model`` for each name, keyed by ``model_id`` as ``Checker`` wants."""
    infos = (describe_base_model(name, home) for name in names)
    return {info.ref.model_id: info for info in infos}


# ---------------------------------------------------------------- static checks


def check_static(
    package_dir: Path,
    market: MarketSchema,
    base_models: Mapping[str, AcceptedBase],
    limits: PackageLimits,
    trusted_public_key: signing.Ed25519PublicKey | bytes,
    spec_limits: SpecLimits | None = None,
    hashed: Mapping[str, FileEntry] | None = None,
) -> StaticResult:
    """All checks that need no model: raises an ``LwmError`` naming the first problem.

    ``base_models`` is keyed by ``model_id``. ``trusted_public_key`` is the registered key
    of the contributor (raw 32 bytes or a key object); there is no unsigned mode.
    ``spec_limits`` defaults to ``SpecLimits()``. ``hashed``: the payload files' sizes and
    sha256 measured as they were unpacked (``TarStream``), so they are not read again.
    """
    verified = _verify(package_dir, limits, trusted_public_key, hashed)
    return _check_contents(verified, market, base_models, spec_limits or SpecLimits())


def _verify(
    package_dir: Path,
    limits: PackageLimits,
    key: signing.Ed25519PublicKey | bytes,
    hashed: Mapping[str, FileEntry] | None = None,
) -> VerifiedPackage:
    public_key = key if isinstance(key, signing.Ed25519PublicKey) else signing.load_public_key(key)
    return verify_package(package_dir, public_key, limits=limits, hashed=hashed)


def _check_contents(
    verified: VerifiedPackage,
    market: MarketSchema,
    base_models: Mapping[str, AcceptedBase],
    spec_limits: SpecLimits,
) -> StaticResult:
    manifest = verified.manifest
    base = _accepted_base(manifest, base_models)
    spec_bytes = verified.file(SPEC).read_bytes()
    specs = _check_specs(spec_bytes, manifest, market, spec_limits)
    config = check_config(verified.file(ADAPTER_CONFIG))
    modules = check_adapter(verified.file(ADAPTER_WEIGHTS), config, base)
    signer = verified.signer_key_id or ""  # never empty: _verify always passes a key
    return StaticResult(manifest, specs, spec_bytes, base, signer, config.r, modules)


def _accepted_base(manifest: Manifest, base_models: Mapping[str, AcceptedBase]) -> AcceptedBase:
    ref = manifest.base_model
    base = base_models.get(ref.model_id)
    if base is None:
        raise SchemaMismatch(
            f"base model {ref.model_id!r} is not accepted by this market "
            f"(it accepts: {', '.join(sorted(base_models)) or 'none'})"
        )
    if base.ref.sha256 != ref.sha256:
        raise SchemaMismatch(
            f"base model {ref.model_id!r}: the manifest names weights sha256 {ref.sha256[:16]}..., "
            f"this market serves {base.ref.sha256[:16]}... (adapter made for other weights)"
        )
    return base


def _check_specs(
    spec_bytes: bytes, manifest: Manifest, market: MarketSchema, spec_limits: SpecLimits
) -> tuple[Specification, ...]:
    try:
        specs = specs_from_bytes(spec_bytes)
    except LwmError as err:
        raise type(err)(f"{SPEC}: {err}") from err
    except Exception as err:  # untrusted bytes: any parser failure is the package's fault
        raise SpecError(f"{SPEC}: unreadable ({type(err).__name__}: {err})") from err
    for spec in specs:
        try:
            schema = market.for_kind(spec.kind)
            spec.check_against(schema)
            check_claims(spec, schema, spec_limits)
        except LwmError as err:
            raise type(err)(f"{SPEC}: {err}") from err
    _match_manifest(manifest, specs)
    return tuple(specs)


def _match_manifest(manifest: Manifest, specs: list[Specification]) -> None:
    """The signed manifest's spec entries must describe the spec file exactly."""
    listed = {entry.kind: entry for entry in manifest.specs}
    found = {spec.kind: spec for spec in specs}
    if set(listed) != set(found):
        raise SpecError(
            f"manifest lists spec kinds {sorted(listed)} but {SPEC} holds {sorted(found)}"
        )
    for kind, spec in found.items():
        entry = listed[kind]
        pairs: dict[str, tuple[object, object]] = {
            "schema_id": (entry.schema_id, spec.schema_id),
            "dim": (entry.dim, spec.dim),
            "n": (entry.n, spec.n),
            "epsilon": (entry.epsilon, spec.privacy.epsilon),
        }
        if entry.epsilon is not None:  # without DP the manifest's delta is 0 by rule
            pairs["delta"] = (entry.delta, spec.privacy.delta)
        for name, (said, held) in pairs.items():
            if said != held:
                raise SpecError(
                    f"manifest spec {kind!r} says {name}={said!r} but {SPEC} holds {name}={held!r}"
                )


# ---------------------------------------------------------------- the checker


class Checker:
    """The market's checker: static checks, then (unless disabled) the smoke run.

    ``base_models`` is keyed by ``model_id`` (``describe_base_models``). One instance serves
    many packages and may be shared by threads: it holds no per-check state. Its ``gate``
    bounds the smoke runs (default: one at a time, eight uploads waiting); ``close`` kills
    the running ones (their judgments raise ``Unavailable``).
    """

    def __init__(
        self,
        schema: MarketSchema,
        base_models: Mapping[str, AcceptedBase],
        home: Home,
        limits: PackageLimits | None = None,
        smoke_timeout_s: float = 120.0,
        run_smoke: bool = True,
        spec_limits: SpecLimits | None = None,
        smoke_limits: SmokeLimits | None = None,
        gate: JudgingGate | None = None,
    ) -> None:
        self.schema = schema
        self.base_models = dict(base_models)
        self.home = home
        self.limits = limits or PackageLimits()
        self.spec_limits = spec_limits or SpecLimits()
        self.smoke_timeout_s = smoke_timeout_s
        self.smoke_enabled = run_smoke
        self.smoke_limits = smoke_limits or SmokeLimits()
        self.gate = gate or JudgingGate()

    def close(self) -> None:
        """Kill every running smoke run now and refuse new ones (the market is stopping)."""
        self.gate.close()

    def check_static(
        self,
        package_dir: Path,
        contributor_public_key: signing.Ed25519PublicKey | bytes,
        hashed: Mapping[str, FileEntry] | None = None,
    ) -> StaticResult:
        """The first stage: raises an ``LwmError`` naming the first problem (``hashed``:
        see the module-level ``check_static``)."""
        return check_static(
            Path(package_dir),
            self.schema,
            self.base_models,
            self.limits,
            contributor_public_key,
            self.spec_limits,
            hashed,
        )

    def judge(self, package_dir: Path, static: StaticResult) -> Judgment:
        """The second stage, on a package that passed ``check_static``: the smoke run."""
        return self._judge(Path(package_dir), static, time.monotonic())

    def check(
        self, package_dir: Path, contributor_public_key: signing.Ed25519PublicKey | bytes
    ) -> Judgment:
        """USABLE or REJECTED (never raises for a bad package; raises for the market's faults).

        ``package_dir`` is an unpacked learnware directory (``unpack_tar``) the market owns.
        ``contributor_public_key`` is the key registered for the uploader; a malformed one is
        the market's fault and raises ``InvalidInput``.
        """
        start = time.monotonic()
        key = contributor_public_key
        if not isinstance(key, signing.Ed25519PublicKey):
            key = signing.load_public_key(key)
        manifest: Manifest | None = None
        try:
            verified = _verify(Path(package_dir), self.limits, key)
            manifest = verified.manifest
            static = _check_contents(
                verified, self.schema, self.base_models, self.spec_limits
            )
        except LwmError as err:
            return _rejected(err, one_line(str(err)), manifest, [], start)
        return self._judge(Path(package_dir), static, start)

    def _judge(self, package_dir: Path, static: StaticResult, start: float) -> Judgment:
        manifest, specs = static.manifest, list(static.specs)
        if not self.smoke_enabled:
            return Judgment(Status.USABLE, "", manifest, specs, time.monotonic() - start)
        with self.gate.running() as slot:
            smoke = run_smoke(
                package_dir,
                static.base,
                self.home,
                self.smoke_timeout_s,
                limits=self.smoke_limits,
                on_start=slot.attach,
            )
        if not smoke.ok:
            reason = f"smoke run: {smoke.reason}"
            error = ResourceExhausted(reason) if smoke.timed_out else InvalidInput(reason)
            return _rejected(error, reason, manifest, specs, start, smoke)
        return Judgment(Status.USABLE, "", manifest, specs, time.monotonic() - start, None, smoke)


def _rejected(
    error: LwmError,
    reason: str,
    manifest: Manifest | None,
    specs: list[Specification],
    start: float,
    smoke: SmokeResult | None = None,
) -> Judgment:
    seconds = time.monotonic() - start
    return Judgment(Status.REJECTED, reason, manifest, specs, seconds, error, smoke)
