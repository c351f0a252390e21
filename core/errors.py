"""The one error vocabulary of umarvel-search.

Libraries raise these; the API renders them as ``{"error": {"code", "message", "details"}}``
with the status below, and Celery tasks record the message on the job before re-raising.
"""

from __future__ import annotations

from typing import Any


class UmarvelError(Exception):
    """Base class: a failure with a stable machine-readable code and an HTTP status."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidRequest(UmarvelError):
    code = "invalid_request"
    status = 400


class Unauthorized(UmarvelError):
    code = "unauthorized"
    status = 401


class Forbidden(UmarvelError):
    code = "forbidden"
    status = 403


class NotFound(UmarvelError):
    code = "not_found"
    status = 404


class Conflict(UmarvelError):
    code = "conflict"
    status = 409


class PayloadTooLarge(UmarvelError):
    code = "payload_too_large"
    status = 413


class Overloaded(UmarvelError):
    code = "overloaded"
    status = 429


class Unavailable(UmarvelError):
    code = "unavailable"
    status = 503


class Timeout(UmarvelError):
    code = "timeout"
    status = 504
