"""Deletes and drops: vectors of documents and collections that SQL no longer has."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestion import outbox
from ingestion.resources import Resources
from recall.index import milvus_name
from store.tables import Collection, Document
from store.writes import forget_writes, record_write


def delete(rt: Resources, entry: outbox.Entry) -> dict[str, Any]:
    """Remove deleted documents' vectors from each generation they were written to.

    An id that SQL holds again (deleted, then sent again) is left alone: its new vector may
    be written already, and the new document's own write replaces or removes the old one.
    """
    payload = entry.payload
    with rt.sessions() as session:
        live = _live(session, payload["storage"], payload["ids"])
    ids = [external_id for external_id in payload["ids"] if external_id not in live]
    for generation in payload["generations"]:
        name = milvus_name(rt.settings.milvus_prefix, payload["storage"], generation)
        if ids and rt.index.exists(name):
            record_write(rt.redis, name, rt.index.delete(name, ids))
            rt.index.flush(name)
    _complete(rt, entry)
    return {"deleted": len(ids), "kept": len(live)}


def _live(session: Session, storage: str, ids: list[str]) -> set[str]:
    """Those of ``ids`` that the collection stored as ``storage`` holds as documents now."""
    name, _, uid = storage.rpartition("_")
    return set(
        session.scalars(
            select(Document.external_id)
            .join(Collection, Collection.id == Document.collection_id)
            .where(
                Collection.name == name,
                Collection.uid.startswith(uid, autoescape=True),
                Document.external_id.in_(ids),
            )
        )
    )


def drop(rt: Resources, entry: outbox.Entry) -> dict[str, Any]:
    """Drop Milvus generations: a deleted collection's, or one no longer served."""
    dropped = 0
    for generation in entry.payload["generations"]:
        name = milvus_name(rt.settings.milvus_prefix, entry.payload["storage"], generation)
        if rt.index.exists(name):
            rt.index.drop(name)
            dropped += 1
        forget_writes(rt.redis, name)
    _complete(rt, entry)
    return {"dropped": dropped}


def _complete(rt: Resources, entry: outbox.Entry) -> None:
    with rt.sessions.begin() as session:
        outbox.complete(session, entry.id)
