"""A small generated sample collection: coloured shapes with captions."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
SHAPES = ("circle", "square", "triangle")


def shape_image(colour: str, shape: str, size: int = 96) -> bytes:
    """A PNG of one ``colour`` ``shape`` on a white background."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(size // 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sample_documents() -> list[dict[str, Any]]:
    """Nine documents: image+text, image-only and text-only, with typed metadata."""
    docs: list[dict[str, Any]] = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        doc: dict[str, Any] = {"id": f"{colour}-{shape}", "metadata": {"colour": colour, "n": i}}
        kind = i % 3
        if kind in (0, 1):
            doc["image"] = b64(shape_image(colour, shape))
        if kind in (0, 2):
            doc["text"] = f"a {colour} {shape} on a white background"
        docs.append(doc)
    return docs


def sample_queries() -> list[tuple[str, dict[str, Any], str]]:
    """The three query kinds over ``sample_documents()``: a label, the query's fields (an
    image as bytes) and the document it asks for."""
    return [
        ("text", {"text": "a red circle"}, "red-circle"),
        ("image", {"image": shape_image("blue", "square")}, "blue-square"),
        (
            "image+text",
            {"image": shape_image("green", "triangle"), "text": "the same in red"},
            "red-triangle",
        ),
    ]
