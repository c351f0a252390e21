"""The Qwen3-VL-Reranker (QWEN3VL-EMBEDDING-SPEC sections 1 and 3).

Usage::

    from rerank.qwen3vl_reranker import Qwen3VLReranker

    reranker = Qwen3VLReranker.from_pretrained("Qwen/Qwen3-VL-Reranker-2B")
    scores = reranker.score(RerankQuery(text="a red car", instruction="Find an image."),
                            [RerankCandidate(image="car.jpg"), RerankCandidate(text="A bus.")])

It answers the same calls as the P(Yes) ``Reranker`` with the model's own trained score,
sigmoid(logit("yes") - logit("no")) at the last position: no softmax over the two, no
repetition penalty. Its scale is not U-MARVEL's P(Yes): fusion weights are its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest
from mllm import qwen3vl_inputs as inputs
from mllm.batching import plan_batches
from mllm.loading import Loaded, LoadedModel, RunConfig, load_backbone
from mllm.prompt_tokens import Client, PromptTokenizer
from rerank.reranker import RerankCandidate, RerankQuery

if TYPE_CHECKING:
    import torch

JUDGE = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MAX_LENGTH = 10240
TAIL = 5  # the last ids of a prompt, kept whatever the truncation (spec 3.2)


@dataclass(frozen=True)
class Qwen3VLRerankerConfig(RunConfig):
    batch_size: int = 8
    max_length: int = MAX_LENGTH  # the truncation budget of spec 3.2


@dataclass(frozen=True)
class _Pair:
    ids: tuple[int, ...]
    images: list[Any]
    cost: int


class Qwen3VLReranker(LoadedModel[Qwen3VLRerankerConfig]):
    """Scores (query, candidate) pairs with Qwen3-VL-Reranker's relevance score."""

    def __init__(self, loaded: Loaded, config: Qwen3VLRerankerConfig | None = None) -> None:
        super().__init__(loaded, config or Qwen3VLRerankerConfig())
        self.tokens = PromptTokenizer(self.processor)
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        self.yes_id, self.no_id = vocab["yes"], vocab["no"]  # lower-case whole tokens
        # Tokens truncation keeps: the added special tokens (chat markers, vision tokens,
        # padding); not the non-special ones such as <think> or the tool tags.
        self.special_ids = frozenset(
            index for index, token in tokenizer.added_tokens_decoder.items() if token.special
        )

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        processor_path: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        config: Qwen3VLRerankerConfig | None = None,
    ) -> Qwen3VLReranker:
        return cls(load_backbone(model_path, processor_path, device=device, dtype=dtype), config)

    def score(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> list[float]:
        """The score of each candidate, in the input order."""
        return self.score_pairs([(query, c) for c in candidates])

    def score_pairs(self, pairs: Sequence[tuple[RerankQuery, RerankCandidate]]) -> list[float]:
        with self._calls:
            images: dict[int, Any] = {}
            prepared = []
            for query, candidate in pairs:
                if id(query) not in images:
                    images[id(query)] = self._image(query.image)
                prepared.append(self._prepare(query, images[id(query)], candidate))
            scores = [0.0] * len(prepared)
            costs = [pair.cost for pair in prepared]
            for chunk in plan_batches(costs, self.config.batch_size, self.config.batch_tokens):
                values = self._forward([prepared[i] for i in chunk])
                for index, value in zip(chunk, values, strict=True):
                    scores[index] = value
            return scores

    def _image(self, value: Any) -> Any:
        if value is None:
            return None
        return inputs.prepare_image(self.image(value, keep_alpha=True))

    takes_videos = False  # candidates' videos come as a frame (workers.queries)

    def sample(self, video: Any) -> Any:
        raise InvalidRequest("Qwen3-VL-Reranker takes no videos here yet")

    def _prepare(self, query: RerankQuery, query_image: Any, candidate: RerankCandidate) -> _Pair:
        if candidate.video is not None:
            self.sample(candidate.video)  # refused, never scored without its video
        candidate_image = self._image(candidate.image)
        instruction = query.instruction or DEFAULT_INSTRUCTION  # verbatim, unlike the embedder
        user = [
            {"type": "text", "text": ("<Instruct>: ", Client(instruction))},
            {"type": "text", "text": "<Query>:"},
            *inputs.content(query.text, int(query_image is not None)),
            {"type": "text", "text": "\n<Document>:"},
            *inputs.content(candidate.text, int(candidate_image is not None)),
        ]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": [{"type": "text", "text": JUDGE}]},
            {"role": "user", "content": user},
        ]
        images = [image for image in (query_image, candidate_image) if image is not None]
        sizes = [inputs.image_tokens(image) for image in images]
        ids = self._truncate(self.tokens.render(messages).ids, sizes)
        return _Pair(ids, images, len(ids) - len(sizes) + sum(sizes))

    def _truncate(self, ids: tuple[int, ...], image_sizes: list[int]) -> tuple[int, ...]:
        """The reference's budget (spec 3.2), on ids whose image placeholders are not yet
        expanded: past ``max_length`` tokens (images expanded), every special token of the
        head stays and its first non-special ones fill what is left; the tail stays whole."""
        head, tail = ids[:-TAIL], ids[-TAIL:]
        expanded = len(head) - len(image_sizes) + sum(image_sizes)
        if expanded <= self.config.max_length:
            return ids
        specials = sum(1 for token in head if token in self.special_ids)
        room = self.config.max_length - (specials - len(image_sizes) + sum(image_sizes))
        kept: list[int] = []
        for token in head:
            if token in self.special_ids:
                kept.append(token)
            elif room > 0:
                kept.append(token)
                room -= 1
        return (*kept, *tail)

    def _forward(self, pairs: list[_Pair]) -> list[float]:
        import torch

        batch = self.tokens.batch(
            [pair.ids for pair in pairs],
            [image for pair in pairs for image in pair.images],
            padding_side="left",
            resize=False,
        ).to(self.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            last = self.model.model(**batch).last_hidden_state[:, -1]
            return self._score(last).float().cpu().tolist()

    def _score(self, last: torch.Tensor) -> torch.Tensor:
        """sigmoid(h . (W[yes] - W[no])), the difference row in the model's dtype."""
        import torch

        weight = self.model.lm_head.weight
        difference = (weight[self.yes_id] - weight[self.no_id]).to(last.dtype)
        return torch.sigmoid(last @ difference)
