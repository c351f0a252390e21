"""The API's error envelope as exceptions: one class per kind of failure a caller handles.

Every 4xx and 5xx answer of the API is ``{"error": {"code", "message", "details"}}``;
``raise_for`` turns it into the matching class below, keeping the code, the message, the
details and the ``Retry-After`` the server asked for.
"""

from __future__ import annotations

from typing import Any


class UmarvelClientError(Exception):
    """Base of every error this client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionFailed(UmarvelClientError):
    """The API could not be reached (refused, DNS, TLS, timed out)."""


class WaitTimeout(UmarvelClientError):
    """A job did not finish within the time the caller gave it."""


class JobFailed(UmarvelClientError):
    """A query or ingestion job ended failed, cancelled or expired."""

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


class ApiError(UmarvelClientError):
    """The API answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.reason = message
        self.details = details
        self.retry_after = retry_after


class InvalidRequest(ApiError):
    """400 or 422: the request was refused as it is; sending it again changes nothing."""


class Unauthorized(ApiError):
    """401: no key, or a key that is unknown or revoked."""


class Forbidden(ApiError):
    """403: the key lacks the scope or the collection."""


class NotFound(ApiError):
    """404: no such collection, document or job."""


class Conflict(ApiError):
    """409: the resource is busy or exists already (a reindex running, a taken name)."""


class PayloadTooLarge(ApiError):
    """413: the body or an image is over the server's limit."""


class Overloaded(ApiError):
    """429: the queues are full; ``retry_after`` says when to come back."""


class Unavailable(ApiError):
    """503: a dependency of the API (SQL, Redis, the workers) is down for now."""


class ServerError(ApiError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: Overloaded,
    503: Unavailable,
}


def error_for(status: int, body: Any, retry_after: str | None) -> ApiError:
    """The exception for an error answer (``body`` is its parsed JSON, or its text)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = str(error.get("message") or "")
        details = error.get("details")
    else:
        code, message, details = "error", str(body)[:300], None
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(status, code, message, details, _seconds(retry_after))


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not sent by this API
