"""The pointwise reranker against generate()'s first step, and score fusion (SPEC section 7)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from devkit.samples import shape_image
from rerank import RerankCandidate, Reranker, RerankerConfig, RerankQuery, fuse
from rerank.prompts import RERANK_INSTRUCTION
from tests.helpers import InFlight, generate_p_yes

RED = shape_image("red", "circle")
BLUE = shape_image("blue", "square")
QUERY = RerankQuery(text="a red circle", instruction="find an image")
CANDIDATES = [
    RerankCandidate(text="A red circle."),
    RerankCandidate(image=RED),
    RerankCandidate(text="a blue square with a long caption that needs padding", image=BLUE),
]


def test_instruction_text_is_exact() -> None:
    assert "candidate" + " " * 24 + "meets" in RERANK_INSTRUCTION
    assert "responed with 'No'." in RERANK_INSTRUCTION
    assert RERANK_INSTRUCTION.startswith("I will provide you with a query and a candidate.")


GOLDEN = [
    (
        QUERY,
        RerankCandidate(text="a caption"),
        "Query:Find an image. a red circle.Candidate:A caption.",
    ),
    (
        RerankQuery(image=RED, instruction="find a caption"),
        RerankCandidate(text="a caption"),
        "Query:<|vision_start|><|image_pad|><|vision_end|>Find a caption.Candidate:A caption.",
    ),
    (
        RerankQuery(text="same but blue", image=RED, instruction="Retrieve an image."),
        RerankCandidate(image=BLUE),
        "Query:<|vision_start|><|image_pad|><|vision_end|>Retrieve an image. same but blue."
        "Candidate:<|vision_start|><|image_pad|><|vision_end|>",
    ),
    (
        RerankQuery(text="no instruction"),
        RerankCandidate(text="both", image=BLUE),
        "Query:No instruction.Candidate:<|vision_start|><|image_pad|><|vision_end|>Both.",
    ),
]


@pytest.mark.parametrize(("query", "candidate", "body"), GOLDEN)
def test_rendered_prompts(
    reranker: Reranker, arch: str, query: RerankQuery, candidate: RerankCandidate, body: str
) -> None:
    rendered = reranker._prepare(query, reranker._image(query.image), candidate).text
    system = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if arch == "qwen2_vl" else ""
    )
    expected = (
        f"{system}<|im_start|>user\n{RERANK_INSTRUCTION}{body}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendered == expected


@pytest.mark.parametrize("penalty", [1.0, 1.05])
def test_p_yes_equals_generate_first_step(
    tiny_models: dict[str, Path], arch: str, penalty: float
) -> None:
    reranker = Reranker.from_pretrained(str(tiny_models[arch]))
    reranker.penalty = penalty  # the value the setting would take from the generation config
    expected = generate_p_yes(reranker, penalty, QUERY, CANDIDATES)
    got = reranker.score(QUERY, CANDIDATES)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5


# Queries and candidates of each modality. Candidate texts that begin alike make the
# shared prefix run past "Candidate:"; several images make it stop before the first
# candidate image.
MODAL_QUERIES = {
    "text": RerankQuery(text="a red circle", instruction="find an image"),
    "image": RerankQuery(image=RED, instruction="find a caption"),
    "image+text": RerankQuery(text="but blue", image=RED, instruction="Retrieve an image."),
}
MODAL_CANDIDATES = {
    "text": [RerankCandidate(text="A red circle."), RerankCandidate(text="A blue square, long")],
    "image": [RerankCandidate(image=BLUE), RerankCandidate(image=shape_image("green", "circle"))],
    "image+text": [
        RerankCandidate(text="A square", image=BLUE),
        RerankCandidate(text="A red circle on white", image=RED),
    ],
}


@pytest.mark.parametrize("query_kind", list(MODAL_QUERIES))
def test_shared_prefix_scores_equal_unshared_and_generate(
    tiny_models: dict[str, Path], arch: str, query_kind: str
) -> None:
    """All 9 modality pairs: the shared-prefix scores are the unshared forward's and
    generate()'s first step's, for groups of one candidate modality and mixed ones."""
    path = str(tiny_models[arch])
    shared = Reranker.from_pretrained(path)
    unshared = Reranker.from_pretrained(path, config=RerankerConfig(shared_prefix=False))
    query = MODAL_QUERIES[query_kind]
    mixed = [c for group in MODAL_CANDIDATES.values() for c in group]
    for candidates in [*MODAL_CANDIDATES.values(), mixed]:
        got = shared.score(query, candidates)
        plain = unshared.score(query, candidates)
        expected = generate_p_yes(shared, shared.penalty, query, candidates)
        assert max(abs(a - b) for a, b in zip(got, plain, strict=True)) <= 1e-5
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5
        # A random model's P(Yes) can sit near 1, where it hides small errors: the log-odds
        # (the Yes - No logit margin) must agree too.
        margin = max(abs(_log_odds(a) - _log_odds(b)) for a, b in zip(got, plain, strict=True))
        assert margin <= 1e-4
    # The scores depend on the candidate: sharing did not hand every pair the same answer.
    assert len({round(p, 6) for p in shared.score(query, mixed)}) > 1


def test_a_video_candidate_is_scored_from_its_frames(
    tiny_models: dict[str, Path], arch: str
) -> None:
    """A candidate video reaches the reranker as its sampled frames through the video input:
    on Qwen2-VL the score is generate()'s first step over the processor's own expansion; on
    both it is the same alone, in a batch, and beside pairs that share their prefix."""
    from devkit.clips import make_clip

    reranker = Reranker.from_pretrained(str(tiny_models[arch]))
    clip = make_clip(64, 48, 8, 4)
    query = MODAL_QUERIES["text"]
    candidates = [
        RerankCandidate(text="a moving square", video=clip),
        *MODAL_CANDIDATES["text"],
        RerankCandidate(video=make_clip(80, 48, 12, 4)),
    ]
    got = reranker.score(query, candidates)
    alone = [reranker.score(query, [c])[0] for c in candidates]
    assert max(abs(a - b) for a, b in zip(got, alone, strict=True)) <= 1e-5
    assert got[0] != pytest.approx(got[3], abs=1e-4)  # the frames matter
    if arch == "qwen2_vl":  # Qwen3-VL's processor places timestamps otherwise (see mllm)
        expected = generate_p_yes(reranker, reranker.penalty, query, candidates)
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5
    with pytest.raises(ValueError, match="an image or a video, not both"):
        reranker.score(query, [RerankCandidate(image=RED, video=clip)])


def _log_odds(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_shared_prefix_covers_the_query_and_no_candidate_image(reranker: Reranker) -> None:
    from rerank.reranker import shared_prefix_length

    image_id = reranker.tokens.image_id
    query = MODAL_QUERIES["image+text"]
    image = reranker._image(query.image)
    pairs = [reranker._prepare(query, image, c) for c in MODAL_CANDIDATES["image"]]
    split = shared_prefix_length(pairs, image_id)
    head = pairs[0].ids[:split]
    assert head.count(image_id) == 1  # the query's image, not the candidates' alike ones
    assert pairs[0].ids[split] == image_id
    texts = [reranker._prepare(query, image, c) for c in MODAL_CANDIDATES["text"]]
    split = shared_prefix_length(texts, image_id)
    # "A red ..." and "A blue ...": the shared ids run past "Candidate:" into the texts.
    shared_text = reranker.processor.tokenizer.decode(texts[0].ids[:split]).split("Candidate:")
    assert len(shared_text) == 2
    assert shared_text[1].startswith("A")
    assert all(c.text.startswith(shared_text[1]) for c in MODAL_CANDIDATES["text"] if c.text)
    assert shared_prefix_length(texts[:1], image_id) == len(texts[0].ids) - 1


def test_penalty_comes_from_the_generation_config(tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models["qwen2_vl"])
    assert Reranker.from_pretrained(path).penalty == pytest.approx(1.05)
    off = Reranker.from_pretrained(path, config=RerankerConfig(repetition_penalty=False))
    assert off.penalty == 1.0


def test_same_alone_and_in_a_batch(reranker: Reranker) -> None:
    batch = reranker.score(QUERY, CANDIDATES)
    alone = [reranker.score(QUERY, [c])[0] for c in CANDIDATES]
    assert max(abs(a - b) for a, b in zip(batch, alone, strict=True)) <= 1e-5
    assert all(0.0 < p < 1.0 for p in batch)


@pytest.mark.parametrize("calls", [1, 3])
def test_concurrent_callers_get_the_same_scores(
    reranker: Reranker, tiny_models: dict[str, Path], arch: str, calls: int
) -> None:
    """Up to ``concurrent_calls`` callers score at once on one model (shared prefixes and
    images included), each getting the scores it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    shared = Reranker.from_pretrained(
        str(tiny_models[arch]), config=RerankerConfig(concurrent_calls=calls)
    )
    queries = [QUERY, RerankQuery(image=RED, instruction="find a caption"), RerankQuery("blue")]
    groups = [(queries[i % 3], CANDIDATES[i % 2 :]) for i in range(6)]
    expected = [reranker.score(query, candidates) for query, candidates in groups]
    counted = shared._score_pairs = InFlight(shared._score_pairs)  # type: ignore[method-assign]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda group: shared.score(*group), groups * 3))
    for index, scores in enumerate(got):
        assert scores == pytest.approx(expected[index % len(groups)], abs=1e-5)
    assert counted.most == calls


