"""U-MARVEL prompts: what each query and candidate looks like to the model (SPEC section 3;
for videos, UMARVEL-VIDEO-SPEC section 3).

Two evaluations of U-MARVEL define two prompt protocols. M-BEIR's (``"mbeir"``, images and
text) normalises text with ``format_string``, appends a "Summarize above ..." suffix and
leaves the instruction span out of the mean. MSR-VTT's and MSVD's (``"video"``) take text
verbatim with no suffix; a video item is the video, then its text. An item with a video is
always in the video protocol; a text query is when it says so (``protocol="video"``), which
is how the evaluation embedded the captions it matched with videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mllm.loading import ImageInput, VideoInput
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
# The instruction of MSR-VTT's and MSVD's text queries (with protocol="video").
VIDEO_INSTRUCTION = "Find an everyday video match with caption."

Modality = Literal["text", "image", "image,text", "video", "video,text"]
Protocol = Literal["mbeir", "video"]


@dataclass(frozen=True)
class Query:
    """A search query: text and/or an image or a video, and the instruction that says what
    to find. ``protocol="video"``: a text query in the prompt format of U-MARVEL's video
    evaluation (usually with ``VIDEO_INSTRUCTION``). A video query takes no instruction
    (the evaluation embedded videos without one)."""

    text: str | None = None
    image: ImageInput | None = None
    instruction: str | None = None
    video: VideoInput | None = None
    protocol: Protocol = "mbeir"

    @property
    def modality(self) -> Modality:
        return _modality(self.text, self.image, self.video)

    @property
    def video_protocol(self) -> bool:
        """Whether the query is in the video evaluation's prompt format; a ValueError for
        what that evaluation never embedded (a video with an instruction, an image)."""
        if self.video is not None and self.instruction is not None:
            raise ValueError("a video query takes no instruction")
        if self.protocol == "video" and self.image is not None:
            raise ValueError("the video protocol has no images")
        return self.video is not None or self.protocol == "video"


@dataclass(frozen=True)
class Candidate:
    """A document to embed: text and/or an image or a video."""

    text: str | None = None
    image: ImageInput | None = None
    video: VideoInput | None = None

    @property
    def modality(self) -> Modality:
        return _modality(self.text, self.image, self.video)


def _modality(text: str | None, image: object | None, video: object | None = None) -> Modality:
    has_text = bool(text and text.strip())
    if image is not None and video is not None:
        raise ValueError("an item carries an image or a video, not both")
    if video is not None:
        return "video,text" if has_text else "video"
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
    if query.video_protocol:
        # Verbatim: no format_string, no suffix, no space after the end marker.
        if query.instruction is None:
            return (Client(text),)
        return (INSTRUCTION_START, Client(query.instruction), INSTRUCTION_END, Client(text))
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
    image-only suffix that training used. A video candidate's text is verbatim, with no
    suffix.
    """
    if candidate.video is not None:
        return (Client(candidate.text or ""),)
    text = Client(format_string(candidate.text or ""))
    if candidate.image is None:
        return (text, SUFFIX_TEXT)
    if not text and image_only_suffix:
        return (SUFFIX_IMAGE,)
    return (text, SUFFIX_IMAGE_TEXT)


def candidate_text(candidate: Candidate, *, image_only_suffix: bool = False) -> str:
    """The text part of a candidate's user turn, suffix included."""
    return "".join(candidate_pieces(candidate, image_only_suffix=image_only_suffix))


def messages(text: TextPart, media: Literal["image", "video"] | None) -> list[dict[str, Any]]:
    """One user turn (the image or video first, then text) and the assistant turn
    ``<emb>.``."""
    content: list[dict[str, Any]] = [{"type": media}] if media else []
    content.append({"type": "text", "text": text})
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": ASSISTANT_TEXT}]},
    ]
