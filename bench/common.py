"""Helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from devkit.samples import COLOURS, SHAPES, shape_image

MODALITIES = ("text", "image", "image,text", "mixed")


def sample_items(n: int, modality: str) -> list[tuple[str | None, bytes | None]]:
    """``n`` (text, image) pairs of one modality, or mixed; sizes vary a little."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    items: list[tuple[str | None, bytes | None]] = []
    for i in range(n):
        colour, shape = pairs[i % len(pairs)]
        kind = modality if modality != "mixed" else ("text", "image", "image,text")[i % 3]
        text = f"a {colour} {shape} number {i} on a plain white background"
        image = shape_image(colour, shape, size=96 + 8 * (i % 5)) if kind != "text" else None
        items.append((text if kind != "image" else None, image))
    return items


def rate(run: Callable[[], Any], n: int, repeats: int = 2) -> float:
    """Items/s of ``run``, which handles ``n`` items: the best of ``repeats`` after a warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return n / best
