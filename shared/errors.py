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


class InvalidInput(LwmError):
    """An argument or a file the caller gave is wrong (bad value, wrong shape, NaN)."""

    status = "INVALID_ARGUMENT"
    exit_code = 2


class DataError(InvalidInput):
    """User data is missing, empty, unreadable, not UTF-8 or of an unknown format."""

    exit_code = 3


class SpecError(InvalidInput):
    """A specification is malformed: wrong shape, not finite, unknown kind or version."""

    exit_code = 4


class PrivacyError(InvalidInput):
    """Privacy parameters are invalid (epsilon <= 0, delta outside (0, 1), ...)."""

    exit_code = 4


class SchemaMismatch(LwmError):
    """A spec was made under another schema than the one it is compared or submitted to."""

    status = "FAILED_PRECONDITION"
    exit_code = 5


class ModelUnavailable(LwmError):
    """A model named by the user cannot be loaded here; the message says how to get it."""

    status = "FAILED_PRECONDITION"
    exit_code = 6


class NotFound(LwmError):
    status = "NOT_FOUND"
    exit_code = 7


class AlreadyExists(LwmError):
    status = "ALREADY_EXISTS"
    exit_code = 8


class Unauthenticated(LwmError):
    """The caller's identity could not be established (no or unknown key, bad signature)."""

    status = "UNAUTHENTICATED"
    exit_code = 9


class PermissionDenied(LwmError):
    """The caller is known but its role does not allow the action."""

    status = "PERMISSION_DENIED"
    exit_code = 10


class Revoked(LwmError):
    """A key was revoked: what it signed can no longer be trusted."""

    status = "FAILED_PRECONDITION"
    exit_code = 14


class IntegrityError(LwmError):
    """Bytes do not match their hash or signature (tampered or corrupt learnware)."""

    status = "INVALID_ARGUMENT"
    exit_code = 11


class ResourceExhausted(LwmError):
    """A size or rate limit was hit."""

    status = "RESOURCE_EXHAUSTED"
    exit_code = 12


class Unavailable(LwmError):
    """The market could not be reached."""

    status = "UNAVAILABLE"
    exit_code = 13


_BY_STATUS: dict[str, type[LwmError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "FAILED_PRECONDITION": SchemaMismatch,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": Unavailable,
}


def error_for_status(status: str, message: str) -> LwmError:
    """The client side of the mapping: a gRPC status name and its message -> an LwmError."""
    return _BY_STATUS.get(status, LwmError)(message)
