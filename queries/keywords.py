"""Keyword search of one collection in the SQL store (``store.keywords``), with filters."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from queries.sql_filters import sql_filter
from store.keywords import match_counts, query_phrases, ranked
from store.states import DocumentStatus
from store.tables import Document


def keyword_search(
    session: Session,
    collection_id: int,
    query: str | None,
    limit: int,
    spec: Any = None,
    fields: dict[str, str] | None = None,
    window: int | None = None,
) -> list[tuple[str, float]]:
    """``(external id, score)`` of the ``limit`` indexed documents whose text best matches
    ``query`` and whose metadata satisfies the filter ``spec``; best first. ``window``:
    only the newest that many matches are scored (``store.keywords.ranked``)."""
    phrases = query_phrases(query or "")
    if not phrases:
        return []
    where = [
        Document.collection_id == collection_id,
        Document.status == DocumentStatus.INDEXED,
        *sql_filter(spec, fields or {}),
    ]
    statement = _ranking(session, phrases, where, limit, window)
    return [(str(doc), float(score)) for doc, score in session.execute(statement).all()]


def _ranking(
    session: Session,
    phrases: list[list[str]],
    where: list[Any],
    limit: int,
    window: int | None,
) -> Any:
    """The statement ranking the matches of ``phrases``. With a ``window``, as a cutoff
    frequency does: a phrase matching more than ``window`` rows is common. With a rare one
    in the query, only rows matching a rare one are ranked (every row that holds a code or
    a name, whatever its age), scored by all the phrases; with none, the newest ``window``
    matches are. One phrase needs no count: its newest ``window`` matches are all it has
    when it is rare."""
    dialect = session.get_bind().dialect.name
    if window is None or len(phrases) == 1:
        return ranked(dialect, phrases, Document, where, limit, window=window)
    counts = session.execute(match_counts(dialect, phrases, Document, where, window)).one()
    rare = [phrase for phrase, count in zip(phrases, counts, strict=True) if count <= window]
    if len(rare) == len(phrases):
        return ranked(dialect, phrases, Document, where, limit)
    if rare:
        return ranked(dialect, phrases, Document, where, limit, required=rare)
    return ranked(dialect, phrases, Document, where, limit, window=window)
