"""A client of the market over gRPC: the one place client code talks to the server.

Every call is signed (``shared.transport.SigningInterceptor``) when a key is given, runs
under a deadline, and turns a gRPC error into the project's ``LwmError`` with the server's
one-line message, so the CLI can print it and exit with the right code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from shared import signing, transport
from shared.errors import IntegrityError, InvalidInput, PermissionDenied, Revoked
from shared.learnware import Manifest, write_tar
from shared.market_identity import INSECURE_MARKET_ID, MarketIdentity
from shared.models.refs import ModelRef
from shared.proto import market_pb2 as pb
from shared.proto import market_pb2_grpc
from shared.spec.record import Specification
from shared.spec.schema import MarketSchema, schema_from_params

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 60.0
UPLOAD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Connection:
    """How to reach a market: what ``--server``, ``--key``, ``--ca``/``--insecure`` say."""

    address: str
    key_path: Path | None = None
    ca: Path | None = None
    insecure: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class RemoteSchema:
    schema: MarketSchema
    base_models: tuple[ModelRef, ...]
    max_chunk_bytes: int
    raw: pb.Schema


class MarketClient:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        key = signing.load_private_key(conn.key_path) if conn.key_path else None
        self.key_id = signing.key_id(key.public_key()) if key else None
        self.channel = transport.channel(
            conn.address,
            ca=conn.ca,
            client_cert=conn.client_cert,
            client_key=conn.client_key,
            insecure=conn.insecure,
            signing_key=key,
        )
        self.stub = market_pb2_grpc.MarketStub(self.channel)
        self._schema: RemoteSchema | None = None
        self._market_id: str | None = None

    def market_id(self) -> str:
        """Which market this is, as the user's trust store keys its pins: the sha256 of the
        TLS certificate it presents (``shared.market_identity``, one handshake, kept); without
        TLS nothing proves which market answers, so the address names it."""
        if self._market_id is None:
            if self.conn.insecure:
                self._market_id = f"{INSECURE_MARKET_ID}:{self.conn.address}"
            else:
                address = transport.parse_address(self.conn.address)
                self._market_id = MarketIdentity(
                    address.host,
                    address.port,
                    ca=self.conn.ca,
                    client_cert=self.conn.client_cert,
                    client_key=self.conn.client_key,
                )()
        return self._market_id

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> MarketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, request: Any, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        try:
            return fn(request, timeout=timeout)
        except grpc.RpcError as err:
            raise transport.as_lwm_error(err, self.conn.address) from None

    # ------------------------------------------------------------------ schema
    def schema(self) -> RemoteSchema:
        if self._schema is None:
            raw = self._call(self.stub.GetSchema, pb.GetSchemaRequest())
            kinds = {
                k.kind: schema_from_params(k.kind, json.loads(k.params_json))
                for k in raw.spec_kinds
            }
            for k in raw.spec_kinds:
                if kinds[k.kind].schema_id != k.schema_id:
                    raise IntegrityError(
                        f"the market's {k.kind} schema id does not match its params"
                    )
            schema = MarketSchema(
                rkme=kinds.get("rkme"),  # type: ignore[arg-type]
                pave=kinds.get("pave"),  # type: ignore[arg-type]
                default_kind=raw.default_spec_kind,
            )
            self._schema = RemoteSchema(
                schema,
                tuple(ModelRef(b.model_id, b.sha256) for b in raw.base_models),
                int(raw.limits.max_chunk_bytes),
                raw,
            )
        return self._schema

    # ------------------------------------------------------------------ identity
    def whoami(self) -> pb.KeyInfo:
        """The market's record of this client's key (``WhoAmI``): id, name, role, revoked."""
        return self._call(self.stub.WhoAmI, pb.WhoAmIRequest())

    def require_role(self, role: str, action: str) -> pb.KeyInfo:
        """Refuse, before expensive work, a key that may not do ``action``: one cheap call.

        Raises ``InvalidInput`` without a key, the market's ``Unauthenticated`` for an
        unknown or revoked key (a revoked key cannot sign any call), ``Revoked`` if the
        record says so, and ``PermissionDenied`` naming the key's role when it is neither
        ``role`` ("contributor", "user") nor admin.
        """
        if self.key_id is None:
            raise InvalidInput(f"{action} needs a key (--key)")
        info = self.whoami()
        held = pb.Role.Name(info.role).removeprefix("ROLE_").lower()
        if info.revoked:
            raise Revoked(f"key {info.key_id} ({info.name}) was revoked: {info.revoke_reason}")
        if held not in (role, "admin"):
            raise PermissionDenied(
                f"key {info.key_id} ({info.name}) has the {held} role, and {action} needs "
                f"the {role} role: ask the market's admin to register a {role} key"
            )
        return info

    # ------------------------------------------------------------------ contributor
    def submit(self, package_dir: Path) -> pb.SubmitResponse:
        """Stream the canonical tar of ``package_dir``; returns the market's verdict."""
        chunk = self.schema().max_chunk_bytes
        with tempfile.TemporaryFile() as tar:
            requests = upload_requests(package_dir, tar, chunk)
            return self._call(self.stub.Submit, requests, timeout=UPLOAD_TIMEOUT_S)

    def withdraw(self, learnware_id: str, reason: str = "") -> pb.LearnwareInfo:
        return self._call(self.stub.Withdraw, pb.WithdrawRequest(id=learnware_id, reason=reason))

    # ------------------------------------------------------------------ user
    def get(self, learnware_id: str) -> pb.LearnwareInfo:
        return self._call(self.stub.Get, pb.GetRequest(id=learnware_id))

    def iter_learnwares(self, **filters: Any) -> Iterator[pb.LearnwareInfo]:
        token = ""
        while True:
            page = self._call(self.stub.List, pb.ListRequest(page_token=token, **filters))
            yield from page.learnwares
            token = page.next_page_token
            if not token:
                return

    def history(self, learnware_id: str) -> list[pb.LearnwareInfo]:
        """Every version of the learnware's name this key may see, newest first."""
        request = pb.GetHistoryRequest(id=learnware_id)
        return list(self._call(self.stub.GetHistory, request).versions)

    def search(self, spec: Specification, top_k: int = 5, **filters: Any) -> list[pb.SearchResult]:
        return list(self.find(spec, top_k=top_k, **filters).results)

    def find(
        self,
        spec: Specification,
        more: Sequence[Specification] = (),
        ranking: str = "",
        top_k: int = 5,
        **filters: Any,
    ) -> pb.SearchResponse:
        """``search`` with specs of other kinds of the same data (``more``), how to rank
        them (``ranking``: a kind, a fusion, "" for the market's default) and the answer's
        confidence."""
        more_specs = [query_spec(s) for s in more]
        request = pb.SearchRequest(
            spec=query_spec(spec), top_k=top_k, more_specs=more_specs, ranking=ranking, **filters
        )
        return self._call(self.stub.Search, request)

    def fetch(self, learnware_id: str, out_tar: Path) -> pb.FetchHeader:
        """Download the package tar to ``out_tar``, resuming a partial ``out_tar.part``.

        Never more than the header's ``total_size`` reaches the disk: a stream that sends
        more (or jumps, or sends bytes before its header) is cancelled, the partial file
        deleted and ``IntegrityError`` raised. The finished file's size and sha256 are
        checked against the header before it is renamed into place; a mismatch deletes the
        partial download and raises. A broken connection keeps the ``.part`` (a prefix of
        what the header announced) for the next call to resume.
        """
        part = out_tar.with_name(out_tar.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        digest = hashlib.sha256()
        if offset:  # resuming: the bytes already here count towards the hash
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        request = pb.FetchRequest(id=learnware_id, offset=offset)
        stream = self.stub.Fetch(request, timeout=UPLOAD_TIMEOUT_S)
        try:
            header = _consume(stream, part, offset, digest)
        except grpc.RpcError as err:
            raise transport.as_lwm_error(err, self.conn.address) from None
        except IntegrityError as err:
            stream.cancel()
            part.unlink(missing_ok=True)
            raise IntegrityError(f"download of {learnware_id} refused: {err}; deleted") from None
        if part.stat().st_size != header.total_size or digest.hexdigest() != header.sha256:
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"download of {learnware_id} does not match the market's size/sha256; deleted"
            )
        os.replace(part, out_tar)
        return header

    # ------------------------------------------------------------------ admin
    def register_key(self, public_key: bytes, role: str, name: str) -> pb.KeyInfo:
        request = pb.RegisterKeyRequest(
            public_key=public_key, role=pb.Role.Value(f"ROLE_{role.upper()}"), name=name
        )
        return self._call(self.stub.RegisterKey, request)

    def revoke_key(self, key_id: str, reason: str = "") -> pb.KeyInfo:
        return self._call(self.stub.RevokeKey, pb.RevokeKeyRequest(key_id=key_id, reason=reason))

    def list_keys(self, include_revoked: bool = False) -> list[pb.KeyInfo]:
        return list(
            self._call(self.stub.ListKeys, pb.ListKeysRequest(include_revoked=include_revoked)).keys
        )

    def stats(self) -> pb.Stats:
        return self._call(self.stub.GetStats, pb.GetStatsRequest())


