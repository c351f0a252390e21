"""The cosine matrix between one query and a few candidates, on any checkpoint.

A candidate is an image when it names an existing image file, text otherwise; ``IMG::TEXT``
(an existing image, two colons, then text) makes an image+text candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recall.prompts import Candidate, Query

if TYPE_CHECKING:
    from recall.embedder import Embedder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


def _is_image(value: str) -> bool:
    path = Path(value)
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def parse_candidate(value: str) -> Candidate:
    image, sep, text = value.partition("::")
    if sep and _is_image(image):
        return Candidate(text=text or None, image=image)
    if _is_image(value):
        return Candidate(image=value)
    return Candidate(text=value)


def cosine_matrix(
    embedder: Embedder, queries: Sequence[Query], candidates: Sequence[str]
) -> np.ndarray:
    """``len(queries) x len(candidates)`` cosines (the embeddings are L2-normalised)."""
    q = embedder.encode_queries(list(queries))
    c = embedder.encode_candidates([parse_candidate(v) for v in candidates])
    return np.asarray(q @ c.T, dtype=np.float64)


def label(value: str) -> str:
    """A short column label: image files by name."""
    image, sep, text = value.partition("::")
    if sep and _is_image(image):
        return f"{Path(image).name} + {text}"
    return Path(value).name if _is_image(value) else value


def render(matrix: np.ndarray, query_labels: Sequence[str], candidates: Sequence[str]) -> str:
    from evaluation.report import format_table

    def short(text: str, width: int = 28) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    header = ["query \\ candidate", *(f"[{i}] {short(label(c))}" for i, c in enumerate(candidates))]
    rows = [
        [short(name, 40), *(f"{v:.4f}" for v in row)]
        for name, row in zip(query_labels, matrix, strict=True)
    ]
    return format_table(header, rows)
