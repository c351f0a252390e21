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
from typing import Any, Literal

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
    """A rendered chat template and its token ids, before image placeholders are expanded."""

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

    def batch(
        self,
        prompts: Sequence[Sequence[int]],
        images: Sequence[Any],
        *,
        padding_side: Literal["left", "right"],
        max_length: int | None = None,
        resize: bool = True,
    ) -> Any:
        """What the processor returns for these prompts (ids from ``render``) and images.

        The images fill the prompts' image placeholders in order; each placeholder becomes as
        many tokens as its image has merged patches. Prompts longer than ``max_length`` are
        cut on the right; the batch is padded to its longest prompt. ``resize=False``: the
        images come resized already, and the processor only rescales and patchifies them.
        """
        import torch
        from transformers import BatchFeature

        placeholders = sum(list(prompt).count(self.image_id) for prompt in prompts)
        if placeholders != len(images):
            raise ValueError(f"{placeholders} image placeholders for {len(images)} images")
        vision: dict[str, Any] = {}
        counts: list[int] = []
        if images:
            image_processor = self._processor.image_processor
            options = {} if resize else {"do_resize": False}
            vision = dict(image_processor(images=list(images), return_tensors="pt", **options))
            counts = (vision["image_grid_thw"].prod(-1) // image_processor.merge_size**2).tolist()
        sizes = iter(counts)
        rows = []
        for prompt in prompts:
            row: list[int] = []
            for token in prompt:
                row += [token] * next(sizes) if token == self.image_id else [token]
            rows.append(row[:max_length])
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
