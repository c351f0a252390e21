"""Authentication on every request but the public ones; scope checks inside the views."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, g, request

from api.quotas import check_rate, rate_counter
from api.services import services
from store.db import session_scope
from store.fences import KEYS_RECORD, Lookup, collection_record
from store.keys import Grant, authenticate, authorize, bearer_digest

# The console's static files are public; everything they do goes through the API with a key.
PUBLIC_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "health.statusz",
        "metrics",
        "console.console",
        "console.console_file",
    }
)


# Views that read their collection's fenced copy right after authentication.
PREFETCH_COLLECTION = frozenset({"queries.submit_query"})


def register_auth(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> None:
        g.api_key = None
        endpoint = request.endpoint
        if endpoint is None or endpoint in PUBLIC_ENDPOINTS or endpoint.startswith("openapi"):
            return  # health, documentation; unknown routes fall through to the 404 handler
        svc = services()
        if not svc.settings.auth_enabled:
            return
        digest = bearer_digest(request.headers.get("Authorization"))

        def load() -> dict[str, Any]:
            with session_scope(svc.sessions) as session:
                return Grant.of(authenticate(session, digest)).to_json()

        # A live key's grant is kept in Redis, fenced against revocation (store.fences). A
        # query also needs its collection's copy: both are read in one round trip.
        wanted = [(KEYS_RECORD, digest)]
        if endpoint in PREFETCH_COLLECTION and request.view_args:
            wanted.append((collection_record(str(request.view_args["name"])), "searched"))
        # The key's requests this second are counted in the same round trip (api.quotas).
        count: int | None = None
        try:
            lookups, count = svc.fences.read_counting(wanted, rate_counter(digest))
            found: list[Lookup | None] = list(lookups)
        except redis.RedisError:
            found = [None] * len(wanted)
        g.prefetched = dict(zip(wanted[1:], found[1:], strict=True))
        g.api_key = Grant.from_json(svc.fences.through(KEYS_RECORD, digest, load, found[0]))
        check_rate(svc, g.api_key, count)


def require(scope: str, collection: str | None = None) -> None:
    """403 unless the request's key has ``scope`` (for ``collection``, when given)."""
    key: Grant | None = g.get("api_key")
    if key is not None:
        authorize(key, scope, collection)


def visible(collection: str) -> bool:
    """Whether the request's key may see ``collection`` at all."""
    key: Grant | None = g.get("api_key")
    return key is None or key.collections is None or collection in key.collections
