"""The U-MARVEL+ reranker prompt (SPEC section 7)."""

from __future__ import annotations

from typing import Any

from mllm.prompt_tokens import Client
from mllm.text import format_string

# Exactly the trained prompt: 24 spaces after "candidate" and the misspelling "responed".
RERANK_INSTRUCTION = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate"
    + " " * 24
    + "meets the requirements of the query. If it does, respond with 'Yes'; if it doesn't, "
    "responed with 'No'."
)


def query_text(text: str | None, instruction: str | None) -> str:
    if instruction is None:
        return format_string(text or "")
    return format_string(f"{format_string(instruction)} {text or ''}")


def user_content(
    query_text_: str,
    query_has_image: bool,
    candidate_text: str,
    candidate_has_image: bool,
    candidate_has_video: bool = False,
) -> list[dict[str, Any]]:
    """Instruction, ``Query:``, query image, query text, ``Candidate:``, its image (or
    video), its text.

    The two texts are marked as the client's (``Client``): never read as control tokens.
    """
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": RERANK_INSTRUCTION},
        {"type": "text", "text": "Query:"},
    ]
    if query_has_image:
        parts.append({"type": "image"})
    parts.append({"type": "text", "text": Client(query_text_)})
    parts.append({"type": "text", "text": "Candidate:"})
    if candidate_has_image:
        parts.append({"type": "image"})
    if candidate_has_video:
        parts.append({"type": "video"})
    parts.append({"type": "text", "text": Client(format_string(candidate_text))})
    return [p for p in parts if p["type"] != "text" or p["text"]]
