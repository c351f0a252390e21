"""Recall: the U-MARVEL embedder, the Milvus index and the recall service."""

from recall.embedder import Embedder, EmbedderConfig
from recall.prompts import Candidate, Query

__all__ = ["Candidate", "Embedder", "EmbedderConfig", "Query"]
