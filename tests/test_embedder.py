"""The U-MARVEL embedder on tiny random models of both architectures (SPEC sections 1-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from devkit.samples import shape_image
from mllm.families import TokenRows
from recall import Candidate, Embedder, Query, prompts
from tests.helpers import InFlight

RED = shape_image("red", "circle")
WIDE = shape_image("blue", "square", size=160)

QUERIES = [
    Query(text="a red circle", instruction="find an image that matches the caption"),
    Query(image=RED, instruction="Find a caption."),
    Query(text="make it blue", image=WIDE, instruction="Retrieve the modified image"),
    Query(text="no instruction here"),
    Query(image=RED),
]
CANDIDATES = [
    Candidate(text="A red circle on white."),
    Candidate(image=RED),
    Candidate(text="a much longer candidate text that pads the others " * 3, image=WIDE),
    Candidate(text="short"),
]


def test_special_tokens_take_the_next_ids(embedder: Embedder) -> None:
    tokenizer = embedder.processor.tokenizer
    n = tokenizer.convert_tokens_to_ids("<emb>")
    assert embedder.token_ids == {
        "<emb>": n,
        "<instruction_start>": n + 1,
        "<instruction_end>": n + 2,
    }
    assert len(tokenizer) == n + 3
    # The model's table is never resized: it stays larger than the tokenizer.
    assert embedder.model.get_input_embeddings().weight.shape[0] > n + 3


def test_marker_rows(embedder: Embedder, tiny_models: dict[str, Path], arch: str) -> None:
    from safetensors.torch import load_file

    saved = load_file(tiny_models[arch] / "model.safetensors")
    checkpoint = next(v for k, v in saved.items() if k.endswith("embed_tokens.weight"))
    table = embedder.model.get_input_embeddings().weight.detach()
    n = embedder.token_ids["<emb>"]
    assert torch.equal(table[n], checkpoint[n])
    if embedder.family.token_rows is TokenRows.MEAN:  # Qwen3-VL
        mean = checkpoint[: n + 1].float().mean(dim=0)
        assert torch.allclose(table[n + 1], mean)
        assert torch.allclose(table[n + 2], mean)
        assert not torch.allclose(table[n + 1], checkpoint[n + 1])
    else:  # Qwen2-VL keeps the checkpoint's rows
        assert torch.equal(table[n + 1 : n + 3], checkpoint[n + 1 : n + 3])


def test_shapes_and_normalisation(embedder: Embedder) -> None:
    q = embedder.encode_queries(QUERIES)
    c = embedder.encode_candidates(CANDIDATES)
    assert q.shape == (len(QUERIES), embedder.dim)
    assert q.dtype == np.float32
    assert c.shape == (len(CANDIDATES), embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)


def test_same_alone_and_in_a_padded_batch(embedder: Embedder) -> None:
    batch_q = embedder.encode_queries(QUERIES)
    batch_c = embedder.encode_candidates(CANDIDATES)
    alone_q = np.stack([embedder.encode_queries([q])[0] for q in QUERIES])
    alone_c = np.stack([embedder.encode_candidates([c])[0] for c in CANDIDATES])
    assert np.abs(batch_q - alone_q).max() <= 1e-5
    assert np.abs(batch_c - alone_c).max() <= 1e-5
    # Another batch composition and order gives the same vectors too.
    reversed_c = embedder.encode_candidates(CANDIDATES[::-1])[::-1]
    assert np.abs(reversed_c - batch_c).max() <= 1e-5


def _batch(embedder: Embedder, texts: list[str]):
    return embedder.processor(
        text=texts, padding=True, padding_side="right", return_tensors="pt"
    ).to(embedder.device)


def test_attention_is_bidirectional(embedder: Embedder) -> None:
    text = embedder._prepare(prompts.candidate_text(Candidate(text="a red circle")), None).text
    batch = _batch(embedder, [text])
    with torch.inference_mode():
        before = embedder._hidden_states(batch)
        changed = dict(batch)
        ids = batch["input_ids"].clone()
        ids[0, -3] = (ids[0, -3] + 1) % 256  # a late token
        changed["input_ids"] = ids
        after = embedder._hidden_states(changed)
    # The first token sees the change: attention is not causal.
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-4


def test_instruction_span_is_attended_but_not_pooled(embedder: Embedder) -> None:
    query = Query(text="a red circle", instruction="find an image")
    text = embedder._prepare(prompts.query_text(query), None).text
    batch = _batch(embedder, [text])
    ids = batch["input_ids"][0].tolist()
    start = ids.index(embedder.token_ids["<instruction_start>"])
    end = ids.index(embedder.token_ids["<instruction_end>"])
    with torch.inference_mode():
        hidden = embedder._hidden_states(batch)[0]
    keep = [i for i in range(len(ids)) if not start <= i <= end]
    expected = torch.nn.functional.normalize(hidden[keep].mean(dim=0), dim=-1).numpy()
    np.testing.assert_allclose(embedder.encode_queries([query])[0], expected, atol=1e-5)
    # Another instruction changes the embedding, only through attention.
    other = embedder.encode_queries([Query(text="a red circle", instruction="find a poem")])[0]
    assert np.abs(other - expected).max() > 1e-4


QWEN2_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n"
IT_SUFFIX = "\nSummarize above image and sentence in one word: "
T_SUFFIX = "\nSummarize above sentence in one word: "

GOLDEN_USER_TURNS = [
    (
        Query(text="a red circle", instruction="find an image"),
        "<instruction_start>Find an image.<instruction_end> a red circle." + T_SUFFIX,
    ),
    (
        Query(image=RED, instruction="find a caption"),
        VISION + "<instruction_start>Find a caption.<instruction_end>." + IT_SUFFIX,
    ),
    (
        Query(text='"make it blue"', image=RED, instruction="Retrieve an image."),
        # The outer normalisation strips only the trailing quote, as the original did.
        VISION
        + '<instruction_start>Retrieve an image.<instruction_end> "make it blue.'
        + IT_SUFFIX,
    ),
    (Query(text="plain query"), "Plain query." + T_SUFFIX),
    (Candidate(text="a caption"), "A caption." + T_SUFFIX),
    (Candidate(image=RED), VISION + IT_SUFFIX),
    (Candidate(text="a caption", image=RED), VISION + "A caption." + IT_SUFFIX),
]


@pytest.mark.parametrize(("item", "user_turn"), GOLDEN_USER_TURNS)
def test_rendered_prompts(embedder: Embedder, arch: str, item: object, user_turn: str) -> None:
    text = prompts.query_text(item) if isinstance(item, Query) else prompts.candidate_text(item)
    rendered = embedder._prepare(text, item.image).text
    system = QWEN2_SYSTEM if arch == "qwen2_vl" else ""
    assert rendered == f"{system}<|im_start|>user\n{user_turn}{TAIL}"


def test_image_only_candidate_suffix_setting() -> None:
    assert prompts.candidate_text(Candidate(image=RED)) == IT_SUFFIX
    only = prompts.candidate_text(Candidate(image=RED), image_only_suffix=True)
    assert only == "\nSummarize above image in one word: "


def test_candidates_are_truncated_at_1024_tokens(embedder: Embedder) -> None:
    long_text = "word " * 3000
    vector = embedder.encode_candidates([Candidate(text=long_text)])
    assert np.isfinite(vector).all()
    # Truncation from the right: a change after token 1024 does not change the embedding.
    other = embedder.encode_candidates([Candidate(text=long_text + " extra words")])
    np.testing.assert_allclose(vector, other, atol=1e-6)


def test_an_empty_item_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs text, an image"):
        _ = Query(text="  ").modality


@pytest.mark.parametrize("calls", [1, 3])
def test_concurrent_callers_get_the_same_vectors(
    embedder: Embedder, tiny_models: dict[str, Path], arch: str, calls: int
) -> None:
    """Up to ``concurrent_calls`` callers run at once on one model, images included, and
    each gets the vectors it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from recall.embedder import EmbedderConfig

    shared = Embedder.from_pretrained(
        str(tiny_models[arch]), config=EmbedderConfig(concurrent_calls=calls)
    )
    groups = [
        [CANDIDATES[i % 4], Candidate(text="a much longer text " * (i + 2))] for i in range(6)
    ]
    expected = [embedder.encode_candidates(group) for group in groups]
    counted = shared._forward = InFlight(shared._forward)  # type: ignore[method-assign]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(shared.encode_candidates, groups * 3))
    for index, vectors in enumerate(got):
        np.testing.assert_allclose(vectors, expected[index % len(groups)], atol=1e-5)
    assert counted.most == calls


def test_carriage_returns_inside_a_query_are_removed(embedder: Embedder) -> None:
    crlf = Query(text="line one\r\nline two", instruction="find an image")
    lf = Query(text="line one\nline two", instruction="find an image")
    rendered = embedder._prepare(prompts.query_pieces(crlf), None).text
    assert "\r" not in rendered
    assert rendered == embedder._prepare(prompts.query_pieces(lf), None).text
    np.testing.assert_allclose(
        embedder.encode_queries([crlf]), embedder.encode_queries([lf]), atol=1e-6
    )
