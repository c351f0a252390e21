"""A typed Python client of the umarvel-search HTTP API: ``Client`` with blocking calls
(``umarvel_client.api``), ``AsyncClient`` with coroutines (``umarvel_client.aio``)."""

from umarvel_client.aio import AsyncClient
from umarvel_client.api import USER_AGENT, Client, __version__, encode_image
from umarvel_client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    JobFailed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    UmarvelClientError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from umarvel_client.types import (
    Collection,
    Document,
    Hit,
    IngestJob,
    IngestSummary,
    ItemError,
    SearchResult,
)

__all__ = [
    "USER_AGENT",
    "ApiError",
    "AsyncClient",
    "Client",
    "Collection",
    "Conflict",
    "ConnectionFailed",
    "Document",
    "Forbidden",
    "Hit",
    "IngestJob",
    "IngestSummary",
    "InvalidRequest",
    "ItemError",
    "JobFailed",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "SearchOptions",
    "SearchResult",
    "ServerError",
    "UmarvelClientError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "__version__",
    "encode_image",
]