def test_fusion_orders_by_fused_score_with_deterministic_ties() -> None:
    hits = fuse(["a", "b", "c", "d"], [0.9, 0.8, 0.8, 0.5], [0.0, 1.0, 1.0, 0.2], weight=0.5)
    assert [h.document_id for h in hits] == ["b", "c", "a", "d"]
    assert hits[0].score == pytest.approx(1.3)
    assert (hits[0].cosine, hits[0].p_yes) == (0.8, 1.0)
    # Equal fused scores: the higher cosine first, then the smaller id.
    tied = fuse(["z", "y", "x"], [0.5, 0.6, 0.5], [0.2, 0.0, 0.2], weight=0.5)
    assert [h.document_id for h in tied] == ["y", "x", "z"]
    with pytest.raises(ValueError, match="same length"):
        fuse(["a"], [0.1, 0.2], [0.3], 0.1)


def test_a_lora_adapter_is_applied_and_merged(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base_path = str(tiny_models["qwen3_vl"])
    base = Reranker.from_pretrained(base_path)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(Reranker.from_pretrained(base_path).model, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    # Reference: the unmerged PEFT model computes the adapted scores.
    reference = Reranker.from_pretrained(base_path)
    reference.model = peft_model.eval()
    expected = reference.score(QUERY, CANDIDATES)

    adapted = Reranker.from_pretrained(str(tmp_path / "adapter"), base_model=base_path)
    got = adapted.score(QUERY, CANDIDATES)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5
    assert max(abs(a - b) for a, b in zip(got, base.score(QUERY, CANDIDATES), strict=True)) > 1e-4
    assert "lora" not in type(adapted.model).__name__.lower()  # merged into plain weights
