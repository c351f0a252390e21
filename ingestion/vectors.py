"""Deletes and drops: vectors of documents and collections that SQL no longer has."""

from __future__ import annotations

from typing import Any

from ingestion import outbox
from ingestion.resources import Resources
from recall.index import milvus_name


def delete(rt: Resources, entry: outbox.Entry) -> dict[str, Any]:
    """Remove deleted documents' vectors from each generation they were written to."""
    payload = entry.payload
    for generation in payload["generations"]:
        name = milvus_name(rt.settings.milvus_prefix, payload["storage"], generation)
        if rt.index.exists(name):
            rt.index.delete(name, payload["ids"])
            rt.index.flush(name)
    _complete(rt, entry)
    return {"deleted": len(payload["ids"])}


def drop(rt: Resources, entry: outbox.Entry) -> dict[str, Any]:
    """Drop Milvus generations: a deleted collection's, or one no longer served."""
    dropped = 0
    for generation in entry.payload["generations"]:
        name = milvus_name(rt.settings.milvus_prefix, entry.payload["storage"], generation)
        if rt.index.exists(name):
            rt.index.drop(name)
            dropped += 1
    _complete(rt, entry)
    return {"dropped": dropped}


def _complete(rt: Resources, entry: outbox.Entry) -> None:
    with rt.sessions.begin() as session:
        outbox.complete(session, entry.id)
