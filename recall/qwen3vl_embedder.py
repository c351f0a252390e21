"""The Qwen3-VL-Embedding embedder (QWEN3VL-EMBEDDING-SPEC sections 1-2).

Usage::

    from recall.qwen3vl_embedder import Qwen3VLEmbedder

    embedder = Qwen3VLEmbedder.from_pretrained("Qwen/Qwen3-VL-Embedding-2B", dimension=1024)
    q = embedder.encode_queries([Query(text="a red car", instruction="Find an image.")])
    c = embedder.encode_candidates([Candidate(image="car.jpg"), Candidate(text="A bus.")])
    scores = q @ c.T  # cosine: the vectors are L2-normalised at ``dimension``

It takes the same ``Query`` and ``Candidate`` as the U-MARVEL ``Embedder`` and answers the
same calls, but computes something else (spec section 4): the instruction is the system
message (documents get the default one), text is used raw, the forward is the stock causal
one with DeepStack, the vector is the last real token's hidden state, and a Matryoshka
``dimension`` keeps its first components, normalised again.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InvalidRequest
from mllm import qwen3vl_inputs as inputs
from mllm.batching import plan_batches
from mllm.loading import Loaded, LoadedModel, RunConfig, load_backbone
from mllm.prompt_tokens import Client, PromptTokenizer
from recall.prompts import Candidate, Query

if TYPE_CHECKING:
    import torch

DEFAULT_INSTRUCTION = "Represent the user's input."
MAX_LENGTH = 8192


def system_instruction(instruction: str | None) -> str:
    """The system message: the instruction stripped, ending in punctuation (a period is added
    otherwise); the default one when it is missing or blank."""
    text = (instruction or "").strip()
    if not text:
        return DEFAULT_INSTRUCTION
    if not unicodedata.category(text[-1]).startswith("P"):
        text += "."
    return text


def _refuse_videos(items: Sequence[Query | Candidate]) -> None:
    """Videos are not embedded this way yet; an item with one is refused, not embedded
    without it."""
    if any(item.video is not None for item in items):
        raise InvalidRequest("Qwen3-VL-Embedding takes no videos here yet")


@dataclass(frozen=True)
class Qwen3VLEmbedderConfig(RunConfig):
    max_length: int = MAX_LENGTH  # tokens, images expanded; longer items are cut (spec 2.2)


@dataclass(frozen=True)
class _Prepared:
    ids: tuple[int, ...]
    image: Any  # a PIL image or None
    cost: int


class Qwen3VLEmbedder(LoadedModel[Qwen3VLEmbedderConfig]):
    """Embeds queries and candidates into Qwen3-VL-Embedding's L2-normalised space."""

    def __init__(
        self,
        loaded: Loaded,
        config: Qwen3VLEmbedderConfig | None = None,
        dimension: int | None = None,
    ) -> None:
        super().__init__(loaded, config or Qwen3VLEmbedderConfig())
        full = int(self.model.config.text_config.hidden_size)
        if dimension is not None and not 1 <= dimension <= full:
            raise ValueError(f"dimension must be between 1 and {full}, not {dimension}")
        self.full_dim = full
        self.dim = dimension or full
        self.tokens = PromptTokenizer(self.processor)

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        processor_path: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        config: Qwen3VLEmbedderConfig | None = None,
        dimension: int | None = None,
    ) -> Qwen3VLEmbedder:
        loaded = load_backbone(model_path, processor_path, device=device, dtype=dtype)
        return cls(loaded, config, dimension)

    def encode_queries(self, queries: Sequence[Query]) -> np.ndarray:
        _refuse_videos(queries)
        with self._calls:
            return self._encode([self._prepare(q.instruction, q.text, q.image) for q in queries])

    def encode_candidates(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Documents carry no instruction: they get the default one (spec 2.1)."""
        _refuse_videos(candidates)
        with self._calls:
            return self._encode([self._prepare(None, c.text, c.image) for c in candidates])

    def sample(self, video: Any) -> Any:
        _refuse_videos([Candidate(video=video)])

    def _prepare(self, instruction: str | None, text: str | None, image: Any) -> _Prepared:
        pil = None
        if image is not None:
            pil = inputs.prepare_image(self.image(image, keep_alpha=True))
        system = [{"type": "text", "text": Client(system_instruction(instruction))}]
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": inputs.content(text, int(pil is not None))},
        ]
        ids = self.tokens.render(messages).ids
        cost = len(ids) + (inputs.image_tokens(pil) if pil is not None else 0)
        return _Prepared(ids, pil, min(cost, self.config.max_length))

    def _encode(self, items: list[_Prepared]) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        costs = [item.cost for item in items]
        for chunk in plan_batches(costs, self.config.batch_size, self.config.batch_tokens):
            out[chunk] = self._forward([items[i] for i in chunk])
        return out

    def _forward(self, items: list[_Prepared]) -> np.ndarray:
        import torch

        batch = self.tokens.batch(
            [item.ids for item in items],
            [item.image for item in items if item.image is not None],
            padding_side="right",
            max_length=self.config.max_length,
            resize=False,
        ).to(self.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            hidden = self.model.model(**batch, use_cache=False).last_hidden_state
            pooled = self._pool(hidden, batch["attention_mask"])
        return pooled.float().cpu().numpy()

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last real token's state, normalised; at a Matryoshka dimension, its first
        ``dim`` components normalised again."""
        import torch

        last = mask.sum(dim=1) - 1  # right padding: the last position whose mask is 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        if self.dim < self.full_dim:
            pooled = torch.nn.functional.normalize(pooled[:, : self.dim], p=2, dim=-1)
        return pooled
