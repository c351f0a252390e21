"""How documents and ranked hits are shown to clients: one place for the API and workers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Document


def document_view(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.external_id,
        "text": doc.text,
        "metadata": doc.doc_metadata,
        "image_url": f"/v1/media/{doc.image_key}" if doc.image_key else None,
        "status": doc.status,
    }


def enrich(
    session: Session, collection_id: int, hits: list[dict[str, Any]], first_rank: int = 1
) -> list[dict[str, Any]]:
    """Hits, ranked, with their documents' text, metadata and image URL.

    A hit whose document was deleted since it was found is left out.
    """
    ids = [h["document_id"] for h in hits]
    docs = {}
    if ids:
        rows = session.scalars(
            select(Document).where(
                Document.collection_id == collection_id, Document.external_id.in_(ids)
            )
        )
        docs = {doc.external_id: doc for doc in rows}
    enriched: list[dict[str, Any]] = []
    for hit in hits:
        doc = docs.get(hit["document_id"])
        if doc is None:
            continue
        extra = document_view(doc)
        extra.pop("id", None)
        extra.pop("status", None)
        enriched.append({"rank": first_rank + len(enriched), **hit, **extra})
    return enriched
