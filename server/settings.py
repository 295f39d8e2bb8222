"""The market server's settings: one frozen record built by ``lwm server start`` (or tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from server.sandbox import SmokeLimits
from shared.errors import InvalidInput
from shared.learnware import PackageLimits
from shared.spec.claims import SpecLimits
from shared.transport import MAX_MESSAGE_BYTES

_MIB = 1024 * 1024


def _at_least_one(record: object, *names: str) -> None:
    """``InvalidInput`` naming the first of ``names`` (whole-number fields) below 1."""
    for name in names:
        if getattr(record, name) < 1:
            raise InvalidInput(f"{name} must be >= 1, got {getattr(record, name)}")


@dataclass(frozen=True)
class Limits:
    """What one request may carry; published in GetSchema so clients can size themselves."""

    max_chunk_bytes: int = 1 * _MIB
    package: PackageLimits = field(default_factory=PackageLimits)
    max_page_size: int = 500
    default_page_size: int = 50
    max_top_k: int = 100
    default_top_k: int = 10
    max_reason_chars: int = 2000  # a withdraw or revoke reason (stored, and in the audit trail)
    max_key_name_chars: int = 200  # a registered key's name
    max_active_per_key: int = 100  # learnwares one key may have PENDING or USABLE at once
    spec: SpecLimits = field(default_factory=SpecLimits)

    def __post_init__(self) -> None:
        if not (0 < self.max_chunk_bytes <= MAX_MESSAGE_BYTES // 2):
            raise InvalidInput(
                f"max_chunk_bytes must be in (0, {MAX_MESSAGE_BYTES // 2}], "
                f"got {self.max_chunk_bytes}"
            )
        _at_least_one(
            self,
            "max_page_size",
            "default_page_size",
            "max_top_k",
            "default_top_k",
            "max_reason_chars",
            "max_key_name_chars",
            "max_active_per_key",
        )

    @property
    def max_package_bytes(self) -> int:
        return self.package.max_package_bytes


@dataclass(frozen=True)
class CallLimits:
    """What one caller may hold of the server, in time and in calls (issue 12: stalls).

    Deadlines bound what the *client* controls: how long it takes to send its request (or a
    stream's header), the silence between two messages of a stream (either direction), and a
    whole upload or download. The server's own work (a search, a smoke run) is not cut.
    Concurrency limits: calls in flight from one address (checked before the request is
    read, so it needs no key), calls and streams in flight per key (after authentication),
    and gRPC's own cap over all calls, health checks included, kept far above the per-address
    limit so that one address can never starve the health service.
    """

    first_message_s: float = 10.0
    idle_s: float = 30.0
    stream_call_s: float = 3600.0
    handshake_s: float = 10.0  # a TLS handshake that has not finished by then is dropped
    max_calls_per_address: int = 256
    max_calls_per_key: int = 64
    max_streams_per_key: int = 4  # Submit and Fetch calls of one key at once
    max_concurrent_rpcs: int = 4096
    workers: int = 16  # threads for requests (search, list, ...)
    transfer_workers: int = 16  # threads for uploads and downloads (and judging)

    def __post_init__(self) -> None:
        for name in ("first_message_s", "idle_s", "stream_call_s", "handshake_s"):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"{name} must be > 0, got {getattr(self, name)}")
        _at_least_one(
            self,
            "max_calls_per_address",
            "max_calls_per_key",
            "max_streams_per_key",
            "max_concurrent_rpcs",
            "workers",
            "transfer_workers",
        )
        if self.max_concurrent_rpcs <= self.max_calls_per_address:
            raise InvalidInput(
                "max_concurrent_rpcs must exceed max_calls_per_address (health must answer "
                "while one address holds all it may)"
            )


@dataclass(frozen=True)
class ReplicaSettings:
    """How one market process follows the others on a shared database (DESIGN §7).

    ``feed_poll_s``: how often the index reads the change feed (``server.changes``) when no
    PostgreSQL NOTIFY wakes it first: a bound on how late another replica's change is seen.
    ``judgment_lease_s``: how long a claimed judgment stays this replica's without a
    heartbeat (``server.judgment_queue``): how long a dead replica's judgment waits for
    another. ``judgment_poll_s``: how often an idle replica looks for queued judgments.
    ``name``: this replica in the queue (default: host, pid and a random tag).
    """

    feed_poll_s: float = 0.5
    judgment_lease_s: float = 30.0
    judgment_poll_s: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        for name in ("feed_poll_s", "judgment_lease_s", "judgment_poll_s"):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``serve`` needs. ``base_models`` are model names (``tiny``, ``smollm2-135m``
    or folders) whose adapters the market accepts; ``pave_model`` is the PAVE spec model."""

    address: str
    db_url: str
    blobs_dir: Path
    home_dir: Path
    tls_dir: Path | None = None  # an initialised server dir (lwm server init); None: insecure
    require_client_cert: bool = False
    base_models: tuple[str, ...] = ("tiny",)
    pave_model: str = "tiny"
    spec_kinds: tuple[str, ...] = ("rkme", "pave")
    default_kind: str = "rkme"
    limits: Limits = field(default_factory=Limits)
    run_smoke: bool = True
    smoke_timeout_s: float = 120.0
    smoke_limits: SmokeLimits = field(default_factory=SmokeLimits)
    max_concurrent_smokes: int = 1  # smoke subprocesses at once (each loads a base model)
    max_waiting_judgments: int = 8  # uploads waiting for one; more: RESOURCE_EXHAUSTED
    calls: CallLimits = field(default_factory=CallLimits)
    reflection: bool = False
    grace_s: float = 10.0
    admin_pub: Path | None = None  # registered as ADMIN at start when given
    web_address: str | None = None  # HOST:PORT of the web page (server.web); None: no page
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)

    def __post_init__(self) -> None:
        if not self.base_models:
            raise InvalidInput("the market needs at least one base model")
        if self.max_concurrent_smokes < 1 or self.max_waiting_judgments < 0:
            raise InvalidInput(
                "max_concurrent_smokes must be >= 1 and max_waiting_judgments >= 0, got "
                f"{self.max_concurrent_smokes} and {self.max_waiting_judgments}"
            )
