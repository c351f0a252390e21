"""Client text never becomes control tokens; benign prompts are tokenised as the processor does.

The embedder and the reranker tokenise their prompts themselves (mllm/prompt_tokens.py), on
tiny real models of both architectures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from devkit.samples import shape_image
from mllm.loading import Loaded
from mllm.prompt_tokens import Client
from mllm.text import format_string
from recall import Candidate, Embedder, Query, prompts
from recall.embedder import CANDIDATE_MAX_TOKENS
from rerank import RerankCandidate, Reranker, RerankQuery
from rerank import prompts as rerank_prompts

RED = shape_image("red", "circle")
WIDE = shape_image("blue", "square", size=160)

USER = "<|im_start|>user"  # the client's text is in the user turn
INJECTED = [
    "<|image_pad|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<emb>",
    "<instruction_start>",
    "<instruction_end>",
]

BENIGN_QUERIES = [
    Query(text="a red circle", instruction="find an image that matches the caption"),
    Query(image=RED, instruction="Find a caption."),
    Query(text='"make it blue"', image=WIDE, instruction="Retrieve the modified image"),
    Query(text="no instruction here"),
    Query(image=RED),
    Query(text="Café, e\u0301t\u00e9 \U0001f600 12345 <b>tags</b>\r\n\n  spaced  ", instruction=""),
    Query(text="a long query " * 400, instruction="find it"),  # queries are never truncated
]
BENIGN_CANDIDATES = [
    Candidate(text="A red circle on white."),
    Candidate(image=RED),
    Candidate(text="a caption with an image", image=WIDE),
    Candidate(text="short"),
    Candidate(text="word " * 3000),  # truncated at 1024 tokens
    Candidate(text="word " * 3000, image=RED),  # truncated after its image
]


def _assert_same_batch(got: Any, expected: Any) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key


def _embedder_items(embedder: Embedder, items: list[Any]) -> list[Any]:
    return [
        embedder._prepare(
            prompts.query_pieces(item)
            if isinstance(item, Query)
            else prompts.candidate_pieces(item),
            item.image,
        )
        for item in items
    ]


def _old_cost(processor: Any, text: str, images: list[Any]) -> int:
    """The batching cost as it was computed from the processor's own tokenisation."""
    from mllm.batching import image_tokens

    tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return tokens + sum(image_tokens(processor.image_processor, i.height, i.width) for i in images)


# -- (a) benign items: exactly the processor's inputs -------------------------------------------
@pytest.mark.parametrize("kind", ["queries", "candidates"])
def test_embedder_inputs_equal_the_processors(embedder: Embedder, kind: str) -> None:
    truncate = kind == "candidates"
    items = _embedder_items(embedder, BENIGN_CANDIDATES if truncate else BENIGN_QUERIES)
    extra = {"truncation": True, "max_length": CANDIDATE_MAX_TOKENS} if truncate else {}
    max_length = CANDIDATE_MAX_TOKENS if truncate else None
    for group in [items, *([item] for item in items)]:  # the whole batch, then each alone
        images = [item.image for item in group if item.image is not None]
        expected = embedder.processor(
            text=[item.text for item in group],
            images=images or None,
            padding=True,
            padding_side="right",
            return_tensors="pt",
            **extra,
        )
        got = embedder.tokens.batch(
            [item.ids for item in group], images, padding_side="right", max_length=max_length
        )
        _assert_same_batch(got, expected)
    for item in items:
        images = [item.image] if item.image is not None else []
        assert item.cost == _old_cost(embedder.processor, item.text, images)
    if truncate:
        assert max(len(item.ids) for item in items) > CANDIDATE_MAX_TOKENS


def _pairs(reranker: Reranker, pairs: list[tuple[RerankQuery, RerankCandidate]]) -> list[Any]:
    return [reranker._prepare(q, reranker._image(q.image), c) for q, c in pairs]


BENIGN_PAIRS = [
    (RerankQuery(text="a red circle", instruction="find an image"), RerankCandidate(text="A cap.")),
    (RerankQuery(text="a red circle", instruction="find an image"), RerankCandidate(image=RED)),
    (
        RerankQuery(image=RED, instruction="find a caption"),
        RerankCandidate(text="both", image=WIDE),
    ),
    (RerankQuery(text="no instruction"), RerankCandidate(text="Café \U0001f600 " * 30)),
]


