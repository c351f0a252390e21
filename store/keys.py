"""API keys: random secrets shown once, stored as SHA-256 hashes, with scopes.

Scopes are ``search`` (query collections) and ``admin`` (create collections, ingest, and
everything ``search`` may do). A key may be limited to named collections.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from store.tables import ApiKey, utcnow

SCOPES = ("search", "admin")
KEY_PREFIX = "umk_"


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so one unsalted SHA-256 cannot be brute-forced.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    name: str,
    scopes: Sequence[str],
    collections: Sequence[str] | None = None,
) -> tuple[ApiKey, str]:
    """A new key row and the secret, which is shown once and never stored."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise InvalidRequest(f"scopes must be some of {SCOPES}; got {list(scopes)}")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        prefix=secret[:12],
        key_hash=hash_key(secret),
        scopes=sorted(set(scopes)),
        collections=sorted(set(collections)) if collections else None,
    )
    session.add(row)
    session.flush()
    return row, secret


@dataclass(frozen=True)
class Quotas:
    """A key's own quotas; ``None``: the deployment's default (``api.quotas``)."""

    rate: float | None = None  # requests per second
    waiting: int | None = None  # requests held waiting for their job at once
    queued: int | None = None  # query jobs queued or running at once

    @classmethod
    def of(cls, key: ApiKey) -> Quotas:
        return cls(key.rate_limit, key.max_waiting, key.max_queued)


@dataclass(frozen=True)
class Grant:
    """What a live key may do: all that a request needs of it (and what Redis keeps)."""

    id: int
    scopes: tuple[str, ...]
    collections: tuple[str, ...] | None
    quotas: Quotas = Quotas()

    @classmethod
    def of(cls, key: ApiKey) -> Grant:
        collections = None if key.collections is None else tuple(key.collections)
        return cls(key.id, tuple(key.scopes), collections, Quotas.of(key))

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Grant:
        collections = value["collections"]
        quotas = Quotas(**value.get("quotas", {}))
        return cls(
            value["id"],
            tuple(value["scopes"]),
            None if collections is None else tuple(collections),
            quotas,
        )

    def to_json(self) -> dict[str, Any]:
        quotas = {"rate": self.quotas.rate, "waiting": self.quotas.waiting}
        quotas["queued"] = self.quotas.queued
        return {
            "id": self.id,
            "scopes": list(self.scopes),
            "collections": self.collections,
            "quotas": quotas,
        }


def bearer_digest(header: str | None) -> str:
    """The hash of the key in an ``Authorization: Bearer <key>`` header, or 401."""
    if not header or not header.startswith("Bearer "):
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    return hash_key(header[len("Bearer ") :].strip())


def authenticate(session: Session, digest: str) -> ApiKey:
    """The live key whose hash is ``digest``, or 401."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if key is None or not hmac.compare_digest(key.key_hash, digest) or key.revoked_at:
        raise Unauthorized("the API key is not valid (unknown or revoked)")
    return key


def authorize(key: ApiKey | Grant, scope: str, collection: str | None = None) -> None:
    """403 unless ``key`` has ``scope`` (admin includes search) for ``collection``."""
    if scope not in key.scopes and "admin" not in key.scopes:
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    if collection is not None and key.collections is not None and collection not in key.collections:
        raise Forbidden(f"this API key may not use collection {collection!r}")


def find_key(session: Session, ident: str) -> ApiKey:
    """The key with this id or prefix, or NotFound."""
    match = ApiKey.prefix == ident
    if ident.isdigit():
        match = or_(match, ApiKey.id == int(ident))
    key = session.scalar(select(ApiKey).where(match))
    if key is None:
        raise NotFound(f"no API key {ident!r}")
    return key


def revoke(session: Session, ident: str) -> ApiKey:
    """Revoke the key with this id or prefix."""
    key = find_key(session, ident)
    key.revoked_at = key.revoked_at or utcnow()
    return key


def describe(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": key.scopes,
        "collections": key.collections,
        "quotas": {"rate": key.rate_limit, "waiting": key.max_waiting, "queued": key.max_queued},
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def set_quotas(session: Session, ident: str, quotas: Quotas) -> ApiKey:
    """Give the key with this id or prefix its own quotas (None: the deployment's)."""
    key = find_key(session, ident)
    for value in (quotas.rate, quotas.waiting, quotas.queued):
        if value is not None and value < 0:
            raise InvalidRequest("quotas are 0 (no limit) or more")
    key.rate_limit, key.max_waiting, key.max_queued = quotas.rate, quotas.waiting, quotas.queued
    return key
