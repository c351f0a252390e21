"""Prompt tokenisation in which a client's text never becomes control tokens.

The processor's tokenizer matches every added token (``<|im_end|>``, ``<|image_pad|>``,
U-MARVEL's ``<emb>`` and instruction markers, ...) anywhere in its input, so a query like
``"x <|image_pad|> y"`` would add an image placeholder, or end the user turn early. Here the
chat template is rendered with the client's strings marked, added tokens are matched only
in the text the template and the prompt code wrote, and everything else is tokenised as
plain characters. For text without added-token strings the model inputs are the
processor's, id for id (tests/test_prompt_tokens.py compares them).

Shared by the embedder and the reranker. torch is imported inside functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mllm.video_inputs import VideoInputs

# Stand-ins for the client's strings while the template renders; neither character occurs
# in the templates or in our prompt text.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARK = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


class Client(str):
    """Text that came from a client: rendered as it is, tokenised as plain characters."""


# A text part of a message: one string, or pieces joined with nothing between them.
# Plain ``str`` pieces are trusted (the prompt code's own); ``Client`` pieces are not.
TextPart = str | Sequence[str]


@dataclass(frozen=True)
class Prompt:
    """A rendered chat template and its token ids, before image and video placeholders are
    expanded."""

    text: str
    ids: tuple[int, ...]


class PromptTokenizer:
    """Renders and tokenises prompts for one processor, then batches them for the model.

    Build it after every token has been added to the tokenizer.
    """

    def __init__(self, processor: Any) -> None:
        tokenizer = processor.tokenizer
        added = tokenizer.added_tokens_decoder
        for token in added.values():
            # These options change how the tokenizer matches a token (whitespace around it,
            # matching after normalisation), which the plain regex below does not reproduce.
            if token.lstrip or token.rstrip or token.single_word or token.normalized:
                raise ValueError(f"added token {token.content!r} has matching options")
        self._token_ids = {token.content: index for index, token in added.items()}
        # Longest first: at one position the longest token wins, as in the tokenizer.
        by_length = sorted(self._token_ids, key=len, reverse=True)
        self._tokens = re.compile("|".join(map(re.escape, by_length)) or "(?!)")
        self._plain = _without_added_tokens(tokenizer)
        self._processor = processor
        self.pad_id = int(tokenizer.pad_token_id)
        self.image_id = int(processor.image_token_id)
        self.video_id = int(processor.video_token_id)
        self.vision_start_id = int(tokenizer.convert_tokens_to_ids("<|vision_start|>"))
        self.vision_end_id = int(tokenizer.convert_tokens_to_ids("<|vision_end|>"))

    def render(self, messages: list[dict[str, Any]]) -> Prompt:
        """The chat template (with the generation prompt) over ``messages``, tokenised.

        A content part's ``"text"`` is a ``TextPart``; added tokens count as tokens only in
        its trusted pieces and in what the template writes around them.
        """
        client: list[str] = []

        def stand_in(part: TextPart) -> str:
            pieces = [part] if isinstance(part, str) else part
            out = []
            for piece in pieces:
                if isinstance(piece, Client):
                    out.append(f"{_OPEN}{len(client)}{_CLOSE}")
                    client.append(str(piece))
                else:
                    out.append(piece)
            return "".join(out)

        marked = [
            {
                **message,
                "content": [
                    {**part, "text": stand_in(part["text"])} if "text" in part else part
                    for part in message["content"]
                ],
            }
            for message in messages
        ]
        rendered = self._processor.apply_chat_template(
            marked, tokenize=False, add_generation_prompt=True
        )
        # [trusted, client index, trusted, client index, ..., trusted]
        pieces = _MARK.split(rendered)
        if pieces[1::2] != [str(i) for i in range(len(client))]:
            raise ValueError("the chat template must write each text part once, in order")

        ids: list[int] = []
        segment = ""  # text since the last token, tokenised as one piece like the tokenizer
        for index, piece in enumerate(pieces):
            if index % 2:
                segment += client[int(piece)]
                continue
            last = 0
            for match in self._tokens.finditer(piece):
                ids += self._encode(segment + piece[last : match.start()])
                ids.append(self._token_ids[match.group()])
                segment, last = "", match.end()
            segment += piece[last:]
        ids += self._encode(segment)
        text = "".join(client[int(p)] if i % 2 else p for i, p in enumerate(pieces))
        return Prompt(text, tuple(ids))

    def _encode(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids if text else []

    def video_tokens(self, video: VideoInputs) -> list[int]:
        """The tokens that stand for ``video``: a pad per merged patch of every frame or, for
        a timestamped family, each temporal group's ``<t seconds>``, markers and pads."""
        groups, height, width = video.grid
        pads = [self.video_id] * (height * width // self._processor.video_processor.merge_size**2)
        if video.timestamps is None:
            return pads * groups
        tokens: list[int] = []
        for time in video.timestamps:
            tokens += [*self._encode(f"<{time:.1f} seconds>"), self.vision_start_id, *pads]
            tokens.append(self.vision_end_id)
        return tokens

    def expand(
        self, prompt: Sequence[int], image_tokens: Sequence[int], videos: Sequence[VideoInputs]
    ) -> list[int]:
        """``prompt`` with each image placeholder repeated as many times as its image has
        tokens (``image_tokens``, in order) and each video placeholder replaced by its video's
        tokens (for a timestamped video, with the template's vision markers around it)."""
        images, clips = iter(image_tokens), iter(videos)
        row: list[int] = []
        skip = False
        for index, token in enumerate(prompt):
            if skip:
                skip = False
            elif token == self.image_id:
                row += [token] * next(images)
            elif token == self.video_id:
                video = next(clips)
                if video.timestamps is not None:
                    # Each temporal group carries its own markers, in place of the template's.
                    after = prompt[index + 1] if index + 1 < len(prompt) else None
                    if row[-1:] != [self.vision_start_id] or after != self.vision_end_id:
                        raise ValueError("a video placeholder must stand between vision markers")
                    row.pop()
                    skip = True
                row += self.video_tokens(video)
            else:
                row.append(token)
        return row

    def batch(
        self,
        prompts: Sequence[Sequence[int]],
        images: Sequence[Any],
        *,
        videos: Sequence[VideoInputs] = (),
        padding_side: Literal["left", "right"],
        max_length: int | Sequence[int | None] | None = None,
        resize: bool = True,
    ) -> Any:
        """What the processor returns for these prompts (ids from ``render``), images and
        videos (processed already: ``mllm.video_inputs.process_video``).

        The images fill the prompts' image placeholders in order; each placeholder becomes as
        many tokens as its image has merged patches. The videos fill the video placeholders
        (``expand``). Prompts longer than ``max_length`` (one for all, or one per prompt) are
        cut on the right; the batch is padded to its longest prompt. ``resize=False``: the
        images come resized already, and the processor only rescales and patchifies them.
        """
        import torch
        from transformers import BatchFeature

        for token, items, what in (
            (self.image_id, images, "image"),
            (self.video_id, videos, "video"),
        ):
            placeholders = sum(list(prompt).count(token) for prompt in prompts)
            if placeholders != len(items):
                raise ValueError(f"{placeholders} {what} placeholders for {len(items)} {what}s")
        vision: dict[str, Any] = {}
        counts: list[int] = []
        if images:
            image_processor = self._processor.image_processor
            options = {} if resize else {"do_resize": False}
            vision = dict(image_processor(images=list(images), return_tensors="pt", **options))
            counts = (vision["image_grid_thw"].prod(-1) // image_processor.merge_size**2).tolist()
        if videos:
            vision["pixel_values_videos"] = torch.cat([video.pixels for video in videos])
            vision["video_grid_thw"] = torch.tensor([video.grid for video in videos])
        limits = max_length if isinstance(max_length, Sequence) else [max_length] * len(prompts)
        sizes, clips = iter(counts), iter(videos)
        rows = []
        for prompt, limit in zip(prompts, limits, strict=True):
            images_here = [next(sizes) for _ in range(list(prompt).count(self.image_id))]
            videos_here = [next(clips) for _ in range(list(prompt).count(self.video_id))]
            rows.append(self.expand(prompt, images_here, videos_here)[:limit])
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(rows):
            start = 0 if padding_side == "right" else width - len(row)
            span = slice(start, start + len(row))
            ids[index, span] = torch.tensor(row, dtype=torch.long)
            mask[index, span] = 1
        if int((ids == self.image_id).sum()) != sum(counts):
            raise ValueError("truncation cut into an image's tokens")
        merge = self._processor.video_processor.merge_size**2 if videos else 1
        video_pads = sum(t * h * w // merge for t, h, w in (video.grid for video in videos))
        if int((ids == self.video_id).sum()) != video_pads:
            raise ValueError("truncation cut into a video's tokens")
        kinds = (ids == self.image_id).long() + 2 * (ids == self.video_id).long()
        text = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": kinds}
        return BatchFeature({**text, **vision})


def _without_added_tokens(tokenizer: Any) -> Any:
    """The tokenizer's own pipeline (normaliser, pre-tokeniser, BPE) with no added tokens.

    ``split_special_tokens=True`` is not enough: it still matches added tokens that are not
    special, such as Qwen3's ``<tool_call>`` and ``<think>``.
    """
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.update(added_tokens=[], padding=None, truncation=None)
    return Tokenizer.from_str(json.dumps(spec))