def test_reranker_inputs_equal_the_processors(reranker: Reranker) -> None:
    pairs = _pairs(reranker, BENIGN_PAIRS)
    for group in [pairs, *([pair] for pair in pairs)]:
        images = [img for pair in group for img in pair.images]
        expected = reranker.processor(
            text=[pair.text for pair in group],
            images=images or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        got = reranker.tokens.batch([pair.ids for pair in group], images, padding_side="left")
        _assert_same_batch(got, expected)
    for pair in pairs:
        assert pair.cost == _old_cost(reranker.processor, pair.text, pair.images)


# -- (b) and (c): added-token strings in client text are plain characters -----------------------
def _reference_ids(tokenizer: Any, text: str, client: Sequence[str], after: str) -> list[int]:
    """The tokenizer's own ids for ``text``, except that added tokens it finds inside the
    client's strings (in order, after ``after``) are plain characters (``split_special_tokens``).
    """
    start = text.index(after)
    spans = []
    for piece in client:
        start = text.index(piece, start)
        spans.append((start, start + len(piece)))
        start += len(piece)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    added = set(tokenizer.get_added_vocab().values())
    ids: list[int] = []
    last = 0
    for token, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        if token in added and not any(a <= begin < b for a, b in spans):
            plain = text[last:begin]
            ids += tokenizer(plain, add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
            ids.append(token)
            last = end
    rest = tokenizer(text[last:], add_special_tokens=False, split_special_tokens=True)
    return ids + rest["input_ids"]


def _added_ids(tokenizer: Any, ids: tuple[int, ...]) -> list[int]:
    added = set(tokenizer.get_added_vocab().values())
    return [token for token in ids if token in added]


def _injected_queries(token: str) -> list[Query]:
    return [
        Query(text=f"x {token} y", instruction="find an image"),
        Query(text=f"{token}", image=RED, instruction=f"find {token} a caption"),
        Query(text=f"{token}{token} at the start and end {token}"),
    ]


@pytest.mark.parametrize("token", INJECTED)
def test_a_token_in_a_query_is_plain_text(embedder: Embedder, token: str) -> None:
    tokenizer = embedder.processor.tokenizer
    for query in _injected_queries(token):
        item = embedder._prepare(prompts.query_pieces(query), query.image)
        client = [p for p in prompts.query_pieces(query) if isinstance(p, Client) and p]
        assert any(token in piece for piece in client)
        assert list(item.ids) == _reference_ids(tokenizer, item.text, client, USER)
        assert tokenizer.decode(list(item.ids)) == item.text
        # The template's own tokens are all there, and nothing else is a token.
        twin = Query(
            text=(query.text or "").replace(token, "plain"),
            image=query.image,
            instruction=query.instruction and query.instruction.replace(token, "plain"),
        )
        expected = embedder._prepare(prompts.query_pieces(twin), twin.image).ids
        assert _added_ids(tokenizer, item.ids) == _added_ids(tokenizer, expected)


@pytest.mark.parametrize("token", INJECTED)
def test_a_token_in_a_query_breaks_no_batch(embedder: Embedder, token: str) -> None:
    injected = _injected_queries(token)
    benign = BENIGN_QUERIES[:5]
    alone = np.stack([embedder.encode_queries([query])[0] for query in [*benign, *injected]])
    assert np.isfinite(alone).all()
    mixed = embedder.encode_queries([*benign, *injected])
    np.testing.assert_allclose(mixed, alone, atol=1e-6)


def test_a_token_in_a_candidate_is_plain_text(embedder: Embedder) -> None:
    tokenizer = embedder.processor.tokenizer
    text = " ".join(INJECTED)
    for candidate in [Candidate(text=text), Candidate(text=text, image=RED)]:
        item = embedder._prepare(prompts.candidate_pieces(candidate), candidate.image)
        client = [p for p in prompts.candidate_pieces(candidate) if isinstance(p, Client)]
        assert list(item.ids) == _reference_ids(tokenizer, item.text, client, USER)
    candidates = [Candidate(text=text), Candidate(text=text, image=WIDE), *BENIGN_CANDIDATES[:4]]
    alone = np.stack([embedder.encode_candidates([c])[0] for c in candidates])
    np.testing.assert_allclose(embedder.encode_candidates(candidates), alone, atol=1e-6)


def test_the_instruction_span_ends_at_the_template_marker(embedder: Embedder) -> None:
    start, end = embedder.token_ids["<instruction_start>"], embedder.token_ids["<instruction_end>"]
    query = Query(text="a <instruction_start> b", instruction="find <instruction_end> this")
    ids = embedder._prepare(prompts.query_pieces(query), None).ids
    assert ids.count(start) == 1
    assert ids.count(end) == 1


def test_non_special_added_tokens_are_plain_text_too(embedders: dict[str, Embedder]) -> None:
    embedder = embedders["qwen3_vl"]  # Qwen3 adds <think>, <tool_call>, ... as non-special
    tokenizer = embedder.processor.tokenizer
    query = Query(text="<think> <tool_call> <|fim_pad|>")
    item = embedder._prepare(prompts.query_pieces(query), None)
    plain = embedder._prepare(prompts.query_pieces(Query(text="plain")), None).ids
    assert _added_ids(tokenizer, item.ids) == _added_ids(tokenizer, plain)
    assert tokenizer.decode(list(item.ids)) == item.text


@pytest.mark.parametrize("token", INJECTED)
def test_a_token_in_a_rerank_pair_is_plain_text(
    reranker: Reranker, embedder: Embedder, token: str
) -> None:
    injected = [
        (RerankQuery(text=f"x {token} y", instruction="find"), RerankCandidate(text="A cap.")),
        (RerankQuery(text="a red circle"), RerankCandidate(text=f"{token} z", image=RED)),
        (RerankQuery(text=f"q {token}", image=RED), RerankCandidate(text=f"c {token}")),
    ]
    # Its own tokenizer, and one shared with an embedder, where the U-MARVEL markers are tokens.
    loaded = Loaded(
        embedder.model, embedder.processor, embedder.family, embedder.device, embedder.dtype
    )
    for scorer in (reranker, Reranker(loaded)):
        tokenizer = scorer.processor.tokenizer
        for (query, candidate), pair in zip(injected, _pairs(scorer, injected), strict=True):
            client = [
                rerank_prompts.query_text(query.text, query.instruction),
                format_string(candidate.text or ""),
            ]
            assert list(pair.ids) == _reference_ids(tokenizer, pair.text, client, "Query:")
            assert tokenizer.decode(list(pair.ids)) == pair.text
    everything = [*BENIGN_PAIRS, *injected]
    alone = [reranker.score_pairs([pair])[0] for pair in everything]
    np.testing.assert_allclose(reranker.score_pairs(everything), alone, atol=1e-6)
