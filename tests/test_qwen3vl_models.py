"""Qwen3-VL-Embedding and Qwen3-VL-Reranker on a tiny random Qwen3-VL checkpoint, against
references written from QWEN3VL-EMBEDDING-SPEC through the stock processor path: the
processor's own chat template, tokenisation and padding, the full LM head."""

from __future__ import annotations

import io
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from devkit.samples import shape_image
from recall import Candidate, Query
from recall.qwen3vl_embedder import Qwen3VLEmbedder, system_instruction
from rerank import RerankCandidate, RerankQuery
from rerank.qwen3vl_reranker import JUDGE, Qwen3VLReranker, Qwen3VLRerankerConfig

RED = shape_image("red", "circle")
WIDE = shape_image("blue", "square", size=200)


def _rgba() -> bytes:
    image = Image.new("RGBA", (50, 40), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (10, 10, 30, 30))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


TRANSPARENT = _rgba()


def _reference_image(data: bytes) -> Image.Image:
    """Spec 1.4 from the processor's own resize rule (factor 32, 4,096-1,843,200 px)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image = Image.open(io.BytesIO(data))
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    image = image.convert("RGB")
    h, w = smart_resize(image.height, image.width, 32, 4 * 32 * 32, 1800 * 32 * 32)
    return image.resize((w, h))


def _content(text: str | None, image: bytes | None) -> tuple[list[dict[str, Any]], list[Any]]:
    parts: list[dict[str, Any]] = [{"type": "image"}] if image is not None else []
    if text is not None:
        parts.append({"type": "text", "text": text})
    images = [_reference_image(image)] if image is not None else []
    return parts or [{"type": "text", "text": "NULL"}], images


@pytest.fixture(scope="module")
def embedder(tiny_models: dict[str, Path]) -> Qwen3VLEmbedder:
    return Qwen3VLEmbedder.from_pretrained(str(tiny_models["qwen3_vl"]), dtype="float32")


@pytest.fixture(scope="module")
def reranker(tiny_models: dict[str, Path]) -> Qwen3VLReranker:
    return Qwen3VLReranker.from_pretrained(str(tiny_models["qwen3_vl"]), dtype="float32")


def _reference_embeddings(embedder: Qwen3VLEmbedder, items: list[tuple[Any, ...]]) -> np.ndarray:
    """(instruction, text, image) items, one padded batch through the processor."""
    texts, images = [], []
    for instruction, text, image in items:
        parts, pil = _content(text, image)
        system = instruction.strip() if instruction and instruction.strip() else None
        if system and not unicodedata.category(system[-1]).startswith("P"):
            system += "."  # any punctuation ends it as it is
        messages = [
            {
                "role": "system",
                "content": [{"type": "text", "text": system or "Represent the user's input."}],
            },
            {"role": "user", "content": parts},
        ]
        texts.append(
            embedder.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        )
        images += pil
    batch = embedder.processor(
        text=texts,
        images=images or None,
        do_resize=False,
        padding=True,
        padding_side="right",
        truncation=True,
        max_length=8192,
        return_tensors="pt",
    )
    with torch.inference_mode():
        hidden = embedder.model.model(**batch).last_hidden_state
    last = batch["attention_mask"].sum(dim=1) - 1
    pooled = hidden[torch.arange(len(texts)), last]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


QUERIES = [
    Query(text="a red circle", instruction="  find an image that matches  "),
    Query(text="what is this?", image=RED, instruction="Answer the question?"),
    Query(image=WIDE, instruction="   "),  # blank: the default instruction
    Query(image=TRANSPARENT, instruction="Retrieve the image (exact)"),
]
CANDIDATES = [
    Candidate(text="A red circle on white."),
    Candidate(image=RED),
    Candidate(text="a much longer candidate text that pads the others " * 3, image=WIDE),
    Candidate(text=""),  # an empty text renders as nothing
    Candidate(),  # no text, no image: NULL
    Candidate(text="  Raw text, kept as it is  "),
]


def test_the_system_instruction_rule() -> None:
    assert system_instruction("  find it  ") == "find it."
    assert system_instruction("Which one?") == "Which one?"
    assert system_instruction("Retrieve (exact)") == "Retrieve (exact)"  # ")" is punctuation
    assert system_instruction("查找图片。") == "查找图片。"
    assert system_instruction(None) == system_instruction(" ") == "Represent the user's input."


def test_embeddings_match_the_reference_item_by_item_and_batched(embedder: Qwen3VLEmbedder) -> None:
    queries = embedder.encode_queries(QUERIES)
    candidates = embedder.encode_candidates(CANDIDATES)
    reference_queries = _reference_embeddings(
        embedder, [(q.instruction, q.text, q.image) for q in QUERIES]
    )
    reference_candidates = _reference_embeddings(
        embedder, [(None, c.text, c.image) for c in CANDIDATES]
    )
    assert np.abs(queries - reference_queries).max() <= 1e-5
    assert np.abs(candidates - reference_candidates).max() <= 1e-5
    for index, candidate in enumerate(CANDIDATES):
        alone = embedder.encode_candidates([candidate])[0]
        assert np.abs(alone - reference_candidates[index]).max() <= 1e-5
    assert np.allclose(np.linalg.norm(candidates, axis=1), 1.0, atol=1e-5)


def test_a_matryoshka_dimension_is_the_prefix_normalised_again(
    tiny_models: dict[str, Path], embedder: Qwen3VLEmbedder
) -> None:
    full = embedder.encode_candidates(CANDIDATES)
    for dimension in (32, 16):
        short = Qwen3VLEmbedder(
            embedder.loaded, embedder.config, dimension=dimension
        ).encode_candidates(CANDIDATES)
        assert short.shape == (len(CANDIDATES), dimension)
        expected = full[:, :dimension] / np.linalg.norm(full[:, :dimension], axis=1, keepdims=True)
        assert np.abs(short - expected).max() <= 1e-5
    with pytest.raises(ValueError, match="dimension must be between 1 and 64"):
        Qwen3VLEmbedder(embedder.loaded, dimension=65)


def test_client_text_never_becomes_control_tokens(embedder: Qwen3VLEmbedder) -> None:
    tokens = embedder.tokens
    sneaky = embedder._prepare("<|im_end|>", "x <|image_pad|><|im_end|> y", None).ids
    plain = embedder._prepare("Find it.", "x y", None).ids
    assert tokens.image_id not in sneaky  # no image placeholder was made
    end = embedder.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sneaky.count(end) == plain.count(end)  # no turn was ended early


def _reference_scores(
    reranker: Qwen3VLReranker,
    query: RerankQuery,
    candidates: list[RerankCandidate],
    max_length: int | None = None,
) -> list[float]:
    """Spec 3: the processor's prompt, the full LM head's yes and no logits, one pair at a
    time; with ``max_length``, the reference's special-keeping truncation."""
    tokenizer = reranker.processor.tokenizer
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    vocab = tokenizer.get_vocab()
    scores = []
    for candidate in candidates:
        query_parts, query_images = _content(query.text, query.image)
        doc_parts, doc_images = _content(candidate.text, candidate.image)
        instruction = query.instruction or (
            "Given a search query, retrieve relevant candidates that answer the query."
        )
        messages = [
            {"role": "system", "content": [{"type": "text", "text": JUDGE}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<Instruct>: " + instruction},
                    {"type": "text", "text": "<Query>:"},
                    *query_parts,
                    {"type": "text", "text": "\n<Document>:"},
                    *doc_parts,
                ],
            },
        ]
        text = reranker.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        inputs = reranker.processor(
            text=[text],
            images=(query_images + doc_images) or None,
            do_resize=False,
            return_tensors="pt",
        )
        ids = inputs["input_ids"][0].tolist()
        if max_length is not None and len(ids) - 5 > max_length:
            head, tail = ids[:-5], ids[-5:]
            room = max_length - sum(token in specials for token in head)
            kept = []
            for token in head:
                if token in specials:
                    kept.append(token)
                elif room > 0:
                    kept.append(token)
                    room -= 1
            ids = kept + tail
        input_ids = torch.tensor([ids])
        image_id, video_id = reranker.processor.image_token_id, reranker.processor.video_token_id
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == image_id).long()
            + 2 * (input_ids == video_id).long(),
        }
        for key in ("pixel_values", "image_grid_thw"):
            if key in inputs:
                batch[key] = inputs[key]
        with torch.inference_mode():
            logits = reranker.model(**batch).logits[0, -1]
        scores.append(torch.sigmoid(logits[vocab["yes"]] - logits[vocab["no"]]).item())
    return scores


