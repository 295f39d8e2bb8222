"""The user's side of the market: private search, verified fetch, run and evaluate.

Privacy: ``private_search`` reads the user's data, makes a DP spec of it *here* and sends
only that spec (a vector of floats, its schema id and DP metadata). The data itself never
leaves this machine; ``tests/test_wire_privacy.py`` records the wire to prove it.

Trust: ``fetch_learnware`` trusts nothing it downloaded until it is checked, in this order,
and nothing is loaded or executed before all checks pass:

1. before any download: the learnware's base model (id + weight sha256) is one this user
   has (a built-in model, or ``base_model=`` a local copy), its contributor key is not
   on the user's revocation list, and the user's trust store does not refuse it
   (``client.trust``: a pinned name now announced with another key; any unpinned key when
   pins are required);
2. never more than the announced size is written, and the tar's size and sha256 match the
   market's header (``MarketClient.fetch``);
3. the contributor's public key sent by the market hashes to the key id the market names
   and the trust store accepts it (the pinned key for that id, or a first use), the tar
   unpacks safely, every file matches the signed manifest, the signature verifies with
   that key and the manifest names the same key (``verify_package``), the adapter config
   passes the market's policy (``check_config``), and the signed manifest is the one the
   market announced;
4. the signed manifest's base model is (still) the one from step 1.

Only then is a first-use key pinned. The signer is reported as the market registry's name
for the key plus its key id (``Signer``), never as the name the manifest gives itself.

A local folder (``check_folder``) gets the same package checks: files and hashes, the
signature with the key the user pinned for its key id (``UntrustedKey`` when none is), and
the adapter policy; ``client.run`` checks the adapter tensors against the loaded base model.

A failed check deletes everything downloaded and raises with the reason. A broken
connection (or Ctrl-C) keeps the partial ``.part`` file so the same call resumes it.
Revoked keys are refused first (``client.trust.refuse_revoked``, whose docstring says why).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from client.market import Connection, MarketClient, status_name, total_epsilon
from client.privacy_ledger import Ledger, LedgerSession, PrivacyLedgers, planned_report
from client.specs import SpecMaker
from client.trust import Signer, TrustStore, refuse_revoked
from shared import signing
from shared.data.columns import DataPath
from shared.errors import (
    AlreadyExists,
    IntegrityError,
    InvalidInput,
    LwmError,
    ModelUnavailable,
    SchemaMismatch,
    Unavailable,
)
from shared.files import check_writable
from shared.home import Home
from shared.learnware import (
    Manifest,
    VerifiedPackage,
    read_manifest,
    unpack_tar,
    verify_package,
)
from shared.learnware.adapter_policy import check_config
from shared.learnware.layout import ADAPTER_CONFIG
from shared.models import LocalModel
from shared.privacy import DEFAULT_DELTA, PrivacyBudget
from shared.proto import market_pb2 as pb
from shared.spec.confidence import Confidence

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SEARCH_FILTERS = ("domain", "task", "base_model_id", "license")


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchMatch:
    """One ranked learnware (rank 1 is best); ``score`` is higher-is-better, kind-specific.

    ``total_epsilon`` is the learnware's privacy cost on its holders' data, every release
    (adapter, specs) composed, as its manifest states it (None: no DP guarantee)."""

    rank: int
    id: str
    name: str
    domain: str
    task: str
    contributor: str
    contributor_key_id: str
    base_model_id: str
    base_model_sha256: str
    score: float
    distance: float
    status: str
    license: str
    total_epsilon: float | None
    version: int


@dataclass(frozen=True)
class SearchOutcome:
    """Ranked matches and what the search cost: local spec time vs. market round trips.

    ``spec_seconds`` covers reading the data, loading the encoder / spec model and making
    the DP spec; ``network_seconds`` the ``GetSchema`` and ``Search`` calls (connect, TLS,
    the market's ranking). ``epsilon`` None means the spec was released without DP.
    ``ledger`` is the data's privacy ledger with this search recorded (None: not accounted).
    ``confidence``: the market's calibrated probability that the first match is right
    (``shared.spec.confidence``; None with fewer than two candidates).
    """

    kind: str
    schema_id: str
    epsilon: float | None
    delta: float
    n_texts: int
    matches: tuple[SearchMatch, ...]
    spec_seconds: float
    network_seconds: float
    total_seconds: float
    ledger: Ledger | None = None
    confidence: Confidence | None = None


def private_search(
    data: DataPath | Sequence[str],
    conn: Connection | MarketClient,
    kind: str | None = None,
    epsilon: float = 4.0,
    no_dp: bool = False,
    top_k: int = 5,
    *,
    delta: float = DEFAULT_DELTA,
    home: Home | None = None,
    maker: SpecMaker | None = None,
    progress: bool = False,
    noise_seed: int | None = None,
    ledger: bool = True,
    budget_epsilon: float | None = None,
    **filters: str | None,
) -> SearchOutcome:
    """Search the market with a DP spec of ``data`` (a data file, or the texts themselves).

    ``kind`` None uses the market's default kind; kinds joined by ``+`` ("rkme+pave") send a
    spec of each (one release each on the data's budget) for the market to rank with all
    of them (``server.search``). ``no_dp`` releases a non-private spec
    (callers must warn). ``maker`` reuses loaded models across calls when it holds the
    market's schema. ``noise_seed`` fixes the DP noise (reproducible experiments such as
    ``lwm simulate``; a real user leaves it None, so the noise is fresh every search).
    Filters: ``domain``, ``task``, ``base_model_id``, ``license``.

    ``ledger``: the release is checked against and recorded in the data's privacy ledger in
    ``home`` (None: the ``maker``'s, else the default home; ``client.privacy_ledger``);
    ``budget_epsilon`` first sets that ledger's total
    (``math.inf``: no limit). Only experiments on public demo data (``lwm simulate``) pass
    ``ledger=False``.
    Raises ``SchemaMismatch`` for a kind the market does not take, ``DataError`` for
    unreadable data, ``PrivacyError`` for a bad budget, ``BudgetExceeded`` (before the
    spec is computed; for a spent budget or ``no_dp`` under one, before the market is
    contacted), network errors as ``LwmError``.
    """
    started = time.perf_counter()
    budget = PrivacyBudget(None if no_dp else epsilon, delta)
    unknown = sorted(set(filters) - set(SEARCH_FILTERS))
    if unknown:
        raise InvalidInput(f"unknown search filter {unknown[0]!r}; use {', '.join(SEARCH_FILTERS)}")
    texts = _texts(data)  # bad data fails here, before the market is contacted
    home = home or (maker.home if maker is not None else Home.resolve())
    spec_seconds = time.perf_counter() - started
    with _held_ledger(texts, home, budget, ledger, budget_epsilon) as held, _client(conn) as client:
        mark = time.perf_counter()
        schema = client.schema().schema
        network = time.perf_counter() - mark
        chosen = kind or schema.default_kind
        kinds = chosen.split("+")
        unknown_kinds = [k for k in kinds if k not in schema.kinds]
        if unknown_kinds or len(set(kinds)) != len(kinds):
            raise SchemaMismatch(
                f"the market takes spec kinds {', '.join(schema.kinds)}, not {chosen!r}"
            )
        if maker is None or maker.schema != schema:
            maker = SpecMaker(schema, home)
        specs = []
        spent = None
        if held is not None:  # all releases admitted at once: none is spent if one won't fit
            held.admit(*(planned_report(schema.for_kind(k), len(texts), budget) for k in kinds))
        for i, one in enumerate(kinds):  # each spec is its own release on the data's budget
            mark = time.perf_counter()
            seed = None if noise_seed is None else noise_seed + i
            specs.append(maker.make(texts, one, budget, progress=progress, noise_seed=seed))
            spec_seconds += time.perf_counter() - mark
            if held is not None:  # recorded before it is sent: a failed send still counts
                spent = held.record("search", one, client.conn.address, specs[-1].privacy)
        spec = specs[0]
        mark = time.perf_counter()
        active = {k: v for k, v in filters.items() if v}
        answer = client.find(spec, specs[1:], top_k=top_k, **active)
        results = answer.results
        network += time.perf_counter() - mark
    return SearchOutcome(
        kind=chosen,
        schema_id=spec.schema_id,
        epsilon=spec.privacy.epsilon,
        delta=spec.privacy.delta,
        n_texts=len(texts),
        matches=tuple(_match(r) for r in results),
        spec_seconds=spec_seconds,
        network_seconds=network,
        total_seconds=time.perf_counter() - started,
        ledger=spent,
        confidence=_confidence(answer),
    )


def _confidence(answer: pb.SearchResponse) -> Confidence | None:
    if not answer.HasField("confidence"):
        return None
    found = answer.confidence
    return Confidence(found.first_right, found.margin, found.method)


@contextmanager
def _held_ledger(
    texts: list[str],
    home: Home,
    budget: PrivacyBudget,
    enabled: bool,
    budget_epsilon: float | None,
) -> Iterator[LedgerSession | None]:
    """The data's ledger, locked for this search, once the release passed the checks that
    need no market (``Ledger.precheck``); None when the search is not accounted."""
    if not enabled:
        yield None
        return
    with PrivacyLedgers.at(home).session(
        texts, delta=budget.delta, budget_epsilon=budget_epsilon
    ) as held:
        held.ledger.precheck(budget)
        yield held


def _texts(data: DataPath | Sequence[str]) -> list[str]:
    if isinstance(data, DataPath):
        from shared.data import load_dataset

        return load_dataset(data).texts()
    return list(data)


def _match(result: pb.SearchResult) -> SearchMatch:
    info = result.learnware
    return SearchMatch(
        rank=result.why.rank,
        id=info.id,
        name=info.name,
        domain=info.domain,
        task=info.task,
        contributor=info.contributor_name,
        contributor_key_id=info.contributor_key_id,
        base_model_id=info.base_model.model_id,
        base_model_sha256=info.base_model.sha256,
        score=result.score,
        distance=result.distance,
        status=status_name(info.status).lower(),
        license=info.license,
        total_epsilon=total_epsilon(info),
        version=info.version,
    )


@contextmanager
def _client(conn: Connection | MarketClient) -> Iterator[MarketClient]:
    """Use a caller's client as is; open (and close) one for a bare ``Connection``."""
    if isinstance(conn, MarketClient):
        yield conn
        return
    with MarketClient(conn) as client:
        yield client


# ---------------------------------------------------------------- base model


def resolve_base_model(
    model_id: str, sha256: str, home: Home, base_model: str | Path | None = None
) -> LocalModel:
    """The user's model with exactly these weights, or ``ModelUnavailable`` saying why.

    ``base_model`` (a built-in name or a local Hugging Face folder) is the user's own copy;
    otherwise the built-in model with ``model_id`` is used (``tiny`` is built here on first
    use). Weights are matched by sha256: a same-named model with other weights is refused.
    """
    from shared.models import local_model
    from shared.models.causal import builtin_name

    if base_model is not None:
        local = local_model(str(base_model), home)
    else:
        builtin = builtin_name(model_id)
        if builtin is None:
            raise ModelUnavailable(
                f"the learnware needs base model {model_id} (weights {sha256[:12]}), which is "
                "not a built-in model here: pass --base-model PATH to your local copy"
            )
        try:
            local = local_model(builtin, home)
        except ModelUnavailable as err:
            raise ModelUnavailable(f"the learnware needs base model {builtin}: {err}") from err
    if local.ref.sha256 != sha256:
        raise ModelUnavailable(
            f"the learnware needs base model {model_id} with weights {sha256[:12]}, but "
            f"{local.name} has weights {local.ref.sha256[:12]}: "
            "pass --base-model PATH to that model"
        )
    return local


# ---------------------------------------------------------------- fetch and verify


@dataclass(frozen=True)
class VerifiedLearnware:
    """A learnware folder whose files matched its manifest and whose base model is here.

    Only ``fetch_learnware`` (signature, market header) and ``check_folder`` (a folder that
    was fetched before: hashes, revocation, base model) make one; ``client.run`` loads one
    without checking it again.
    """

    path: Path
    manifest: Manifest
    base_model: LocalModel


@dataclass(frozen=True)
class FetchedLearnware(VerifiedLearnware):
    """A freshly fetched folder: signature, hashes, trust and base model all checked.

    ``signer`` is who signed it as the user should read it: the market registry's name
    and the key id, and how the key is trusted."""

    id: str
    contributor_key_id: str
    package_sha256: str
    package_size: int
    signer: Signer


def fetch_learnware(
    conn: Connection | MarketClient,
    learnware_id: str,
    out_dir: str | Path,
    *,
    home: Home | None = None,
    base_model: str | Path | None = None,
    revoked_keys: Collection[str] = (),
    trust: TrustStore | None = None,
) -> FetchedLearnware:
    """Download, verify and unpack learnware ``learnware_id`` into new folder ``out_dir``.

    ``out_dir`` must not exist (or be an empty folder); it appears, complete, only when every
    check (module docstring) passed. ``trust`` None is the trust store in ``home``. Raises
    ``ModelUnavailable`` (base model missing or other weights), ``IntegrityError`` (tampered,
    wrongly signed, revoked key, more bytes than announced), ``UntrustedKey`` (a key the
    trust store refuses), ``AlreadyExists``, ``NotFound``; on ``Unavailable`` the partial
    download stays for a resume.
    """
    home = home or Home.resolve()
    trust = trust or TrustStore.at(home)
    check_id(learnware_id)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AlreadyExists(f"{out} exists and is not an empty folder")
    check_writable(out, force=True, parents=True)  # before the market is asked anything
    with _client(conn) as client:
        market = client.market_id()
        info = client.get(learnware_id)
        with _refusing(learnware_id, "nothing was downloaded"):
            refuse_revoked(info.contributor_key_id, revoked_keys)
            trust.check(market, info.contributor_key_id, info.contributor_name, None)
            wanted = info.base_model
            base = resolve_base_model(wanted.model_id, wanted.sha256, home, base_model)
        staging = out.parent / f".{out.name}.fetch-{learnware_id}"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            header = client.fetch(learnware_id, staging / "package.tar")
        except Unavailable as err:
            raise Unavailable(
                f"{err}; the partial download in {staging} resumes next time"
            ) from err
        except LwmError:  # refused (size/sha256, not found, ...): nothing is kept
            shutil.rmtree(staging, ignore_errors=True)
            raise
    try:
        with _refusing(learnware_id, "download deleted"):
            refuse_revoked(header.contributor_key_id, revoked_keys)
            public_key, signer = _trusted_key(header, trust, market)
            package = _verify(header, staging, learnware_id, base, public_key)
            if out.exists():
                out.rmdir()
            os.rename(package.path, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    trust.remember(signer)
    return FetchedLearnware(
        path=out,
        manifest=package.manifest,
        base_model=base,
        id=learnware_id,
        contributor_key_id=header.contributor_key_id,
        package_sha256=header.sha256,
        package_size=header.total_size,
        signer=signer,
    )


def check_folder(
    folder: str | Path,
    *,
    home: Home | None = None,
    base_model: str | Path | None = None,
    revoked_keys: Collection[str] = (),
    trust: TrustStore | None = None,
) -> VerifiedLearnware:
    """The market's package checks on a local folder (one ``fetch_learnware`` made earlier,
    or one from anywhere) before anything loads it.

    Every file is hashed against the manifest, the signature verified with the key the user
    pinned for the manifest's key id (``UntrustedKey`` when none is: a fetch pins its key,
    ``lwm trust add`` pins any), the key checked against ``revoked_keys``, the adapter config
    against the market's policy, and the base model matched (``IntegrityError``,
    ``InvalidInput``, ``ModelUnavailable``). ``trust`` None is the trust store in ``home``.
    """
    home = home or Home.resolve()
    path = Path(folder).expanduser()
    key_id = read_manifest(path).contributor.key_id  # which key to verify with
    refuse_revoked(key_id, revoked_keys)
    public_key = (trust or TrustStore.at(home)).key_for_folder(key_id)
    package = verify_package(path, public_key)
    check_config(package.file(ADAPTER_CONFIG))
    wanted = package.manifest.base_model
    base = resolve_base_model(wanted.model_id, wanted.sha256, home, base_model)
    return VerifiedLearnware(path, package.manifest, base)


@contextmanager
def _refusing(learnware_id: str, outcome: str) -> Iterator[None]:
    """Re-raise a failed check as the same error class, saying which learnware and what
    happened to the download, so the CLI's one line tells the whole story."""
    try:
        yield
    except LwmError as err:
        raise type(err)(f"learnware {learnware_id} refused: {err}; {outcome}") from err


def check_id(learnware_id: str) -> str:
    """Ids name folders here, so only plain ids are accepted (no paths)."""
    if not _ID.fullmatch(learnware_id):
        raise InvalidInput(f"{learnware_id!r} is not a learnware id")
    return learnware_id


def _trusted_key(
    header: pb.FetchHeader, trust: TrustStore, market: str
) -> tuple[signing.Ed25519PublicKey, Signer]:
    """The key the market sent, once it hashes to the key id it names and the user's trust
    store accepts it (under the registry's name for it, as the market sent it)."""
    public_key = signing.load_public_key(header.contributor_public_key)
    if signing.key_id(public_key) != header.contributor_key_id:
        raise IntegrityError(
            f"the market's public key for contributor {header.contributor_key_id} hashes to "
            f"key id {signing.key_id(public_key)}"
        )
    raw = signing.public_key_bytes(public_key)
    signer = trust.check(market, header.contributor_key_id, header.info.contributor_name, raw)
    return public_key, signer


def _verify(
    header: pb.FetchHeader,
    staging: Path,
    learnware_id: str,
    base: LocalModel,
    public_key: signing.Ed25519PublicKey,
) -> VerifiedPackage:
    if header.id != learnware_id:
        raise IntegrityError(f"the market answered with learnware {header.id!r}")
    unpack_tar(staging / "package.tar", staging / "package")
    package = verify_package(staging / "package", public_key)
    check_config(package.file(ADAPTER_CONFIG))
    manifest = package.manifest
    if manifest.contributor.key_id != header.contributor_key_id:  # verify_package checks too
        raise IntegrityError(f"manifest names contributor key {manifest.contributor.key_id}")
    if manifest.to_json() != header.manifest_json or package.signature != header.signature:
        raise IntegrityError("the package is not the one the market's header describes")
    wanted = manifest.base_model
    if wanted.model_id != header.info.base_model.model_id or wanted.sha256 != base.ref.sha256:
        raise ModelUnavailable(
            f"the signed manifest names base model {wanted.model_id} ({wanted.sha256[:12]}), "
            f"not the {header.info.base_model.model_id} the market listed and you have"
        )
    return package
