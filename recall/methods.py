"""Recall methods: which embedder a recall model spec names, one record per method.

A collection's ``recall_model`` is a spec: a checkpoint (hub id or folder) alone is embedded
the U-MARVEL way; ``<method>:<checkpoint>`` names another method, and ``#<dimension>`` a
Matryoshka size where the method has them::

    TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct
    qwen3-vl-embedding:Qwen/Qwen3-VL-Embedding-2B#1024

The whole spec is the model's identity everywhere (the allow-list, cache keys, a reindex
from one model to another), so vectors of two methods or sizes never meet in one index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import InvalidRequest
from mllm.loading import RunConfig

if TYPE_CHECKING:
    import numpy as np

    from recall.prompts import Candidate, Query

_SPEC = re.compile(
    r"^(?:(?P<method>[a-z][a-z0-9-]*):(?!//))?(?P<checkpoint>.+?)(?:#(?P<dim>\d+))?$"
)


class RecallEmbedder(Protocol):
    """What the recall service, ingestion and the workers need from an embedder."""

    @property
    def dim(self) -> int: ...

    def encode_queries(self, queries: Sequence[Query]) -> np.ndarray: ...

    def encode_candidates(self, candidates: Sequence[Candidate]) -> np.ndarray: ...

    def sample(self, video: Any) -> Any:
        """A video's frames as this embedder takes them (the decoding part of embedding it,
        which a caller may do in its own thread); refused by an embedder without videos."""
        ...


@dataclass(frozen=True)
class Options:
    """How a worker runs an embedder (none of it changes a vector)."""

    processor: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    run: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True)
class Spec:
    method: str
    checkpoint: str
    dimension: int | None = None


@dataclass(frozen=True)
class Method:
    name: str
    load: Callable[[Spec, Options], RecallEmbedder]
    matryoshka: bool = False  # takes a #dimension


def _umarvel(spec: Spec, options: Options) -> RecallEmbedder:
    from recall.embedder import Embedder, EmbedderConfig

    config = EmbedderConfig(**asdict(options.run))
    return Embedder.from_pretrained(
        spec.checkpoint,
        options.processor,
        device=options.device,
        dtype=options.dtype,
        config=config,
    )


def _qwen3_vl_embedding(spec: Spec, options: Options) -> RecallEmbedder:
    from recall.qwen3vl_embedder import Qwen3VLEmbedder, Qwen3VLEmbedderConfig

    return Qwen3VLEmbedder.from_pretrained(
        spec.checkpoint,
        options.processor,
        device=options.device,
        dtype=options.dtype,
        config=Qwen3VLEmbedderConfig(**asdict(options.run)),
        dimension=spec.dimension,
    )


UMARVEL = "u-marvel"
METHODS = {
    method.name: method
    for method in (
        Method(UMARVEL, _umarvel),
        Method("qwen3-vl-embedding", _qwen3_vl_embedding, matryoshka=True),
    )
}


def parse_spec(spec: str) -> Spec:
    """The method, checkpoint and dimension a spec names; a 400 says what is wrong."""
    match = _SPEC.match(spec.strip())
    if match is None:
        raise InvalidRequest(f"recall model {spec!r} is not a checkpoint or method:checkpoint")
    method = match.group("method") or UMARVEL
    if method not in METHODS:
        raise InvalidRequest(
            f"recall model {spec!r}: method {method!r} is not one of {', '.join(METHODS)}"
        )
    dim = match.group("dim")
    if dim is not None and not METHODS[method].matryoshka:
        raise InvalidRequest(f"recall model {spec!r}: {method} vectors have a fixed dimension")
    if dim is not None and int(dim) < 1:
        raise InvalidRequest(f"recall model {spec!r}: the dimension must be at least 1")
    return Spec(method, match.group("checkpoint"), int(dim) if dim else None)


def load_embedder(spec: str, options: Options) -> RecallEmbedder:
    parsed = parse_spec(spec)
    return METHODS[parsed.method].load(parsed, options)
