"""One hit per thing: a ranking grouped by a declared metadata field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.contract import Grouping, RankedHit
from store.tables import Document


def group_hits(hits: Sequence[RankedHit], values: dict[str, Any], size: int) -> list[RankedHit]:
    """At most ``size`` hits per value of ``values`` (document id to its value), each
    group's hits together, best first, and groups in the order of their best hit. A hit
    without a value is a group of its own."""
    groups: dict[Any, list[RankedHit]] = {}
    for hit in hits:
        value = values.get(hit.document_id)
        key = ("value", _hashable(value)) if value is not None else ("alone", hit.document_id)
        members = groups.setdefault(key, [])
        if len(members) < size:
            members.append(hit.model_copy(update={"group": value}))
    return [hit for members in groups.values() for hit in members]


def _hashable(value: Any) -> Any:
    return (type(value).__name__, value)  # 1 and True are different values here


def group_ranking(
    session: Session, collection_id: int, hits: Sequence[RankedHit], grouping: Grouping
) -> list[RankedHit]:
    """``hits`` grouped by their documents' value of ``grouping.field``."""
    ids = [hit.document_id for hit in hits]
    rows = session.execute(
        select(Document.external_id, Document.doc_metadata).where(
            Document.collection_id == collection_id, Document.external_id.in_(ids)
        )
    )
    values = {doc: (metadata or {}).get(grouping.field) for doc, metadata in rows}
    return group_hits(hits, values, grouping.size)
