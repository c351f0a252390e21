"""The one boundary: what a client sends is checked here against the limits the rest of the
system enforces (PostgreSQL, Milvus, the models), so a bad value is a 400 naming its field
and never a failure further in.

- JSON: parsed by ``parse_json`` alone (depth, non-finite numbers, giant integers).
- Strings: no NUL (PostgreSQL refuses it) and no lone surrogates (not encodable as UTF-8),
  anywhere in a request model (``Strict`` checks its raw input) or a URL.
- Document ids: no control characters, at most 256 characters and 512 UTF-8 bytes (the SQL
  column and the Milvus primary key).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from flask import Flask, request

from core.errors import InvalidRequest

MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 40  # more than any 64-bit integer; Python refuses over 4,300 with a ValueError
ID_MAX_CHARS = 256
ID_MAX_BYTES = 512
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def string_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or sent on, or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if _SURROGATE.search(value):
        return "contains a lone surrogate (not valid Unicode text)"
    return None


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a document id, or None."""
    problem = string_problem(value)
    if problem:
        return problem
    if not value:
        return "must not be empty"
    if _CONTROL.search(value):
        return "must not contain control characters"
    if len(value) > ID_MAX_CHARS or len(value.encode("utf-8")) > ID_MAX_BYTES:
        return f"must be at most {ID_MAX_CHARS} characters and {ID_MAX_BYTES} UTF-8 bytes"
    return None


def check_document_id(value: str) -> str:
    """A pydantic ``AfterValidator``."""
    problem = id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def unsafe_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, problem) of every key or string inside a parsed JSON value."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            problem = string_problem(item)
            if problem:
                yield where or "body", problem
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and string_problem(key):
                    yield where or "body", f"a key {string_problem(key)}"
                    continue
                stack.append((child_path, child))
        elif isinstance(item, list):
            stack.extend(
                (f"{where}.{i}" if where else str(i), child) for i, child in enumerate(item)
            )


def check_strings(value: Any) -> Any:
    """A pydantic ``model_validator(mode="before")``: the first unsafe string, by its path."""
    for where, problem in unsafe_strings(value):
        raise ValueError(f"{where}: {problem}")
    return value


def _refuse_constant(name: str) -> float:
    raise InvalidRequest(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise InvalidRequest(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidRequest(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(data: str | bytes, what: str = "the request body") -> Any:
    """Parse client JSON, or raise InvalidRequest saying what is wrong with it."""
    try:
        value = json.loads(
            data,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError:
        raise InvalidRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} is not UTF-8") from None
    except ValueError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def parse_filter(raw: str) -> Any:
    """A ``?filter=`` query parameter: JSON whose strings may all be stored. Whether it is
    a filter of the collection's fields is for ``recall.filters`` to say."""
    spec = parse_json(raw, "filter")
    for field, problem in unsafe_strings(spec, "filter"):
        raise InvalidRequest(f"{field}: {problem}")
    return spec


def register_url_checks(app: Flask) -> None:
    """Path parameters and query strings are client strings too."""

    @app.before_request
    def _check_url() -> None:
        values = [(f"path.{k}", v) for k, v in (request.view_args or {}).items()]
        values += [(f"query.{k}", v) for k, v in request.args.items(multi=True)]
        for field, value in values:
            problem = isinstance(value, str) and (string_problem(value) or _control(value))
            if problem:
                raise InvalidRequest(
                    f"{field} {problem}", [{"field": field, "message": str(problem)}]
                )


def _control(value: str) -> str | None:
    return "contains a control character" if _CONTROL.search(value) else None
