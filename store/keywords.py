"""Keyword relevance over documents' text, computed by the SQL metadata store itself.

The text is tokenised here, in Python, once for both stores, so a query finds the same
documents on SQLite and on PostgreSQL. A document keeps its terms in ``search_text``
(space-separated); the store indexes that column with its own full-text engine and ranks
matches with it:

- **SQLite**: an FTS5 table (``documents_fts``, external content, kept by triggers; the
  ``unicode61`` tokenizer, diacritics kept) ranked by FTS5's ``bm25()``.
- **PostgreSQL**: a stored ``tsvector`` column (``search_vector``, the ``simple``
  configuration: no stemming, no stop words) with a GIN index, ranked by ``ts_rank_cd``.

Tokenisation (``terms``): Unicode NFKC, then case folding. A term is a run of letters and
digits; every other character separates terms, so ``SKU-48213`` is ``sku 48213`` and
``O'Brien`` is ``o brien``. A query keeps them intact as phrases: each word of the query
(what lies between spaces) must match as its terms in a row, so ``SKU-48213`` finds
``SKU-48213`` and ``sku 48213`` but not a document with ``sku`` and ``48213`` apart. Accents
are kept (``Zürich`` is not ``Zurich``). Scripts written without spaces (Chinese, Japanese,
Thai, ...) are one term per character, and a query's run of them a phrase: ``東京`` finds
``東京タワー``. Words are matched as written: no stemming, no synonyms, no stop words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Join,
    Select,
    column,
    func,
    literal,
    literal_column,
    select,
    table,
)
from sqlalchemy.ext.compiler import compiles

# Letters, digits and combining marks; each character of a script without spaces alone.
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\U00020000-\U0002fa1f"  # CJK ideographs, supplementary planes
)
_TERM = re.compile(rf"[{_UNSPACED}]|(?:(?![{_UNSPACED}])[^\W_])+")
MAX_QUERY_WORDS = 64  # a query's words beyond this are ignored

FTS_TABLE = "documents_fts"
VECTOR_COLUMN = "search_vector"


def terms(value: str | None) -> list[str]:
    """``value``'s terms in order (see the module's notes)."""
    if not value:
        return []
    return _TERM.findall(unicodedata.normalize("NFKC", value).casefold())


def search_text(value: str | None) -> str | None:
    """What a document stores for the full-text engines: its terms, space-separated."""
    found = terms(value)
    return " ".join(found) if found else None


def query_phrases(query: str) -> list[list[str]]:
    """The phrases a keyword query asks for: each word's terms, in order, unique."""
    phrases: list[list[str]] = []
    for word in query.split()[:MAX_QUERY_WORDS]:
        phrase = terms(word)
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


Phrase = Sequence[str]


class _FtsFirst(Join):
    """A join SQLite runs in the order written (``CROSS JOIN``): the FTS5 scan outside,
    each match's document by rowid inside. Without statistics, its planner would rather
    walk a collection's documents by index and run the MATCH once per document: seconds
    for a query that takes a millisecond the other way round."""

    inherit_cache = True


@compiles(_FtsFirst, "sqlite")
def _compile_fts_first(join: _FtsFirst, compiler: Any, **kw: Any) -> str:
    kw["asfrom"] = True
    left, right = compiler.process(join.left, **kw), compiler.process(join.right, **kw)
    return f"{left} CROSS JOIN {right} ON {compiler.process(join.onclause, **kw)}"


def match_expression(
    dialect: str, phrases: Sequence[Phrase], required: Sequence[Phrase] = ()
) -> str:
    """The engine's query for any of ``phrases`` (and, when given, any of ``required``).
    Terms hold letters and digits only, so nothing in them can be read as the engine's
    query syntax; they are quoted anyway."""
    if dialect == "sqlite":
        either, both = " OR ", " AND "
        quoted = ['"' + " ".join(phrase) + '"' for phrase in phrases]
        must = ['"' + " ".join(phrase) + '"' for phrase in required]
    else:
        either, both = " | ", " & "
        quoted = ["(" + " <-> ".join(f"'{t}'" for t in phrase) + ")" for phrase in phrases]
        must = ["(" + " <-> ".join(f"'{t}'" for t in phrase) + ")" for phrase in required]
    expression = "(" + either.join(quoted) + ")"
    return "(" + either.join(must) + ")" + both + expression if must else expression


