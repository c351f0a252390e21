"""A typed Python client for the umarvel-search HTTP API (see ``client.api``)."""

from client.api import Client, encode_image
from client.errors import (
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
from client.types import (
    Collection,
    Document,
    Hit,
    IngestJob,
    IngestSummary,
    ItemError,
    SearchResult,
)

__all__ = [
    "ApiError",
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
    "SearchResult",
    "ServerError",
    "UmarvelClientError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "encode_image",
]
