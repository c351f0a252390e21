"""U-MARVEL prompts: what each query and candidate looks like to the model (SPEC section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mllm.loading import ImageInput
from mllm.prompt_tokens import Client, TextPart
from mllm.text import format_string

EMB_TOKEN = "<emb>"
INSTRUCTION_START = "<instruction_start>"
INSTRUCTION_END = "<instruction_end>"
SPECIAL_TOKENS = (EMB_TOKEN, INSTRUCTION_START, INSTRUCTION_END)

SUFFIX_IMAGE_TEXT = "\nSummarize above image and sentence in one word: "
SUFFIX_TEXT = "\nSummarize above sentence in one word: "
SUFFIX_IMAGE = "\nSummarize above image in one word: "
ASSISTANT_TEXT = f"{EMB_TOKEN}."

Modality = Literal["text", "image", "image,text"]


@dataclass(frozen=True)
class Query:
    """A search query: text and/or image, and the instruction that says what to find."""

    text: str | None = None
    image: ImageInput | None = None
    instruction: str | None = None

    @property
    def modality(self) -> Modality:
        return _modality(self.text, self.image)


@dataclass(frozen=True)
class Candidate:
    """A document to embed: text and/or image."""

    text: str | None = None
    image: ImageInput | None = None

    @property
    def modality(self) -> Modality:
        return _modality(self.text, self.image)


def _modality(text: str | None, image: object | None) -> Modality:
    has_text = bool(text and text.strip())
    if image is not None and has_text:
        return "image,text"
    if image is not None:
        return "image"
    if has_text:
        return "text"
    raise ValueError("an item needs text, an image, or both")


def query_pieces(query: Query) -> tuple[str, ...]:
    """The text part of a query's user turn as pieces, suffix included.

    ``Client`` pieces hold the client's instruction and query text; the rest is ours.
    """
    text = query.text or ""
    suffix = SUFFIX_IMAGE_TEXT if query.image is not None else SUFFIX_TEXT
    if query.instruction is None:
        return (Client(format_string(text)), suffix)
    instruction = format_string(query.instruction)
    head = f"{INSTRUCTION_START}{instruction}{INSTRUCTION_END}"
    body = format_string(f"{head} {text}")
    # The outer normalisation changes only the end of the string, and the end marker's ">"
    # stops its stripping, so the body still starts with the head.
    tail = body[len(head) :]
    return (INSTRUCTION_START, Client(instruction), INSTRUCTION_END, Client(tail), suffix)


def query_text(query: Query) -> str:
    """The text part of a query's user turn, suffix included."""
    return "".join(query_pieces(query))


def candidate_pieces(candidate: Candidate, *, image_only_suffix: bool = False) -> tuple[str, ...]:
    """The text part of a candidate's user turn: its ``Client`` text, then the suffix.

    An image-only candidate gets the image-and-text suffix with empty text, as the
    evaluation behind the published numbers did; ``image_only_suffix`` switches to the
    image-only suffix that training used.
    """
    text = Client(format_string(candidate.text or ""))
    if candidate.image is None:
        return (text, SUFFIX_TEXT)
    if not text and image_only_suffix:
        return (SUFFIX_IMAGE,)
    return (text, SUFFIX_IMAGE_TEXT)


def candidate_text(candidate: Candidate, *, image_only_suffix: bool = False) -> str:
    """The text part of a candidate's user turn, suffix included."""
    return "".join(candidate_pieces(candidate, image_only_suffix=image_only_suffix))


def messages(text: TextPart, has_image: bool) -> list[dict[str, Any]]:
    """One user turn (image first, then text) and the assistant turn ``<emb>.``."""
    content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": text})
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": ASSISTANT_TEXT}]},
    ]
