"""The project's one exception hierarchy.

Every error a user can cause or fix is an ``LwmError``. Each class names, once, the gRPC
status code the market answers with (``status``, a ``grpc.StatusCode`` member name, kept as
a string so ``shared/`` never imports grpc) and the exit code the ``lwm`` CLI ends with.
The server maps ``status`` to ``grpc.StatusCode[status]``; the CLI prints ``str(error)`` as a
one-line reason and exits with ``exit_code``.
"""

from __future__ import annotations

from typing import ClassVar


class LwmError(Exception):
    """Base class: a clear, one-line, user-facing reason."""

    status: ClassVar[str] = "INTERNAL"
    exit_code: ClassVar[int] = 1

    def __init_subclass__(cls, *, status: str | None = None, exit_code: int | None = None) -> None:
        """``class NotFound(LwmError, status="NOT_FOUND", exit_code=7)``: each subclass
        states its status and exit code in its header; what it leaves out it inherits."""
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if exit_code is not None:
            cls.exit_code = exit_code


class InvalidInput(LwmError, status="INVALID_ARGUMENT", exit_code=2):
    """An argument or a file the caller gave is wrong (bad value, wrong shape, NaN)."""


class DataError(InvalidInput, exit_code=3):
    """User data is missing, empty, unreadable, not UTF-8 or of an unknown format."""


class SpecError(InvalidInput, exit_code=4):
    """A specification is malformed: wrong shape, not finite, unknown kind or version."""


class PrivacyError(InvalidInput, exit_code=4):
    """Privacy parameters are invalid (epsilon <= 0, delta outside (0, 1), ...)."""


class SchemaMismatch(LwmError, status="FAILED_PRECONDITION", exit_code=5):
    """A spec was made under another schema than the one it is compared or submitted to."""


class ModelUnavailable(LwmError, status="FAILED_PRECONDITION", exit_code=6):
    """A model named by the user cannot be loaded here; the message says how to get it."""


class NotFound(LwmError, status="NOT_FOUND", exit_code=7):
    """What was asked for (a learnware, a key, a file) does not exist or is not visible."""


class AlreadyExists(LwmError, status="ALREADY_EXISTS", exit_code=8):
    """Creating something that exists (a package, a key file, a registered key)."""


class Unauthenticated(LwmError, status="UNAUTHENTICATED", exit_code=9):
    """The caller's identity could not be established (no or unknown key, bad signature)."""


class PermissionDenied(LwmError, status="PERMISSION_DENIED", exit_code=10):
    """The caller is known but its role does not allow the action."""


class Revoked(LwmError, status="FAILED_PRECONDITION", exit_code=14):
    """A key was revoked: what it signed can no longer be trusted."""


class FailedPrecondition(LwmError, status="FAILED_PRECONDITION", exit_code=16):
    """The thing exists but is not in a state that allows the action (withdrawing a
    learnware twice, fetching a rejected one)."""


class IntegrityError(LwmError, status="INVALID_ARGUMENT", exit_code=11):
    """Bytes do not match their hash or signature (tampered or corrupt learnware)."""


class UntrustedKey(IntegrityError, status="FAILED_PRECONDITION", exit_code=15):
    """A signature holds, but with a key the user does not trust (not pinned, or another
    key than the one pinned for that id or name): the learnware is refused."""


class ResourceExhausted(LwmError, status="RESOURCE_EXHAUSTED", exit_code=12):
    """A size or rate limit was hit."""


class BudgetExceeded(ResourceExhausted, exit_code=17):
    """A release from the user's data would take its privacy ledger past its total epsilon
    (``client.privacy_ledger``): refused before the spec is computed or sent."""


class Unavailable(LwmError, status="UNAVAILABLE", exit_code=13):
    """The market could not be reached."""


class DeadlineExceeded(LwmError, status="DEADLINE_EXCEEDED", exit_code=18):
    """A call took longer than allowed: the caller sent too slowly (the market cut it), or
    the market answered too slowly (the client's own deadline)."""


_BY_STATUS: dict[str, type[LwmError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "FAILED_PRECONDITION": SchemaMismatch,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def error_for_status(status: str, message: str) -> LwmError:
    """The client side of the mapping: a gRPC status name and its message -> an LwmError."""
    return _BY_STATUS.get(status, LwmError)(message)
