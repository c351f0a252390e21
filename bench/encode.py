"""Embedding throughput on the tiny models: batched against one by one, in one run.

    python -m bench.encode [--items 64] [--models .umarvel/tiny-models] [--arch qwen3_vl]

Prints items/s per modality and batch size, and the ratio of batched (64 mixed items)
to one-by-one encoding. Target: at least 3x.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from bench.common import MODALITIES, rate, sample_items
from devkit.tiny_models import build_all
from recall import Candidate, Embedder, EmbedderConfig


def _one_by_one(embedder: Embedder, items: list[Candidate]) -> None:
    for item in items:
        embedder.encode_candidates([item])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--models", type=Path, default=Path(".umarvel/tiny-models"))
    parser.add_argument("--arch", default="qwen3_vl", choices=["qwen2_vl", "qwen3_vl"])
    args = parser.parse_args()
    path = build_all(args.models)[args.arch]
    print(f"model: tiny {args.arch} (random weights), CPU, float32, {args.items} items")
    print(f"{'modality':<11} {'batch':>5} {'items/s':>9}")
    for modality in MODALITIES:
        items = [Candidate(text, image) for text, image in sample_items(args.items, modality)]
        rates = {}
        for batch in (1, 8, 32, 64):
            embedder = Embedder.from_pretrained(
                str(path), device="cpu", config=EmbedderConfig(batch_size=batch)
            )
            if batch == 1:
                run = partial(_one_by_one, embedder, items)
            else:
                run = partial(embedder.encode_candidates, items)
            rates[batch] = rate(run, len(items))
            print(f"{modality:<11} {batch:>5} {rates[batch]:>9.1f}")
        if modality == "mixed":
            ratio = rates[64] / rates[1]
            verdict = "meets" if ratio >= 3 else "misses"
            print(f"\nbatched (64, mixed) / one by one: {ratio:.2f}x ({verdict} the 3x target)")


if __name__ == "__main__":
    main()
