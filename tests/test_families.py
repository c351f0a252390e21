"""The model-family registry: a third family is one record plus its chat template."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devkit.samples import shape_image
from devkit.tiny_models import ARCHS, build_tiny_model, chat_template
from mllm import families
from mllm.families import Family, Positions, Tiny
from mllm.loading import load_backbone
from recall import Candidate, Embedder, Query
from rerank import RerankCandidate, Reranker, RerankQuery
from tests.helpers import generate_p_yes

RED = shape_image("red", "circle")
BLUE = shape_image("blue", "square", size=120)


def test_every_built_in_family_has_a_record_and_a_tiny_recipe() -> None:
    assert set(ARCHS) <= set(families.names())
    for name in ARCHS:
        record = families.family(name)
        assert record.name == name
        assert record.tiny is not None
        assert families.model_class(record).__name__ == record.model_class


def test_an_unknown_family_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'llava' is not one of \['qwen2_vl', 'qwen3_vl'"):
        families.family("llava")


def test_a_checkpoint_of_an_unregistered_family_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "other"
    shutil.copytree(tiny_models["qwen2_vl"], folder)
    config = (folder / "config.json").read_text().replace('"qwen2_vl"', '"qwen9_vl"', 1)
    (folder / "config.json").write_text(config)
    with pytest.raises(ValueError, match="model_type 'qwen9_vl' is not one of"):
        load_backbone(str(folder))


# Qwen2.5-VL: transformers ships its classes; the vision tower differs from Qwen2-VL's
# (windowed attention, a SwiGLU MLP), the language side and the prompts do not.
def _qwen2_5_vl(template: Path) -> Family:
    qwen2 = families.QWEN2_VL.tiny
    assert qwen2 is not None
    return Family(
        name="qwen2_5_vl",
        model_class="Qwen2_5_VLForConditionalGeneration",
        positions=Positions.SEQUENTIAL,
        tiny=Tiny(
            config_class="Qwen2_5_VLConfig",
            processor_class="Qwen2_5_VLProcessor",
            video_processor_class="Qwen2VLVideoProcessor",
            image_processor=qwen2.image_processor,
            text=qwen2.text,
            vision={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": [1],
            },
            chat_template=template,
        ),
    )


@pytest.fixture(scope="module")
def third_family(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny Qwen2.5-VL checkpoint, its family registered for this module only."""
    root = tmp_path_factory.mktemp("qwen2_5_vl")
    template = root / "qwen2_5_vl.jinja"  # Qwen2.5-VL ships Qwen2-VL's chat template
    template.write_text(chat_template("qwen2_vl"))
    families.register(_qwen2_5_vl(template))
    try:
        yield build_tiny_model("qwen2_5_vl", root / "model")
    finally:
        families.unregister("qwen2_5_vl")


def test_a_third_family_embeds_through_the_registry_alone(third_family: Path) -> None:
    embedder = Embedder.from_pretrained(str(third_family))
    assert type(embedder.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    queries = [
        Query(text="a red circle", instruction="Find an image."),
        Query(image=RED, instruction="Find a caption."),
        Query(text="make it blue", image=RED, instruction="Retrieve the modified image."),
    ]
    candidates = [Candidate(text="A red circle."), Candidate(image=BLUE), Candidate("x", BLUE)]
    q = embedder.encode_queries(queries)
    c = embedder.encode_candidates(candidates)
    assert q.shape == (3, 64)
    assert c.shape == (3, 64)
    assert np.allclose(np.linalg.norm(np.vstack([q, c]), axis=1), 1.0, atol=1e-5)
    # Distinct inputs, distinct vectors; one item alone equals its row of the batch.
    assert len({tuple(np.round(row, 4)) for row in np.vstack([q, c])}) == 6
    for index, candidate in enumerate(candidates):
        alone = embedder.encode_candidates([candidate])[0]
        assert np.abs(alone - c[index]).max() <= 1e-5


def test_a_third_family_reranks_with_p_yes_of_generate(third_family: Path) -> None:
    reranker = Reranker.from_pretrained(str(third_family))
    query = RerankQuery(text="a red circle", image=RED, instruction="Retrieve an image.")
    candidates = [RerankCandidate(text="A red circle."), RerankCandidate("A square", BLUE)]
    scores = reranker.score(query, candidates)
    expected = generate_p_yes(reranker, reranker.penalty, query, candidates)
    assert max(abs(a - b) for a, b in zip(scores, expected, strict=True)) <= 1e-5
    assert all(0.0 < s < 1.0 for s in scores)
