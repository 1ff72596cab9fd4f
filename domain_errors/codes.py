"""Stable, machine-readable error codes carried in every error response.

Codes are part of the public API: clients switch on them, so a code never changes
meaning once released. They are plain strings so they serialise as they are.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ErrorCode"]


class ErrorCode:
    """Namespace of the error codes used by the built-in error classes."""

    BAD_REQUEST: Final = "BAD_REQUEST"
    UNAUTHORIZED: Final = "UNAUTHORIZED"
    FORBIDDEN: Final = "FORBIDDEN"
    NOT_FOUND: Final = "NOT_FOUND"
    CONFLICT: Final = "CONFLICT"
    UNPROCESSABLE_ENTITY: Final = "UNPROCESSABLE_ENTITY"
    TOO_MANY_REQUESTS: Final = "TOO_MANY_REQUESTS"
    INTERNAL_SERVER_ERROR: Final = "INTERNAL_SERVER_ERROR"
    SERVICE_UNAVAILABLE: Final = "SERVICE_UNAVAILABLE"
    CONFIGURATION_ERROR: Final = "CONFIGURATION_ERROR"
    VALIDATION_FAILED: Final = "VALIDATION_FAILED"
    DUPLICATE: Final = "DUPLICATE"
    DATABASE_UNAVAILABLE: Final = "DATABASE_UNAVAILABLE"
    BROKER_UNAVAILABLE: Final = "BROKER_UNAVAILABLE"
    DECODE_ERROR: Final = "DECODE_ERROR"
