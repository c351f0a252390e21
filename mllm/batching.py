"""Batching by budget: similar sizes together, bounded padded size, input order restored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def plan_batches(costs: Sequence[int], max_items: int, max_padded_cost: int) -> list[list[int]]:
    """Group item indices into batches, smallest items first.

    A batch holds at most ``max_items`` items, and its padded cost (items x its largest
    cost) stays within ``max_padded_cost``; an item larger than the budget goes alone.
    """
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so the newcomer is the largest item of the batch.
        padded = (len(current) + 1) * costs[index]
        if current and (len(current) >= max_items or padded > max_padded_cost):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def image_tokens(image_processor: Any, height: int, width: int) -> int:
    """How many placeholder tokens the Qwen-VL processor gives an image of this size."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    h, w = smart_resize(
        height,
        width,
        factor=factor,
        min_pixels=size["shortest_edge"],
        max_pixels=size["longest_edge"],
    )
    return (h // factor) * (w // factor)
