from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ._errors import DomainError, InternalServerError

GENERIC_MESSAGE: Final = "internal server error"
_TITLES: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
PROBLEM_JSON: Final = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """What a client sees for an error: status, stable code, safe message."""

    status_code: int
    error_code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON body: ``{"status_code", "error_code", "message"}``."""
        return {
            "status_code": self.status_code,
            "error_code": self.error_code,
            "message": self.message,
        }


_GENERIC_5XX: Final[dict[int, str]] = {503: "service unavailable"}


def _public(exc: BaseException) -> DomainError:
    if not isinstance(exc, DomainError):
        return InternalServerError(GENERIC_MESSAGE)
    if exc.status >= 500:
        # A 5xx message is written for operators and may come from deep inside (a
        # host, SQL, a key name): clients get the status's generic text and the code.
        return type(exc)(_GENERIC_5XX.get(exc.status, GENERIC_MESSAGE), code=exc.code)
    return exc


def to_http_response(exc: BaseException) -> ErrorResponse:
    """Map any exception to the response a client may see.

    A 4xx DomainError keeps its status, code and message. A 5xx keeps its status
    and code, but its message is replaced by a generic one ("internal server
    error", "service unavailable"). Any other exception is a 500 with the generic
    message and nothing of the original.
    """
    err = _public(exc)
    return ErrorResponse(status_code=err.status, error_code=err.code, message=err.message)


def to_problem_details(exc: BaseException, *, instance: str | None = None) -> dict[str, Any]:
    """Map any exception to an RFC 9457 problem details object.

    Members: ``type`` (``about:blank``), ``title`` (the status phrase), ``status``,
    ``detail`` (the safe message), ``code`` (extension: the stable error code),
    ``instance`` when given, and ``errors`` (extension) carrying the error's
    ``details`` for 4xx errors whose details are public (``public_details``: an
    adapter's database details, such as a constraint or table name, never are).
    Serve it as ``application/problem+json``.
    """
    err = _public(exc)
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(err.status, "Error"),
        "status": err.status,
        "detail": err.message,
        "code": err.code,
    }
    if instance is not None:
        body["instance"] = instance
    if err.details and err.status < 500 and err.public_details:
        body["errors"] = dict(err.details)
    return body
