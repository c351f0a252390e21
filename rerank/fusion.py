"""Score fusion: re-sort recall candidates by ``cosine + w * p_yes``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FusedHit:
    document_id: str
    cosine: float
    p_yes: float | None
    score: float


def fuse(
    document_ids: Sequence[str],
    cosines: Sequence[float],
    p_yes: Sequence[float],
    weight: float,
) -> list[FusedHit]:
    """Hits ordered by fused score; ties go to the higher cosine, then the smaller id."""
    if not len(document_ids) == len(cosines) == len(p_yes):
        raise ValueError("document_ids, cosines and p_yes must have the same length")
    hits = [
        FusedHit(doc, float(cos), float(p), float(cos) + weight * float(p))
        for doc, cos, p in zip(document_ids, cosines, p_yes, strict=True)
    ]
    return sorted(hits, key=lambda h: (-h.score, -h.cosine, h.document_id))