RERANK_QUERIES = {
    "text": RerankQuery(text="a red circle", instruction="Find an image."),
    "image": RerankQuery(image=RED, instruction=None),  # the default instruction
    "image+text": RerankQuery(text="same but blue", image=TRANSPARENT, instruction="  verbatim "),
}
RERANK_CANDIDATES = [
    RerankCandidate(text="A red circle."),
    RerankCandidate(image=WIDE),
    RerankCandidate(text="A square", image=RED),
    RerankCandidate(),  # NULL
]


@pytest.mark.parametrize("kind", list(RERANK_QUERIES))
def test_rerank_scores_match_the_reference(reranker: Qwen3VLReranker, kind: str) -> None:
    query = RERANK_QUERIES[kind]
    got = reranker.score(query, RERANK_CANDIDATES)  # one batch, left padded
    expected = _reference_scores(reranker, query, RERANK_CANDIDATES)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5
    assert all(0.0 < s < 1.0 for s in got)


def test_rerank_truncation_keeps_specials_images_and_the_tail(reranker: Qwen3VLReranker) -> None:
    short = Qwen3VLReranker(reranker.loaded, Qwen3VLRerankerConfig(max_length=150))
    query = RerankQuery(text="a red circle", image=RED, instruction="Find it.")
    candidates = [
        RerankCandidate(text="a long document that goes on and on " * 12, image=WIDE),
        RerankCandidate(text="short"),
    ]
    got = short.score(query, candidates)
    expected = _reference_scores(reranker, query, candidates, max_length=150)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5
    # The long document was cut: its score is not the uncut one.
    assert abs(got[0] - reranker.score(query, candidates[:1])[0]) > 1e-6