def status_name(status: int) -> str:
    """A ``LearnwareStatus`` as its short name ("USABLE", "REJECTED", ...).

    The one translation of the enum for client code: verdicts print it as is, search
    results show it in lower case.
    """
    return pb.LearnwareStatus.Name(status).removeprefix("LEARNWARE_STATUS_")


def total_epsilon(info: pb.LearnwareInfo) -> float | None:
    """The learnware's total epsilon as its manifest composes it (the market reports the
    manifest's ``DpLedger`` total); None: no DP guarantee."""
    return info.dp.total_epsilon if info.dp.HasField("total_epsilon") else None


def query_spec(spec: Specification) -> pb.QuerySpec:
    return pb.QuerySpec(
        kind=spec.kind,
        schema_id=spec.schema_id,
        vector=spec.vector.astype("<f4").tobytes(),
        dim=spec.dim,
        metadata_json=json.dumps(spec.metadata(), sort_keys=True),
    )


def upload_requests(package_dir: Path, tar: BinaryIO, chunk: int) -> Iterator[pb.SubmitRequest]:
    """A Submit stream: the header (naming the package's size and sha256), then the
    canonical tar of ``package_dir`` (written now to ``tar``, a scratch file) in
    ``chunk``-byte pieces. The package is read here, so a broken one raises here and not
    inside gRPC's sending thread."""
    manifest_json = (package_dir / "manifest.json").read_bytes()
    signature = (package_dir / "signature").read_bytes()
    digest = write_tar(package_dir, tar)
    header = pb.SubmitHeader(
        manifest_json=manifest_json,
        signature=signature,
        contributor_key_id=Manifest.from_json(manifest_json).contributor.key_id,
        total_size=digest.size,
        sha256=digest.sha256,
    )
    tar.seek(0)
    return _upload(header, tar, chunk)


