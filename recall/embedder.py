"""The U-MARVEL embedder (SPEC sections 1-6).

Usage::

    from recall import Embedder, Query, Candidate

    embedder = Embedder.from_pretrained("TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct")
    q = embedder.encode_queries([Query(text="a red car", instruction="Find an image.")])
    c = embedder.encode_candidates([Candidate(image="car.jpg"), Candidate(text="A bus.")])
    scores = q @ c.T  # cosine: the vectors are L2-normalised

Videos (UMARVEL-VIDEO-SPEC)::

    clips = embedder.encode_candidates([Candidate(video="clip.mp4")])
    captions = embedder.encode_queries(
        [Query(text="a man is cooking", instruction=prompts.VIDEO_INSTRUCTION, protocol="video")]
    )
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from media.images import prepare_image
from media.video import SampledVideo, sample_video
from mllm.batching import image_tokens, plan_batches
from mllm.families import Pooling, Positions, TokenRows
from mllm.loading import Loaded, LoadedModel, RunConfig, load_backbone
from mllm.prompt_tokens import PromptTokenizer, TextPart
from mllm.video_inputs import VideoFrames, VideoInputs, process_video
from recall import prompts
from recall.prompts import Candidate, Query

if TYPE_CHECKING:
    import torch

CANDIDATE_MAX_TOKENS = 1024


@dataclass(frozen=True)
class EmbedderConfig(RunConfig):
    """What defines the embedding, fixed at load time, and how it runs."""

    image_only_suffix: bool = False
    # Which sampled frames of a video reach the model: REFERENCE as U-MARVEL's evaluation
    # (on Qwen3-VL its processor keeps min(4, n) of them, timestamped at 24 fps), or SAMPLED
    # (all of them, timestamped at the video's frame rate). It changes Qwen3-VL's vectors.
    video_frames: VideoFrames = VideoFrames.REFERENCE
    # Frames sampled from every video, rounded to an even count (MSVD's evaluation: 12);
    # None: 2 a second, 4 to 768.
    video_nframes: int | None = None


@dataclass(frozen=True)
class _Prepared:
    text: str  # the rendered chat template
    ids: tuple[int, ...]  # its tokens, before the image or video placeholder is expanded
    image: Any  # a PIL image or None
    video: VideoInputs | None
    cost: int
    pool_instruction: bool = False  # the instruction span is pooled too


class Embedder(LoadedModel[EmbedderConfig]):
    """Embeds queries and candidates into one L2-normalised space."""

    def __init__(self, loaded: Loaded, config: EmbedderConfig | None = None) -> None:
        super().__init__(loaded, config or EmbedderConfig())
        self._install_special_tokens()
        self.tokens = PromptTokenizer(self.processor)

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        processor_path: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        config: EmbedderConfig | None = None,
    ) -> Embedder:
        return cls(load_backbone(model_path, processor_path, device=device, dtype=dtype), config)

    @property
    def dim(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    # -- special tokens (SPEC section 1) ---------------------------------------------------
    def _install_special_tokens(self) -> None:
        import torch

        tokenizer = self.processor.tokenizer
        missing = [t for t in prompts.SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing and len(missing) != len(prompts.SPECIAL_TOKENS):
            raise ValueError(f"tokenizer has only some of the U-MARVEL tokens; missing {missing}")
        if missing:
            base_len = len(tokenizer)
            tokenizer.add_tokens(list(prompts.SPECIAL_TOKENS), special_tokens=True)
            table = self.model.get_input_embeddings().weight
            if table.shape[0] < base_len + 3:
                raise ValueError("the model's embedding table is smaller than the tokenizer")
            if self.family.token_rows is TokenRows.MEAN:
                with torch.no_grad():
                    mean = table[: base_len + 1].float().mean(dim=0)
                    table[base_len + 1 : base_len + 3] = mean.to(table.dtype)
        self.token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in prompts.SPECIAL_TOKENS}

    # -- public API --------------------------------------------------------------------------
    def encode_queries(self, queries: Sequence[Query]) -> np.ndarray:
        pooled = self.family.video_query_instruction is Pooling.POOLED

        def prepare(q: Query) -> _Prepared:
            pieces = prompts.query_pieces(q)
            return self._prepare(
                pieces, q.image, q.video, pool_instruction=pooled and q.video_protocol
            )

        with self._calls:
            return self._encode_items(queries, prepare, truncate=False)

    def encode_candidates(self, candidates: Sequence[Candidate]) -> np.ndarray:
        suffix = self.config.image_only_suffix

        def prepare(c: Candidate) -> _Prepared:
            pieces = prompts.candidate_pieces(c, image_only_suffix=suffix)
            return self._prepare(pieces, c.image, c.video)

        with self._calls:
            return self._encode_items(candidates, prepare, truncate=True)

    def _encode_items(
        self, items: Sequence[Any], prepare: Callable[[Any], _Prepared], *, truncate: bool
    ) -> np.ndarray:
        """Texts and images are prepared together and batched by size. Videos are prepared
        ``batch_size`` at a time, just before their forward: a long video's segments (tens
        of frames each, up to 600k pixels a frame) never sit in memory all at once."""
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        still = [i for i, item in enumerate(items) if item.video is None]
        if still:
            out[still] = self._encode([prepare(items[i]) for i in still], truncate=truncate)
        videos = [i for i, item in enumerate(items) if item.video is not None]
        for start in range(0, len(videos), self.config.batch_size):
            group = videos[start : start + self.config.batch_size]
            out[group] = self._encode([prepare(items[i]) for i in group], truncate=truncate)
        return out

    def sample(self, video: Any) -> SampledVideo:
        """The frames of ``video`` this embedder takes (U-MARVEL's sampling rule, within its
        limits and ``video_nframes``): the decoding and resizing part of embedding a video.
        A caller may do it in its own thread and pass the result as the item's video; a
        worker does, so that decoding never holds the model's batcher."""
        if isinstance(video, SampledVideo):
            return video
        return sample_video(self.video(video), nframes=self.config.video_nframes)

    # -- stages ------------------------------------------------------------------------------
    def _prepare(
        self, text: TextPart, image: Any, video: Any = None, *, pool_instruction: bool = False
    ) -> _Prepared:
        """CPU work: decode and resize the image, or decode, sample and process the video;
        render the chat template and tokenise it.

        ``text`` is the user turn's text part; only its ``Client`` pieces are the client's.
        """
        if image is not None and video is not None:
            raise ValueError("an item carries an image or a video, not both")
        pil = inputs = None
        if image is not None:
            pil = prepare_image(self.image(image))
        if video is not None:
            sampled = video if isinstance(video, SampledVideo) else self.sample(video)
            inputs = process_video(self.processor, self.family, sampled, self.config.video_frames)
        media: Literal["image", "video"] | None = None
        if pil is not None or inputs is not None:
            media = "image" if pil is not None else "video"
        prompt = self.tokens.render(prompts.messages(text, media))
        cost = self._cost(prompt.ids, pil, inputs)
        return _Prepared(prompt.text, prompt.ids, pil, inputs, cost, pool_instruction)

    def _cost(self, ids: tuple[int, ...], image: Any, video: VideoInputs | None = None) -> int:
        """Tokens after processing: the text's, plus the image's or video's expansion."""
        tokens = len(ids)
        if image is not None:
            tokens += image_tokens(self.processor.image_processor, image.height, image.width)
        if video is not None:
            tokens += len(self.tokens.video_tokens(video))
        return tokens

    @staticmethod
    def _max_tokens(item: _Prepared, truncate: bool) -> int | None:
        """M-BEIR's candidates are cut at 1,024 tokens; the video evaluation cut nothing."""
        return CANDIDATE_MAX_TOKENS if truncate and item.video is None else None

    def _encode(self, items: list[_Prepared], *, truncate: bool) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        costs = [min(item.cost, self._max_tokens(item, truncate) or item.cost) for item in items]
        # Similar sizes batch together (less padding); rows go back to their input places.
        for chunk in plan_batches(costs, self.config.batch_size, self.config.batch_tokens):
            out[chunk] = self._forward([items[i] for i in chunk], truncate=truncate)
        return out

    def _forward(self, items: list[_Prepared], *, truncate: bool) -> np.ndarray:
        import torch

        batch = self.tokens.batch(
            [item.ids for item in items],
            [item.image for item in items if item.image is not None],
            videos=[item.video for item in items if item.video is not None],
            padding_side="right",
            max_length=[self._max_tokens(item, truncate) for item in items],
        ).to(self.device)
        pool_instruction = torch.tensor([item.pool_instruction for item in items])
        with torch.inference_mode():
            hidden = self._hidden_states(batch)
            pooled = self._pool(
                hidden,
                batch["input_ids"],
                batch["attention_mask"],
                pool_instruction.to(self.device),
            )
        return pooled.float().cpu().numpy()

    def _hidden_states(self, batch: Any) -> torch.Tensor:
        """Bidirectional forward of the language model over text, image and video
        embeddings."""
        import torch
        from transformers.masking_utils import create_bidirectional_mask

        backbone = self.model.model
        config = self.model.config
        input_ids = batch["input_ids"]
        mask = batch["attention_mask"]
        embeds = self.model.get_input_embeddings()(input_ids)
        vision = (
            ("pixel_values", "image_grid_thw", config.image_token_id, backbone.get_image_features),
            (
                "pixel_values_videos",
                "video_grid_thw",
                config.video_token_id,
                backbone.get_video_features,
            ),
        )
        for pixels, grid, token_id, features_of in vision:
            if pixels not in batch:
                continue
            # pooler_output holds the merged patch features; Qwen3-VL's DeepStack features
            # are discarded on purpose (U-MARVEL does not inject them).
            features = features_of(batch[pixels].to(self.dtype), batch[grid]).pooler_output
            features = torch.cat(list(features), dim=0).to(embeds.dtype)
            positions = (input_ids == token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(positions.expand_as(embeds), features)
        if self.family.positions is Positions.MASK_CUMSUM:
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(
                input_ids
            )
        language_model = backbone.language_model
        full_mask = create_bidirectional_mask(
            config=language_model.config,
            inputs_embeds=embeds,
            attention_mask=mask,
            allow_is_bidirectional_skip=False,
        )
        output = language_model(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=positions,
            use_cache=False,
        )
        return output.last_hidden_state

    def _pool(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        pool_instruction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over non-pad tokens minus the instruction span (kept in the rows that
        ``pool_instruction`` marks), then L2 normalisation."""
        import torch

        is_start = input_ids == self.token_ids[prompts.INSTRUCTION_START]
        is_end = input_ids == self.token_ids[prompts.INSTRUCTION_END]
        # Inside the span: a start has been seen and its end has not been passed.
        in_span = is_start.cumsum(-1) > (is_end.cumsum(-1) - is_end.long())
        if pool_instruction is not None:
            in_span &= ~pool_instruction.bool().unsqueeze(-1)
        weights = (mask.bool() & ~in_span).to(hidden.dtype).unsqueeze(-1)
        summed = (hidden * weights).sum(dim=1, dtype=torch.float32)
        pooled = summed / weights.sum(dim=1, dtype=torch.float32).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)
