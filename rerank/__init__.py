"""Rerank: the MLLM pointwise reranker and score fusion."""

from rerank.fusion import FusedHit, fuse
from rerank.reranker import RerankCandidate, Reranker, RerankerConfig, RerankQuery

__all__ = ["FusedHit", "RerankCandidate", "RerankQuery", "Reranker", "RerankerConfig", "fuse"]
