"""The filter language of ``recall.filters``, compiled for SQL instead of Milvus.

A filter means the same on both sides of a hybrid search, and in a document listing: the
spec is validated by ``recall.filters.compile_filter`` (one set of rules and messages), then
each clause compares the document's metadata value, read from its JSON column with the
declared type. A missing value (or a JSON null) satisfies no comparison, as in Milvus.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast

from recall.filters import COMPARE, compile_filter
from store.tables import Document


def metadata_value(field: str, kind: str) -> ColumnElement[Any]:
    """A document's value of the declared metadata ``field``, as SQL of its type (NULL when
    it has none)."""
    element = Document.doc_metadata[field]
    if kind == "int":  # 64-bit: as_integer() casts to a 32-bit INTEGER on PostgreSQL
        return cast(element.as_string(), BigInteger)
    if kind == "float":
        return element.as_float()
    if kind == "bool":
        return element.as_boolean()
    return element.as_string()


def sql_filter(spec: Any, fields: dict[str, str]) -> list[ColumnElement[bool]]:
    """The clauses (joined by ``and``) selecting the documents that satisfy ``spec``."""
    compile_filter(spec, fields)  # validates: a bad filter is refused as on the Milvus side
    clauses: list[ColumnElement[bool]] = []
    for field, condition in (spec or {}).items():
        value = metadata_value(field, fields[field])
        for op, expected in (
            condition if isinstance(condition, dict) else {"eq": condition}
        ).items():
            clauses.append(value.in_(expected) if op == "in" else COMPARE[op](value, expected))
    return clauses
