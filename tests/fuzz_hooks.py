"""Schemathesis hooks for tests/test_fuzz.py, loaded by the CLI (``SCHEMATHESIS_HOOKS``).

Schemathesis has no serializer for JSONL. The OpenAPI document describes the
``application/x-ndjson`` body of an ingestion as the array of its lines' values, so a
generated array goes out one JSON value a line, and anything else as a single line. An
export's JSONL answer is read back the same way: the array of its lines' values, which
its schema describes.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def jsonl(context: Any, value: Any) -> bytes:
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@schemathesis.deserializer("application/x-ndjson")
def jsonl_answer(context: Any, response: Any) -> list[Any]:
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]
