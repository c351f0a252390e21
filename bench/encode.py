"""Embedding throughput on the tiny models: batched against one by one, in one run.

    python -m bench.encode [--items 64] [--models .umarvel/tiny-models]

Prints items/s per modality and batch size, and the ratio of batched (64 mixed items)
to one-by-one encoding. Target: at least 3x.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cli.samples import COLOURS, SHAPES, shape_image
from core.tiny_models import build_all
from recall import Candidate, Embedder, EmbedderConfig


def _items(n: int, modality: str) -> list[Candidate]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    items = []
    for i in range(n):
        colour, shape = pairs[i % len(pairs)]
        text = f"a {colour} {shape} number {i} on a plain white background"
        image = shape_image(colour, shape, size=96 + 8 * (i % 5))
        kind = modality if modality != "mixed" else ("text", "image", "image,text")[i % 3]
        items.append(
            Candidate(
                text=text if kind != "image" else None, image=image if kind != "text" else None
            )
        )
    return items


def _one_by_one(embedder: Embedder, items: list[Candidate]) -> None:
    for item in items:
        embedder.encode_candidates([item])


def _rate(run: Callable[[], object], n: int, repeats: int = 2) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--models", type=Path, default=Path(".umarvel/tiny-models"))
    parser.add_argument("--arch", default="qwen3_vl", choices=["qwen2_vl", "qwen3_vl"])
    args = parser.parse_args()
    path = build_all(args.models)[args.arch]
    print(f"model: tiny {args.arch} (random weights), CPU, float32, {args.items} items")
    print(f"{'modality':<11} {'batch':>5} {'items/s':>9}")
    for modality in ("text", "image", "image,text", "mixed"):
        items = _items(args.items, modality)
        rates = {}
        for batch in (1, 8, 32, 64):
            embedder = Embedder.from_pretrained(
                str(path), device="cpu", config=EmbedderConfig(batch_size=batch)
            )
            if batch == 1:
                run = partial(_one_by_one, embedder, items)
            else:
                run = partial(embedder.encode_candidates, items)
            rates[batch] = _rate(run, len(items))
            print(f"{modality:<11} {batch:>5} {rates[batch]:>9.1f}")
        if modality == "mixed":
            ratio = rates[64] / rates[1]
            verdict = "meets" if ratio >= 3 else "misses"
            print(f"\nbatched (64, mixed) / one by one: {ratio:.2f}x ({verdict} the 3x target)")


if __name__ == "__main__":
    main()
