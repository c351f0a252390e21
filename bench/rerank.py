"""Reranker throughput on the tiny models, measured side by side in one run.

    python -m bench.rerank [--pairs 50] [--models .umarvel/tiny-models] [--arch qwen3_vl]

1. Batching: one text query against ``--pairs`` candidates per modality, scored in batches
   of 1, 8, 25 and 50 (target: 50 mixed pairs batched at least 3x the pairs/s of one by one).
2. Shared prefix: text, image and image+text queries against ``--pairs`` mixed candidates,
   each query's prompt prefix run once and its key/value cache reused, against every pair
   run in full (target: at least 1.5x the pairs/s for image queries).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from bench.common import MODALITIES, rate, sample_items
from devkit.samples import shape_image
from devkit.tiny_models import build_all
from rerank import RerankCandidate, Reranker, RerankerConfig, RerankQuery

QUERY = RerankQuery(text="a red circle", instruction="Find an image that matches the caption.")
QUERIES = {
    "text": QUERY,
    "image": RerankQuery(
        image=shape_image("red", "circle", size=160), instruction="Find a caption."
    ),
    "image+text": RerankQuery(
        text="the same shape in blue",
        image=shape_image("red", "circle", size=160),
        instruction="Retrieve an image that matches the modification.",
    ),
}


def _one_by_one(reranker: Reranker, candidates: list[RerankCandidate]) -> None:
    for candidate in candidates:
        reranker.score(QUERY, [candidate])


def _batching(path: Path, n: int) -> None:
    print(f"{'modality':<11} {'batch':>5} {'pairs/s':>9}")
    for modality in MODALITIES:
        candidates = [RerankCandidate(text, image) for text, image in sample_items(n, modality)]
        rates = {}
        for batch in (1, 8, 25, 50):
            config = RerankerConfig(batch_size=batch, shared_prefix=False)
            reranker = Reranker.from_pretrained(str(path), device="cpu", config=config)
            if batch == 1:
                run = partial(_one_by_one, reranker, candidates)
            else:
                run = partial(reranker.score, QUERY, candidates)
            rates[batch] = rate(run, len(candidates))
            print(f"{modality:<11} {batch:>5} {rates[batch]:>9.1f}")
        if modality == "mixed":
            ratio = rates[50] / rates[1]
            verdict = "meets" if ratio >= 3 else "misses"
            print(f"\nbatched (50, mixed) / one by one: {ratio:.2f}x ({verdict} the 3x target)")


def _shared_prefix(path: Path, n: int) -> None:
    candidates = [RerankCandidate(text, image) for text, image in sample_items(n, "mixed")]
    rerankers = {
        shared: Reranker.from_pretrained(
            str(path), device="cpu", config=RerankerConfig(shared_prefix=shared)
        )
        for shared in (False, True)
    }
    print(f"\n{'query':<11} {'unshared':>9} {'shared':>9} {'ratio':>7}   ({n} mixed candidates)")
    for kind, query in QUERIES.items():
        rates = {
            shared: rate(partial(reranker.score, query, candidates), n)
            for shared, reranker in rerankers.items()
        }
        ratio = rates[True] / rates[False]
        note = ""
        if kind == "image":
            note = f" ({'meets' if ratio >= 1.5 else 'misses'} the 1.5x target)"
        print(f"{kind:<11} {rates[False]:>9.1f} {rates[True]:>9.1f} {ratio:>6.2f}x{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--models", type=Path, default=Path(".umarvel/tiny-models"))
    parser.add_argument("--arch", default="qwen3_vl", choices=["qwen2_vl", "qwen3_vl"])
    args = parser.parse_args()
    path = build_all(args.models)[args.arch]
    print(f"model: tiny {args.arch} (random weights), CPU, float32, {args.pairs} pairs")
    _batching(path, args.pairs)
    _shared_prefix(path, args.pairs)


if __name__ == "__main__":
    main()
