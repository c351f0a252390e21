"""Rerank methods: which reranker ``UMARVEL_RERANK_MODEL`` names, one record per method.

A checkpoint alone is an instruct model asked for P(Yes) zero-shot (``rerank.reranker``);
``qwen3-vl-reranker:<checkpoint>`` is Qwen3-VL-Reranker's trained score
(``rerank.qwen3vl_reranker``). The two scales differ: a collection's fusion weight is tuned
for the method it is used with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from core.errors import InvalidRequest
from mllm.loading import RunConfig
from rerank.reranker import RerankCandidate, RerankQuery


class PairScorer(Protocol):
    # Whether a candidate may carry a video (sampled by ``sample``); a scorer without video
    # input is shown a frame of it, as an image.
    takes_videos: bool

    def score_pairs(self, pairs: Sequence[tuple[RerankQuery, RerankCandidate]]) -> list[float]: ...

    def sample(self, video: Any) -> Any:
        """A candidate video's frames as this scorer takes them (its decoding part)."""
        ...


@dataclass(frozen=True)
class Options:
    """How a worker runs a reranker (none of it changes a score)."""

    processor: str | None = None
    base_model: str | None = None  # of a LoRA adapter (P(Yes) only)
    device: str = "auto"
    dtype: str = "auto"
    run: RunConfig = field(default_factory=lambda: RunConfig(batch_size=8))


def _p_yes(checkpoint: str, options: Options) -> PairScorer:
    from rerank.reranker import Reranker, RerankerConfig

    config = RerankerConfig(**asdict(options.run))
    return Reranker.from_pretrained(
        checkpoint,
        options.processor,
        device=options.device,
        dtype=options.dtype,
        config=config,
        base_model=options.base_model,
    )


def _qwen3_vl_reranker(checkpoint: str, options: Options) -> PairScorer:
    from rerank.qwen3vl_reranker import Qwen3VLReranker, Qwen3VLRerankerConfig

    config = Qwen3VLRerankerConfig(**asdict(options.run))
    return Qwen3VLReranker.from_pretrained(
        checkpoint, options.processor, device=options.device, dtype=options.dtype, config=config
    )


P_YES = "p-yes"
METHODS: dict[str, Callable[[str, Options], PairScorer]] = {
    P_YES: _p_yes,
    "qwen3-vl-reranker": _qwen3_vl_reranker,
}


def parse_spec(spec: str) -> tuple[str, str]:
    """(method, checkpoint) of a rerank model spec."""
    method, sep, rest = spec.partition(":")
    if not sep or rest.startswith("//") or "/" in method:  # a plain checkpoint or a URL
        return P_YES, spec
    if method not in METHODS:
        raise InvalidRequest(
            f"rerank model {spec!r}: method {method!r} is not one of {', '.join(METHODS)}"
        )
    return method, rest


def load_reranker(spec: str, options: Options) -> PairScorer:
    method, checkpoint = parse_spec(spec)
    return METHODS[method](checkpoint, options)
