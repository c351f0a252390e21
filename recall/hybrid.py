"""Merging the recall's rankings: dense (cosine), keyword (the store's relevance), or both.

Every hit carries the score the recall ranked it by (``Hit.recall``), on a scale the rerank
can add ``w * P(Yes)`` to as it adds it to a cosine:

- dense: the cosine itself;
- keyword: the keyword score divided by the best one (the best match is 1);
- hybrid, ``rrf``: the sum over both rankings of ``1 / (k + rank)``, times ``(k + 1) / 2``
  so that first in both is 1. Both rankings cover the same candidates: a keyword match
  the dense search did not return is given its cosine (from its stored vector), so it has
  a dense rank too, and a document that both searches like beats one that only one does;
- hybrid, ``weighted``: ``(1 - w) * cosine + w * keyword / best keyword`` (0 without a
  keyword match).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from core.contract import Fusion, Hit


def dense_hits(ranked: Sequence[tuple[str, float]]) -> list[Hit]:
    return [Hit(document_id=doc, cosine=cos, recall=cos) for doc, cos in ranked]


def keyword_hits(ranked: Sequence[tuple[str, float]]) -> list[Hit]:
    best = max((score for _, score in ranked), default=0.0)
    return [
        Hit(document_id=doc, cosine=None, keyword=score, recall=_share(score, best))
        for doc, score in ranked
    ]


def hybrid_hits(
    dense: Sequence[tuple[str, float]],
    keyword: Sequence[tuple[str, float]],
    cosines: Mapping[str, float],
    fusion: Fusion,
    limit: int,
) -> list[Hit]:
    """The ``limit`` best candidates of both rankings. ``cosines`` holds the cosine of
    each keyword match that ``dense`` lacks (a match without one, whose vector is gone, is
    left out: it is not searchable)."""
    cosine = dict(dense)
    cosine.update({doc: cos for doc, cos in cosines.items() if doc not in cosine})
    scores = dict(keyword)
    candidates = [
        doc for doc in {**dict.fromkeys(cosine), **dict.fromkeys(scores)} if doc in cosine
    ]
    best = max(scores.values(), default=0.0)
    if fusion.method == "rrf":
        by_cosine = sorted(candidates, key=lambda doc: (-cosine[doc], doc))
        dense_rank = {doc: rank for rank, doc in enumerate(by_cosine, start=1)}
        keyword_rank = {doc: rank for rank, (doc, _) in enumerate(keyword, start=1)}
        scale = (fusion.k + 1) / 2

        def fused(doc: str) -> float:
            total = 1 / (fusion.k + dense_rank[doc])
            if doc in keyword_rank:
                total += 1 / (fusion.k + keyword_rank[doc])
            return total * scale
    else:
        w = fusion.keyword_weight

        def fused(doc: str) -> float:
            return (1 - w) * cosine[doc] + w * _share(scores.get(doc, 0.0), best)

    hits = [
        Hit(document_id=doc, cosine=cosine[doc], keyword=scores.get(doc), recall=fused(doc))
        for doc in candidates
    ]
    hits.sort(key=lambda hit: (-hit.first_stage, -(hit.cosine or 0.0), hit.document_id))
    return hits[:limit]


def _share(score: float, best: float) -> float:
    return score / best if best > 0 else 0.0


def example_vector(
    query: np.ndarray | None, like: Sequence[np.ndarray], unlike: Sequence[np.ndarray]
) -> np.ndarray:
    """The vector a search by example looks near: the mean direction of the positive
    examples (and of the query's own embedding, when it has text or an image), moved away
    from the mean direction of the negative ones by half of it, as unit vectors."""
    positives = [_unit(v) for v in like] + ([_unit(query)] if query is not None else [])
    target = np.mean(positives, axis=0)
    if unlike:
        target = target - 0.5 * np.mean([_unit(v) for v in unlike], axis=0)
    return _unit(target).astype(np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
