"""Pool embeddings on disk, in fixed-size chunks, so a run resumes where it stopped.

A chunk file appears only complete (written beside, then renamed), so a run killed at any
point leaves either a whole chunk or none. The folder is named by everything the vectors
depend on (model, pool content, embedding settings, chunk size): a changed pool or model
never reuses stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def model_fingerprint(model: str) -> str:
    """Identifies a checkpoint: its name, and for a local folder its files' sizes and times."""
    path = Path(model)
    parts = [model]
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.is_file():
                stat = file.stat()
                parts.append(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class EmbeddingStore:
    def __init__(self, folder: Path, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.folder = folder
        self.chunk_size = chunk_size
        folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, cache_dir: Path, key: dict[str, Any], chunk_size: int) -> EmbeddingStore:
        """The store for ``key`` (what the vectors depend on) under ``cache_dir``."""
        material = json.dumps({**key, "chunk_size": chunk_size}, sort_keys=True)
        folder = cache_dir / hashlib.sha256(material.encode()).hexdigest()[:24]
        store = cls(folder, chunk_size)
        (folder / "key.json").write_text(material)
        return store

    def chunks(self, size: int) -> int:
        return -(-size // self.chunk_size)

    def bounds(self, chunk: int, size: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, size)

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:06d}.npy"

    def has(self, chunk: int) -> bool:
        return self._path(chunk).exists()

    def write(self, chunk: int, vectors: np.ndarray) -> None:
        path = self._path(chunk)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def read(self, chunk: int) -> np.ndarray:
        return np.load(self._path(chunk), mmap_mode="r")


def exact_top_k(
    store: EmbeddingStore, size: int, queries: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``n`` by inner product, streamed chunk by chunk (memory stays flat).

    Returns (scores, pool indices), each ``len(queries) x n``, best first; equal scores
    keep the lower pool index first. Each chunk is first cut to its best ``2n`` columns
    (``argpartition``), so the order can only differ from a full sort when more than
    ``n`` candidates of one chunk share one score exactly at the cut.
    """
    queries = np.asarray(queries, dtype=np.float32)
    rows = len(queries)
    best_scores = np.empty((rows, 0), dtype=np.float32)
    best_indices = np.empty((rows, 0), dtype=np.int64)
    for chunk in range(store.chunks(size)):
        start, stop = store.bounds(chunk, size)
        scores = queries @ np.asarray(store.read(chunk)).T
        indices = np.broadcast_to(np.arange(start, stop, dtype=np.int64), scores.shape)
        keep = 2 * n
        if scores.shape[1] > keep:
            cut = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
            scores = np.take_along_axis(scores, cut, axis=1)
            indices = np.take_along_axis(indices, cut, axis=1)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_indices = np.concatenate([best_indices, indices], axis=1)
        order = np.lexsort((all_indices, -all_scores), axis=-1)[:, :n]
        best_scores = np.take_along_axis(all_scores, order, axis=1)
        best_indices = np.take_along_axis(all_indices, order, axis=1)
    return best_scores, best_indices
