"""Typed errors with HTTP mapping.

Raise a :class:`DomainError` subclass from domain code; the HTTP edge turns it into
a response with :func:`to_http_response` (``{"status_code", "error_code",
"message"}``) or :func:`to_problem_details` (RFC 9457). Anything that is not a
DomainError becomes a 500 with a generic message: internal messages, SQL, stack
traces and secrets never reach a client. Standard library only.
"""

from ._errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    DomainError,
    Forbidden,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnprocessableEntity,
    bad_request,
    conflict,
    forbidden,
    internal,
    not_found,
    too_many_requests,
    unauthorized,
    unavailable,
    unprocessable,
    wrap,
)
from ._http import (
    GENERIC_MESSAGE,
    PROBLEM_JSON,
    ErrorResponse,
    to_http_response,
    to_problem_details,
)
from .codes import ErrorCode

__all__ = [
    "DomainError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "UnprocessableEntity",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "ConfigurationError",
    "ErrorCode",
    "ErrorResponse",
    "GENERIC_MESSAGE",
    "PROBLEM_JSON",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "unprocessable",
    "too_many_requests",
    "internal",
    "unavailable",
    "wrap",
    "to_http_response",
    "to_problem_details",
]
