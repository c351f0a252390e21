"""Default retrieval instructions per (query modality, candidate modality).

A request may give its own instruction; otherwise the recall service takes the default
for the query's modality and the collection's candidate modality ("any" when mixed).
"""

from __future__ import annotations

DEFAULT_INSTRUCTIONS: dict[tuple[str, str], str] = {
    ("text", "text"): "Retrieve a passage that answers or matches the given text.",
    ("text", "image"): "Find an image that matches the given caption.",
    ("text", "image,text"): "Find an image and its description that match the given text.",
    ("text", "any"): "Find a document that matches the given text.",
    ("image", "text"): "Find a caption that describes the given image.",
    ("image", "image"): "Find an image that looks similar to the given image.",
    ("image", "image,text"): "Find an image and its description that match the given image.",
    ("image", "any"): "Find a document that matches the given image.",
    ("image,text", "text"): "Find a passage that answers the question about the given image.",
    ("image,text", "image"): "Find an image that matches the given image and its modification.",
    ("image,text", "image,text"): "Find a document that matches the given image and text.",
    ("image,text", "any"): "Find a document that matches the given image and text.",
}


def default_instruction(query_modality: str, candidate_modality: str = "any") -> str:
    key = (query_modality, candidate_modality)
    if key not in DEFAULT_INSTRUCTIONS:
        key = (query_modality, "any")
    return DEFAULT_INSTRUCTIONS[key]
