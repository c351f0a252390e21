"""Retrieval metrics on ranked lists of document ids.

Every function takes a ranking (ids, best first) and the relevant ids of one query. The
ranking is whatever the system returned; ties are broken before it gets here (see
``rank``), so a metric never has to guess an order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def rank(ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> list[str]:
    """Ids by descending score; equal scores keep their input (pool) order.

    Keeping the pool order on ties makes the result independent of the sort algorithm and
    reproducible across runs; it is the order a stable exact search returns.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [ids[i] for i in order]


def hit_at_k(ranking: Sequence[str], relevant: Mapping[str, float] | set[str], k: int) -> float:
    """M-BEIR's Recall@k: 1.0 when any relevant id is in the top k, else 0.0."""
    return 1.0 if any(doc in relevant for doc in ranking[:k]) else 0.0


def recall_at_k(ranking: Sequence[str], relevant: Mapping[str, float] | set[str], k: int) -> float:
    """The classic recall: the share of the relevant ids found in the top k."""
    if not relevant:
        raise ValueError("recall needs at least one relevant id")
    found = sum(1 for doc in ranking[:k] if doc in relevant)
    return found / len(relevant)


def reciprocal_rank(ranking: Sequence[str], relevant: Mapping[str, float] | set[str]) -> float:
    """1 / the rank of the first relevant id, 0.0 when none was returned."""
    for position, doc in enumerate(ranking, start=1):
        if doc in relevant:
            return 1.0 / position
    return 0.0


def ndcg_at_k(ranking: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Normalised DCG with gains ``grade`` and discount ``log2(rank + 1)``.

    The ideal ranking orders every relevant id by grade, whether or not the system
    returned it, so a system that misses relevant documents scores below 1.
    """
    gains = [g for g in relevant.values() if g > 0]
    if not gains:
        raise ValueError("nDCG needs at least one relevant id with a positive grade")
    dcg = sum(
        relevant.get(doc, 0.0) / math.log2(position + 1)
        for position, doc in enumerate(ranking[:k], start=1)
    )
    ideal = sum(
        gain / math.log2(position + 1)
        for position, gain in enumerate(sorted(gains, reverse=True)[:k], start=1)
    )
    return dcg / ideal


def mean(values: Sequence[float]) -> float | None:
    """The plain mean, or None for no values (never a silent 0)."""
    return sum(values) / len(values) if values else None
