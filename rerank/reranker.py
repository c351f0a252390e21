"""The pointwise MLLM reranker: P(Yes) from one forward pass (SPEC section 7).

The k pairs of one query share their prompt up to ``Candidate:``. With ``shared_prefix``
(the default) that prefix, query image included, runs once; its key/value cache is then
continued by each candidate's suffix, with the positions (Qwen-VL's M-RoPE image grid
included) the unshared forward would give them. The scores are the unshared forward's
(tests/test_rerank.py compares both, and generate()'s first step, on both architectures).

Usage::

    from rerank import Reranker, RerankQuery, RerankCandidate

    reranker = Reranker.from_pretrained("Qwen/Qwen3-VL-4B-Instruct")
    p_yes = reranker.score(RerankQuery(text="a red car", instruction="Find an image."),
                           [RerankCandidate(image="car.jpg"), RerankCandidate(text="A bus.")])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from media.images import prepare_image
from media.video import SampledVideo, sample_video
from mllm.batching import image_tokens, plan_batches
from mllm.loading import ImageInput, Loaded, LoadedModel, RunConfig, VideoInput, load_backbone
from mllm.prompt_tokens import PromptTokenizer
from mllm.video_inputs import VideoFrames, VideoInputs, process_video
from rerank import prompts

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RerankQuery:
    text: str | None = None
    image: ImageInput | None = None
    instruction: str | None = None


@dataclass(frozen=True)
class RerankCandidate:
    text: str | None = None
    image: ImageInput | None = None
    video: VideoInput | None = None  # sampled by U-MARVEL's rule (``sample``); not with an image


@dataclass(frozen=True)
class RerankerConfig(RunConfig):
    batch_size: int = 8
    # Apply the generation config's repetition penalty to the Yes/No logits, as
    # generate() did for the published numbers.
    repetition_penalty: bool = True
    # Run a query's shared prompt prefix once and reuse its key/value cache for its pairs.
    shared_prefix: bool = True


@dataclass(frozen=True)
class _Pair:
    text: str  # the rendered chat template
    ids: tuple[int, ...]  # its tokens, before the image placeholders are expanded
    images: list[Any]  # the query's image first, if it has one
    cost: int
    query_images: int  # how many of ``images`` are the query's
    videos: tuple[VideoInputs, ...] = ()  # the candidate's video, processed


class Reranker(LoadedModel[RerankerConfig]):
    """Scores (query, candidate) pairs with P(Yes) of a Qwen-VL instruct model."""

    takes_videos = True

    def __init__(self, loaded: Loaded, config: RerankerConfig | None = None) -> None:
        super().__init__(loaded, config or RerankerConfig())
        self.tokens = PromptTokenizer(self.processor)
        tokenizer = self.processor.tokenizer
        self.yes_id = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
        self.no_id = tokenizer("No", add_special_tokens=False)["input_ids"][0]
        penalty = getattr(self.model.generation_config, "repetition_penalty", None) or 1.0
        self.penalty = float(penalty) if self.config.repetition_penalty else 1.0

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        processor_path: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        config: RerankerConfig | None = None,
        base_model: str | None = None,
    ) -> Reranker:
        """A merged checkpoint, or a LoRA adapter on ``base_model`` (default: its config's)."""
        loaded = load_backbone(
            model_path, processor_path, device=device, dtype=dtype, base_model=base_model
        )
        return cls(loaded, config)

    def score(self, query: RerankQuery, candidates: Sequence[RerankCandidate]) -> list[float]:
        """P(Yes) for each candidate, in the input order."""
        return self.score_pairs([(query, c) for c in candidates])

    def score_pairs(self, pairs: Sequence[tuple[RerankQuery, RerankCandidate]]) -> list[float]:
        """P(Yes) for each pair; pairs of different queries may share a batch."""
        with self._calls:
            return self._score_pairs(pairs)

    def _score_pairs(self, pairs: Sequence[tuple[RerankQuery, RerankCandidate]]) -> list[float]:
        query_images: dict[int, Any] = {}
        by_query: dict[int, list[int]] = {}
        prepared = []
        for index, (query, candidate) in enumerate(pairs):
            if id(query) not in query_images:
                query_images[id(query)] = self._image(query.image)
            prepared.append(self._prepare(query, query_images[id(query)], candidate))
            by_query.setdefault(id(query), []).append(index)
        scores = [0.0] * len(prepared)
        unshared: list[int] = []
        for indices in by_query.values():
            # A candidate video's positions are not continued past a shared prefix here: its
            # pairs run whole.
            unshared += [i for i in indices if prepared[i].videos]
            indices = [i for i in indices if not prepared[i].videos]
            if not indices:
                continue
            group = [prepared[i] for i in indices]
            split = shared_prefix_length(group, self.tokens.image_id)
            if not (self.config.shared_prefix and len(group) > 1 and split):
                unshared += indices
                continue
            for index, value in zip(indices, self._shared(group, split), strict=True):
                scores[index] = value
        costs = [prepared[i].cost for i in unshared]
        for chunk in plan_batches(costs, self.config.batch_size, self.config.batch_tokens):
            values = self._forward([prepared[unshared[i]] for i in chunk])
            for i, value in zip(chunk, values, strict=True):
                scores[unshared[i]] = value
        return scores

    def _image(self, value: ImageInput | None) -> Any:
        if value is None:
            return None
        return prepare_image(self.image(value))

    def sample(self, video: Any) -> SampledVideo:
        """A candidate video's frames as this reranker takes them: U-MARVEL's sampling rule
        (2 frames a second, 4 to 768), the decoding part of scoring it, which a caller may
        do in its own thread and pass as the candidate's video."""
        if isinstance(video, SampledVideo):
            return video
        return sample_video(self.video(video))

    def _prepare(self, query: RerankQuery, query_image: Any, candidate: RerankCandidate) -> _Pair:
        if candidate.image is not None and candidate.video is not None:
            raise ValueError("a candidate carries an image or a video, not both")
        candidate_image = self._image(candidate.image)
        videos: tuple[VideoInputs, ...] = ()
        if candidate.video is not None:
            sampled = self.sample(candidate.video)
            videos = (process_video(self.processor, self.family, sampled, VideoFrames.REFERENCE),)
        content = prompts.user_content(
            prompts.query_text(query.text, query.instruction),
            query_image is not None,
            candidate.text or "",
            candidate_image is not None,
            bool(videos),
        )
        prompt = self.tokens.render([{"role": "user", "content": content}])
        images = [img for img in (query_image, candidate_image) if img is not None]
        tokens = len(prompt.ids) + sum(len(self.tokens.video_tokens(v)) for v in videos)
        for img in images:
            tokens += image_tokens(self.processor.image_processor, img.height, img.width)
        return _Pair(prompt.text, prompt.ids, images, tokens, int(query_image is not None), videos)

    def _forward(self, pairs: list[_Pair]) -> list[float]:
        import torch

        batch = self.tokens.batch(
            [pair.ids for pair in pairs],
            [img for pair in pairs for img in pair.images],
            videos=[video for pair in pairs for video in pair.videos],
            padding_side="left",
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :]
            two = self._yes_no_logits(logits.float(), batch["input_ids"])
            return torch.softmax(two, dim=-1)[:, 0].cpu().tolist()

    def _shared(self, pairs: list[_Pair], split: int) -> list[float]:
        """P(Yes) of one query's pairs whose first ``split`` ids (and images) are the same."""
        import torch
        from transformers import DynamicCache

        head = pairs[0].ids[:split]
        head_images = pairs[0].images[: head.count(self.tokens.image_id)]
        prefix = self.tokens.batch([head], head_images, padding_side="left").to(self.device)
        scores = [0.0] * len(pairs)
        with torch.inference_mode():
            cached = self.model(**prefix, use_cache=True, logits_to_keep=1).cache
            layers = [(layer.keys, layer.values) for layer in cached.layers]
            # The suffix continues where the prefix's positions end (M-RoPE included).
            offset = self._positions(prefix).max() + 1
            costs = [pair.cost for pair in pairs]
            for chunk in plan_batches(costs, self.config.batch_size, self.config.batch_tokens):
                tails = [pairs[i].ids[split:] for i in chunk]
                images = [img for i in chunk for img in pairs[i].images[len(head_images) :]]
                batch = self.tokens.batch(tails, images, padding_side="left").to(self.device)
                rows = len(chunk)
                positions = self._positions(batch) + offset
                batch["attention_mask"] = torch.cat(
                    [prefix["attention_mask"].expand(rows, -1), batch["attention_mask"]], dim=-1
                )
                cache = DynamicCache(
                    ddp_cache_data=[
                        (keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
                        for keys, values in layers
                    ],
                    config=self.model.config,
                )
                logits = self.model(
                    **batch, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
                ).logits[:, -1, :]
                ids = torch.cat([prefix["input_ids"].expand(rows, -1), batch["input_ids"]], dim=-1)
                two = self._yes_no_logits(logits.float(), ids)
                values = torch.softmax(two, dim=-1)[:, 0].cpu().tolist()
                for index, value in zip(chunk, values, strict=True):
                    scores[index] = value
        return scores

    def _positions(self, batch: Any) -> torch.Tensor:
        """The model's own (3, batch, length) M-RoPE positions of a batch without a cache."""
        model = self.model
        if hasattr(model, "get_base_model"):  # an unmerged PEFT model
            model = model.get_base_model()
        positions, _ = model.model.get_rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            attention_mask=batch["attention_mask"],
        )
        return positions

    def _yes_no_logits(self, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[Yes, No] logits, with generate()'s repetition penalty where it would apply."""
        import torch

        columns = []
        for token in (self.yes_id, self.no_id):
            value = logits[:, token]
            if self.penalty != 1.0:
                seen = (input_ids == token).any(dim=-1)
                penalised = torch.where(value < 0, value * self.penalty, value / self.penalty)
                value = torch.where(seen, penalised, value)
            columns.append(value)
        return torch.stack(columns, dim=-1)


def shared_prefix_length(pairs: Sequence[_Pair], image_id: int) -> int:
    """How many leading prompt ids all ``pairs`` share, their query's image included but no
    candidate's, leaving each at least one id of its own (0: nothing to share)."""
    first = pairs[0].ids
    limit = min(len(pair.ids) for pair in pairs) - 1
    length = 0
    while length < limit and all(pair.ids[length] == first[length] for pair in pairs):
        length += 1
    # Image placeholders are all the same id: stop before the first one not the query's.
    seen = 0
    for index, token in enumerate(first[:length]):
        if token == image_id:
            seen += 1
            if seen > pairs[0].query_images:
                return index
    return length