def _matches(
    dialect: str,
    document: Any,
    where: Sequence[ColumnElement[bool]],
    query: str,
    *columns: Any,
    scored: bool = True,
) -> tuple[Select[Any], Any]:
    """Rows of ``document`` matching the engine ``query`` and ``where``: the statement
    (selecting ``columns``, and the score unless not ``scored``: scoring is most of a
    match's cost) and the newest-first ordering."""
    match: Any = literal(query)  # a bound parameter, never SQL text
    score: ColumnElement[Any]
    if dialect == "sqlite":
        fts = table(FTS_TABLE, column("rowid"))  # the FTS5 table has no model
        score = -func.bm25(literal_column(FTS_TABLE))  # bm25() is lower for better matches
        statement = (
            select(*columns, *([score.label("score")] if scored else []))
            .select_from(_FtsFirst(fts, document.__table__, fts.c.rowid == document.id))
            .where(literal_column(FTS_TABLE).op("MATCH")(match))
        )
        newest = fts.c.rowid.desc()  # FTS5 walks its index in this order: no sort
    else:
        vector: Any = literal_column(f"documents.{VECTOR_COLUMN}")
        tsquery = func.to_tsquery(literal_column("'simple'"), match)
        score = func.ts_rank_cd(vector, tsquery)
        statement = select(*columns, *([score.label("score")] if scored else []))
        statement = statement.where(vector.op("@@")(tsquery))
        newest = document.id.desc()
    return statement.where(*where), newest


def match_counts(
    dialect: str,
    phrases: Sequence[Phrase],
    document: Any,
    where: Sequence[ColumnElement[bool]],
    cap: int,
) -> Select[Any]:
    """One row: how many rows match each of ``phrases`` alone, each counted up to
    ``cap + 1`` (enough to tell a rare phrase from a common one, at a bounded cost)."""
    counts = []
    for phrase in phrases:
        expression = match_expression(dialect, [phrase])
        statement, _ = _matches(dialect, document, where, expression, document.id, scored=False)
        first = statement.limit(cap + 1).subquery()
        counts.append(select(func.count()).select_from(first).scalar_subquery())
    return select(*counts)


def ranked(
    dialect: str,
    phrases: Sequence[Phrase],
    document: Any,
    where: Sequence[ColumnElement[bool]],
    limit: int,
    *,
    required: Sequence[Phrase] = (),
    window: int | None = None,
) -> Select[Any]:
    """``(external id, score)`` of the ``limit`` best matches of any of ``phrases`` among
    rows of ``document`` (the mapped ``Document``) that satisfy ``where``; a higher score
    is a better match. ``required``: only rows that match one of these are ranked (scored
    by all the phrases). ``window``: only the newest ``window`` matches are scored."""
    query = match_expression(dialect, phrases, required)
    matches, newest = _matches(dialect, document, where, query, document.external_id, document.id)
    if window is not None:
        matches = matches.order_by(newest).limit(window)
    scored = matches.subquery("matches")
    return (
        select(scored.c.external_id, scored.c.score)
        .order_by(scored.c.score.desc(), scored.c.id)
        .limit(limit)
    )


def include_object(_object: Any, name: str | None, type_: str, reflected: bool, _to: Any) -> bool:
    """For Alembic's comparisons: leave out what the full-text engines own (the FTS5 table
    and its shadow tables, the ``tsvector`` column and its index), which no model declares."""
    owned = (name or "").startswith(FTS_TABLE) or (name or "").endswith(VECTOR_COLUMN)
    return not (reflected and owned)
