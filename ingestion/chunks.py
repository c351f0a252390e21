"""The one chunker: ingestion, reindex and delete work is cut into pieces of this size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in consecutive pieces of at most ``size``, in order."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]