def _upload(header: pb.SubmitHeader, tar: BinaryIO, chunk: int) -> Iterator[pb.SubmitRequest]:
    yield pb.SubmitRequest(header=header)
    offset = 0
    while data := tar.read(chunk):
        yield pb.SubmitRequest(chunk=pb.Chunk(offset=offset, data=data))
        offset += len(data)


def _consume(stream: Any, part: Path, offset: int, digest: Any) -> pb.FetchHeader:
    """Append the stream's chunks to ``part``, never past the header's ``total_size``."""
    header: pb.FetchHeader | None = None
    with part.open("ab") as out:
        for message in stream:
            if message.WhichOneof("msg") == "header":
                if header is not None:
                    raise IntegrityError("the market sent a second fetch header")
                header = message.header
                if offset > header.total_size:
                    raise IntegrityError(
                        f"the partial download holds {offset} bytes, more than the "
                        f"{header.total_size} the market announces"
                    )
                continue
            if header is None:
                raise IntegrityError("the market sent bytes before the fetch header")
            data = message.chunk.data
            if message.chunk.offset != offset:
                raise IntegrityError(
                    f"fetch stream jumped to offset {message.chunk.offset}, expected {offset}"
                )
            if offset + len(data) > header.total_size:
                raise IntegrityError(
                    f"the market sent more than the {header.total_size} bytes it announced"
                )
            out.write(data)
            digest.update(data)
            offset += len(data)
    if header is None:
        raise IntegrityError("the market sent no fetch header")
    return header
