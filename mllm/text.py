"""Text normalisation shared by the embedder and the reranker (SPEC section 2)."""

from __future__ import annotations


def format_string(text: str) -> str:
    """Remove every CR, strip spaces and quotes, upper-case the first character, end in .?!"""
    # UniIR removes "\r" everywhere, not only at the ends: "a\r\nb" becomes "a\nb".
    text = text.replace("\r", "").strip().strip('"')
    if text:
        text = text[0].upper() + text[1:]
        if text[-1] not in ".?!":
            text += "."
    return text
