"""A small filter language over declared, typed metadata fields, compiled to Milvus.

A filter is JSON: ``{"field": value}`` (equality), ``{"field": {"gte": 1, "lt": 5}}``
(ranges), ``{"field": {"in": [...]}}``; several fields are joined with ``and``. Field
names must be declared on the collection with a type (``int``, ``float``, ``str``,
``bool``); values are checked against it and rendered by the project, so a raw client
string never reaches Milvus. Every expression the project sends, filters and primary-key
lists alike, is built here: string literals are escaped by ``string_literal`` alone.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from core.errors import InvalidRequest

FIELD_TYPES = ("int", "float", "str", "bool")
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
RESERVED = frozenset({"id", "vector"})
_OPERATORS = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
MAX_IN = 1000
STR_MAX_BYTES = 2048  # the VARCHAR length of declared str fields in Milvus (UTF-8 bytes)
PK_FIELD = "id"

# Escapes that both milvus-lite's and Milvus' expression grammars read the same way.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Other control characters have no escape common to both grammars.
_UNQUOTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def string_literal(value: str) -> str:
    """``value`` as a double-quoted Milvus string literal that reads back as exactly it."""
    bad = _UNQUOTABLE.search(value)
    if bad:
        raise InvalidRequest(
            f"control character U+{ord(bad.group()):04X} cannot appear in a filter value"
        )
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def ids_expression(ids: list[str], field: str = PK_FIELD) -> str:
    """The expression selecting these primary keys, or these values of another string
    ``field`` (never pymilvus' unescaped ``ids=``)."""
    return f"{field} in [{', '.join(string_literal(i) for i in ids)}]"


def validate_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Check a collection's declared metadata fields: ``{name: type}``."""
    if not isinstance(fields, dict):
        raise InvalidRequest("metadata_fields must be an object of field name to type")
    for name, kind in fields.items():
        if not FIELD_NAME.match(name) or name in RESERVED:
            raise InvalidRequest(
                f"metadata field name {name!r} must match {FIELD_NAME.pattern} and not be "
                f"one of {sorted(RESERVED)}"
            )
        if kind not in FIELD_TYPES:
            raise InvalidRequest(f"metadata field {name!r}: type must be one of {FIELD_TYPES}")
    return dict(fields)


def check_value(field: str, kind: str, value: Any) -> Any:
    """``value`` if it has the declared ``kind``, else a clear error."""
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise InvalidRequest(f"field {field!r} is declared {kind}; got {json.dumps(value)}")
    if kind == "int" and not -(2**63) <= value < 2**63:
        raise InvalidRequest(f"field {field!r}: {value} is out of the 64-bit range")
    if kind == "str" and len(value.encode("utf-8", "surrogatepass")) > STR_MAX_BYTES:
        raise InvalidRequest(f"field {field!r}: strings are at most {STR_MAX_BYTES} UTF-8 bytes")
    return value


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _literal(kind: str, value: Any) -> str:
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return string_literal(value)
    return repr(float(value) if kind == "float" else value)


def compile_filter(
    spec: Any, fields: dict[str, str], present: Callable[[str], str] | None = None
) -> str | None:
    """The Milvus boolean expression for ``spec``, or None for no filter.

    ``present(field)`` names a boolean field that says whether ``field`` holds a value, for
    servers that store no nulls (``recall.index``): each clause then also requires it, so
    a missing value satisfies no comparison there either."""
    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise InvalidRequest("filter must be an object of field name to condition")
    clauses = []
    for field, condition in spec.items():
        if field not in fields:
            raise InvalidRequest(
                f"cannot filter on {field!r}: declared fields are {sorted(fields) or 'none'}"
            )
        kind = fields[field]
        if not isinstance(condition, dict):
            condition = {"eq": condition}
        if not condition:
            raise InvalidRequest(f"filter on {field!r} has no condition")
        for op, value in condition.items():
            clause = _clause(field, kind, op, value)
            clauses.append(clause if present is None else f"({present(field)} and {clause})")
    return " and ".join(clauses)


def _clause(field: str, kind: str, op: str, value: Any) -> str:
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN:
            raise InvalidRequest(f"filter {field!r} 'in' needs a list of 1 to {MAX_IN} values")
        rendered = ", ".join(_literal(kind, check_value(field, kind, v)) for v in value)
        return f"{field} in [{rendered}]"
    if op not in _OPERATORS:
        raise InvalidRequest(
            f"filter {field!r}: unknown operator {op!r}; use one of {[*_OPERATORS, 'in']}"
        )
    if op in ("gt", "gte", "lt", "lte") and kind not in ("int", "float"):
        raise InvalidRequest(f"filter {field!r}: range operators need an int or float field")
    return f"{field} {_OPERATORS[op]} {_literal(kind, check_value(field, kind, value))}"


# The comparisons, for Python values and SQLAlchemy columns alike.
COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def matches(spec: dict[str, Any], fields: dict[str, str], metadata: dict[str, Any]) -> bool:
    """Whether a document's metadata satisfies ``spec``, as the compiled Milvus expression
    would decide (call ``compile_filter`` first: it validates the spec)."""
    for field, condition in spec.items():
        if not isinstance(condition, dict):
            condition = {"eq": condition}
        value = metadata.get(field)
        for op, expected in condition.items():
            if value is None:
                return False  # a missing (null) field satisfies no comparison
            if op == "in":
                if value not in expected:
                    return False
            elif not COMPARE[op](value, expected):
                return False
    return True
