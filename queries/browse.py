"""Browsing one collection's documents in SQL: pages in the order of their SQL id, counts
per value of a declared field, and every page in turn for an export.

Pages are keyset pages: each starts after the last id of the one before, never at an
offset. Ids only grow and a document keeps its id while it lives (sending it again
updates its row), so a document present for the whole walk is seen exactly once whatever
is added or deleted meanwhile; one added meanwhile is seen if its id is past the walk's
position, one deleted meanwhile if its page was read before it went.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, desc, func, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from queries.sql_filters import metadata_value, sql_filter
from store.db import session_scope
from store.states import DocumentStatus
from store.tables import Document


def selection(
    collection_id: int,
    fields: dict[str, str],
    spec: Any = None,
    status: DocumentStatus | None = None,
) -> list[ColumnElement[bool]]:
    """The clauses (joined by ``and``) selecting a collection's documents whose metadata
    satisfies the filter ``spec`` (refused with ``InvalidRequest`` when it is not a valid
    filter on ``fields``) and, when given, whose state is ``status``."""
    where = [Document.collection_id == collection_id, *sql_filter(spec, fields)]
    if status is not None:
        where.append(Document.status == status)
    return where


def page(
    session: Session, where: list[ColumnElement[bool]], after: int | None, limit: int
) -> tuple[list[Document], int | None]:
    """Up to ``limit`` selected documents with an id above ``after``, in id order, their
    media loaded; and the last one's id when more follow (None: this is the last page)."""
    query = (
        select(Document)
        .where(*where)
        .order_by(Document.id)
        .limit(limit + 1)
        .options(selectinload(Document.media))
    )
    if after is not None:
        query = query.where(Document.id > after)
    documents = list(session.scalars(query))
    more = len(documents) > limit
    documents = documents[:limit]
    return documents, (documents[-1].id if more else None)


def pages(
    sessions: sessionmaker[Session], where: list[ColumnElement[bool]], size: int
) -> Iterator[list[Document]]:
    """Every selected document, a page at a time, each page read in a transaction of its
    own: a long walk holds no transaction open between pages."""
    after: int | None = None
    while True:
        with session_scope(sessions) as session:
            documents, after = page(session, where, after, size)
        if documents:
            yield documents
        if after is None:
            return


@dataclass(frozen=True)
class Counts:
    """How many selected documents hold each value of a field."""

    values: list[tuple[Any, int]]  # the most frequent first, ties by value; at most limit
    nulls: int  # documents without a value (missing, or null)
    truncated: bool  # more values than ``limit`` were found


def counts(
    session: Session, where: list[ColumnElement[bool]], field: str, kind: str, limit: int
) -> Counts:
    """The counts per value of the declared metadata ``field`` (of type ``kind``)."""
    selected = select(metadata_value(field, kind).label("value")).where(*where).subquery()
    value = selected.c.value
    number = func.count().label("number")
    rows = session.execute(
        select(value, number)
        .where(value.is_not(None))
        .group_by(value)
        .order_by(desc(number), value)
        .limit(limit + 1)
    ).all()
    nulls = session.scalar(select(func.count()).select_from(selected).where(value.is_(None)))
    return Counts(
        values=[(found, int(n)) for found, n in rows[:limit]],
        nulls=int(nulls or 0),
        truncated=len(rows) > limit,
    )
