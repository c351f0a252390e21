"""Recall and rerank methods chosen by model spec: a collection on Qwen3-VL-Embedding at a
Matryoshka size, answered with Qwen3-VL-Reranker's score, and a reindex from one recall
method to the other, all through the API and the query steps in process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from core.errors import InvalidRequest
from core.settings import Settings
from devkit.samples import b64, shape_image
from recall.index import milvus_name
from recall.methods import Spec, parse_spec
from rerank.methods import parse_spec as parse_rerank_spec
from tests.helpers import make_key, run_entries
from workers.queries import recall_step, rerank_step
from workers.runtime import Runtime

RED = b64(shape_image("red", "circle"))
DOCS = [
    {"id": "text", "text": "a red circle"},
    {"id": "image", "image": RED},
    {"id": "both", "text": "a blue square", "image": b64(shape_image("blue", "square"))},
]


def test_specs_name_a_method_a_checkpoint_and_a_dimension() -> None:
    assert parse_spec("TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct") == Spec(
        "u-marvel", "TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct"
    )
    assert parse_spec("qwen3-vl-embedding:Qwen/Qwen3-VL-Embedding-2B#1024") == Spec(
        "qwen3-vl-embedding", "Qwen/Qwen3-VL-Embedding-2B", 1024
    )
    assert parse_spec("/models/umarvel").method == "u-marvel"
    with pytest.raises(InvalidRequest, match="u-marvel vectors have a fixed dimension"):
        parse_spec("/models/umarvel#512")
    with pytest.raises(InvalidRequest, match="method 'clip' is not one of"):
        parse_spec("clip:openai/clip")
    assert parse_rerank_spec("Qwen/Qwen3-VL-4B-Instruct") == ("p-yes", "Qwen/Qwen3-VL-4B-Instruct")
    assert parse_rerank_spec("qwen3-vl-reranker:/m/r") == ("qwen3-vl-reranker", "/m/r")


@pytest.fixture
def env(
    migrated_url: str, redis_url: str, tmp_path: Path, tiny_models: dict[str, Path], milvus_uri: str
) -> Iterator[tuple[FlaskClient, Runtime, str]]:
    tiny = str(tiny_models["qwen3_vl"])
    spec = f"qwen3-vl-embedding:{tiny}#32"
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        milvus_uri=milvus_uri,
        milvus_prefix=f"m{uuid.uuid4().hex[:6]}_",
        recall_model=tiny,  # U-MARVEL
        allowed_recall_models=[spec],
        rerank_model=f"qwen3-vl-reranker:{tiny}",
        device="cpu",
        query_wait_seconds=0,
        model_runners=1,
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    rt = Runtime(settings)
    yield client, rt, spec
    rt.index.close()


def _dimension(rt: Runtime, storage: str, generation: int) -> int:
    name = milvus_name(rt.settings.milvus_prefix, storage, generation)
    fields = rt.index.client.describe_collection(name)["fields"]
    return next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")


def _answer(client: FlaskClient, rt: Runtime, body: dict) -> dict:
    job = client.post("/v1/collections/q3/queries", json={"top_k": 3, "wait": 0, **body}).json
    recall_step(rt, job["id"])
    rerank_step(rt, job["id"])
    answer = client.get(f"/v1/queries/{job['id']}").json
    assert answer["status"] == "done", answer
    return answer


def test_a_collection_on_another_method_at_a_matryoshka_size(
    env: tuple[FlaskClient, Runtime, str],
) -> None:
    client, rt, spec = env
    created = client.post("/v1/collections", json={"name": "q3", "recall_model": spec})
    assert created.status_code == 201, created.json
    accepted = client.post("/v1/collections/q3/documents", json={"documents": DOCS}).json
    run_entries(rt, accepted["id"])
    collection = client.get("/v1/collections/q3").json
    assert collection["documents"]["indexed"] == 3
    storage = collection["milvus_collection"].removeprefix(rt.settings.milvus_prefix)
    storage = storage.rsplit("_g", 1)[0]
    assert _dimension(rt, storage, 1) == 32

    weight = collection["rerank"]["weight"]
    for body in ({"text": "a red circle"}, {"image": RED}, {"text": "but blue", "image": RED}):
        answer = _answer(client, rt, body)
        assert {hit["document_id"] for hit in answer["results"]} == {"text", "image", "both"}
        for hit in answer["results"]:
            assert 0.0 < hit["p_yes"] < 1.0  # Qwen3-VL-Reranker's sigmoid(yes - no)
            assert hit["score"] == pytest.approx(hit["cosine"] + weight * hit["p_yes"], abs=1e-6)

    # Back to U-MARVEL at its full size, served throughout.
    job = client.post("/v1/collections/q3/reindex", json={"recall_model": rt.settings.recall_model})
    assert job.status_code == 202, job.json
    run_entries(rt, job.json["id"])  # the plan
    assert len(_answer(client, rt, {"text": "a red circle"})["results"]) == 3  # still gen 1
    run_entries(rt, job.json["id"])  # the chunks
    after = client.get("/v1/collections/q3").json
    assert (after["generation"], after["recall_model"]) == (2, rt.settings.recall_model)
    assert _dimension(rt, storage, 2) == 64
    assert len(_answer(client, rt, {"text": "a red circle"})["results"]) == 3
