from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from .codes import ErrorCode

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class DomainError(Exception):
    """Root of every error this library raises on purpose.

    A DomainError is safe to show to a client: its ``message`` is written for
    them, and it carries an HTTP ``status`` and a stable ``code``. Subclasses set
    both at class level; an instance may override ``code`` and attach
    JSON-compatible ``details`` (field names, limits), never secrets.

    ``public_details`` (default true) says whether ``details`` may reach a client
    (RFC 9457 ``errors`` of a 4xx). Errors built by adapters from driver errors set it
    false: their details (SQLSTATE, constraint, table, column) are for operators'
    logs only, never a client body.
    """

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = ErrorCode.INTERNAL_SERVER_ERROR

    message: str
    code: str
    details: Mapping[str, Any]
    public_details: bool

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        public_details: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.details = MappingProxyType(dict(details)) if details else _EMPTY
        self.public_details = public_details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.message, self.code, dict(self.details), self.public_details),
        )


def _rebuild(
    cls: type[DomainError],
    message: str,
    code: str,
    details: dict[str, Any],
    public_details: bool = True,
) -> DomainError:
    return cls(message, code=code, details=details, public_details=public_details)


class BadRequest(DomainError):
    """The request is malformed: a missing field, a wrong type, an empty name."""

    status = 400
    default_code = ErrorCode.BAD_REQUEST


class Unauthorized(DomainError):
    """The caller is not authenticated."""

    status = 401
    default_code = ErrorCode.UNAUTHORIZED


class Forbidden(DomainError):
    """The caller is authenticated but may not do this."""

    status = 403
    default_code = ErrorCode.FORBIDDEN


class NotFound(DomainError):
    """The thing asked for does not exist (or is not visible to the caller)."""

    status = 404
    default_code = ErrorCode.NOT_FOUND


class Conflict(DomainError):
    """The request conflicts with current state: a duplicate key, a stale version."""

    status = 409
    default_code = ErrorCode.CONFLICT


class UnprocessableEntity(DomainError):
    """The request is well formed but breaks a business rule."""

    status = 422
    default_code = ErrorCode.UNPROCESSABLE_ENTITY


class TooManyRequests(DomainError):
    """The caller is over a rate limit; retry later."""

    status = 429
    default_code = ErrorCode.TOO_MANY_REQUESTS


class InternalServerError(DomainError):
    """Something failed on our side; the message is generic by construction."""

    status = 500
    default_code = ErrorCode.INTERNAL_SERVER_ERROR


class ServiceUnavailable(DomainError):
    """A dependency (database, broker) is down or saturated; retry later."""

    status = 503
    default_code = ErrorCode.SERVICE_UNAVAILABLE


class ConfigurationError(DomainError):
    """Settings are missing or malformed. Names the keys, never a secret's value."""

    status = 500
    default_code = ErrorCode.CONFIGURATION_ERROR


def bad_request(message: str, **details: Any) -> BadRequest:
    """Build a :class:`BadRequest` with optional details."""
    return BadRequest(message, details=details)


def unauthorized(message: str = "authentication required", **details: Any) -> Unauthorized:
    """Build an :class:`Unauthorized`."""
    return Unauthorized(message, details=details)


def forbidden(message: str = "not allowed", **details: Any) -> Forbidden:
    """Build a :class:`Forbidden`."""
    return Forbidden(message, details=details)


def not_found(what: str, key: object | None = None) -> NotFound:
    """Build a :class:`NotFound` for ``what`` (and its key, when given)."""
    if key is None:
        return NotFound(f"{what} not found", details={"resource": what})
    return NotFound(f"{what} {key!s} not found", details={"resource": what, "key": str(key)})


def conflict(message: str, **details: Any) -> Conflict:
    """Build a :class:`Conflict`."""
    return Conflict(message, details=details)


def unprocessable(message: str, **details: Any) -> UnprocessableEntity:
    """Build an :class:`UnprocessableEntity`."""
    return UnprocessableEntity(message, details=details)


def too_many_requests(message: str = "too many requests", **details: Any) -> TooManyRequests:
    """Build a :class:`TooManyRequests`."""
    return TooManyRequests(message, details=details)


def internal(message: str = "internal server error") -> InternalServerError:
    """Build an :class:`InternalServerError`."""
    return InternalServerError(message)


def unavailable(message: str = "service unavailable", **details: Any) -> ServiceUnavailable:
    """Build a :class:`ServiceUnavailable`."""
    return ServiceUnavailable(message, details=details)


def wrap(
    exc: BaseException,
    message: str,
    *,
    error: type[DomainError] = InternalServerError,
) -> DomainError:
    """Wrap ``exc`` in a DomainError with a client-safe ``message``.

    The original exception is kept as ``__cause__`` for logs and debuggers. If
    ``exc`` is already a DomainError, the result keeps its class, status, code and
    details (the ``error`` argument is ignored) so that wrapping never downgrades a
    404 into a 500.
    """
    result: DomainError
    if isinstance(exc, DomainError):
        result = type(exc)(
            message, code=exc.code, details=exc.details, public_details=exc.public_details
        )
    else:
        result = error(message)
    result.__cause__ = exc
    return result
