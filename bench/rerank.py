"""Reranker throughput on the tiny models: pairs/s batched against one by one, in one run.

    python -m bench.rerank [--pairs 50] [--models .umarvel/tiny-models] [--arch qwen3_vl]

One text query against ``--pairs`` candidates per modality. Target: batched scoring of
50 mixed pairs at least 3x the pairs/s of scoring them one by one.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from bench.common import MODALITIES, rate, sample_items
from core.tiny_models import build_all
from rerank import RerankCandidate, Reranker, RerankerConfig, RerankQuery

QUERY = RerankQuery(text="a red circle", instruction="Find an image that matches the caption.")


def _one_by_one(reranker: Reranker, candidates: list[RerankCandidate]) -> None:
    for candidate in candidates:
        reranker.score(QUERY, [candidate])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--models", type=Path, default=Path(".umarvel/tiny-models"))
    parser.add_argument("--arch", default="qwen3_vl", choices=["qwen2_vl", "qwen3_vl"])
    args = parser.parse_args()
    path = build_all(args.models)[args.arch]
    print(f"model: tiny {args.arch} (random weights), CPU, float32, {args.pairs} pairs")
    print(f"{'modality':<11} {'batch':>5} {'pairs/s':>9}")
    for modality in MODALITIES:
        pairs = sample_items(args.pairs, modality)
        candidates = [RerankCandidate(text, image) for text, image in pairs]
        rates = {}
        for batch in (1, 8, 25, 50):
            reranker = Reranker.from_pretrained(
                str(path), device="cpu", config=RerankerConfig(batch_size=batch)
            )
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


if __name__ == "__main__":
    main()
