"""Batching by budget."""

from __future__ import annotations

from transformers import Qwen2VLImageProcessor

from mllm.batching import image_tokens, plan_batches


def test_batches_hold_similar_sizes_within_the_budget() -> None:
    costs = [50, 10, 400, 12, 11, 60, 1000]
    batches = plan_batches(costs, max_items=3, max_padded_cost=200)
    assert sorted(i for batch in batches for i in batch) == list(range(len(costs)))
    assert batches == [[1, 4, 3], [0, 5], [2], [6]]
    for batch in batches:
        assert len(batch) <= 3
        padded = len(batch) * max(costs[i] for i in batch)
        assert padded <= 200 or len(batch) == 1  # an oversized item goes alone


def test_no_items_no_batches() -> None:
    assert plan_batches([], max_items=4, max_padded_cost=100) == []


def test_image_tokens_match_the_processor() -> None:
    import numpy as np

    processor = Qwen2VLImageProcessor(
        patch_size=14, merge_size=2, min_pixels=3136, max_pixels=10**6
    )
    for height, width in [(56, 84), (300, 200), (1000, 1000)]:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        grid = processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        assert image_tokens(processor, height, width) == int(grid.prod()) // 4
