"""Searching videos in process: text -> video with U-MARVEL's video prompt by default, video
-> video and video -> text, each video found once at its best segment, with its time span;
bad query videos refused before anything is stored."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from devkit.clips import make_clip
from devkit.samples import b64
from media.kinds import VIDEO
from media.store import media_key
from recall.prompts import VIDEO_INSTRUCTION, Candidate, Query
from tests.helpers import error, ingest_in_process
from workers.queries import recall_step
from workers.runtime import Runtime

LONG = make_clip(64, 48, 70, 1)  # 70 s at 1 frame a second: segments at 0, 15, 30 and 40 s
SHORT = make_clip(80, 48, 12, 4, codec="libvpx-vp9", container="webm")
BARE = make_clip(64, 64, 8, 2)
CAPTION = "a yellow square crossing a blue screen"


def _search(client: FlaskClient, rt: Runtime, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    body = {"top_k": 10, "wait": 0, **body}
    response = client.post("/v1/collections/docs/queries", json=body, **kw)
    assert response.status_code == 202, response.json
    job = response.json
    recall_step(rt, job["id"])
    answer = client.get(job["url"]).json
    assert answer.get("status") == "done", answer
    return answer


def _segments(rt: Runtime, client: FlaskClient, document: str) -> dict[tuple[float, float], Any]:
    name = client.get("/v1/collections/docs").json["milvus_collection"]
    rows = rt.index.client.query(
        name,
        filter=f'_document == "{document}"',
        output_fields=["vector", "_start", "_end"],
        consistency_level="Strong",
    )
    return {(r["_start"], r["_end"]): np.asarray(r["vector"], np.float32) for r in rows}


@pytest.fixture
def videos(pipeline_env: tuple[FlaskClient, Runtime]) -> tuple[FlaskClient, Runtime]:
    client, rt = pipeline_env
    docs = [
        {"id": "long", "text": CAPTION, "media": [{"kind": "video", "data": b64(LONG)}]},
        {"id": "short", "text": "a clip", "media": [{"kind": "video", "data": b64(SHORT)}]},
        {"id": "bare", "media": [{"kind": "video", "data": b64(BARE)}]},
        {"id": "caption", "text": CAPTION},
    ]
    ingest_in_process(client, rt, docs)
    return client, rt


def test_text_finds_videos_once_each_at_their_best_segment_in_the_video_prompt(
    videos: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = videos
    off = {"enabled": False}
    answer = _search(client, rt, {"text": CAPTION, "candidates": "video", "rerank": off})
    results = {hit["document_id"]: hit for hit in answer["results"]}
    assert len(answer["results"]) == len(results) == 4  # each video once
    assert "segment" not in results["caption"]
    assert results["short"]["segment"] == {"start": 0.0, "end": 3.0}
    # The query was embedded as MSR-VTT's captions were, with its instruction.
    embedder = rt.embedder(rt.settings.recall_model)
    query = Query(text=CAPTION, instruction=VIDEO_INSTRUCTION, protocol="video")
    vector = embedder.encode_queries([query])[0]
    segments = _segments(rt, client, "long")
    assert sorted(segments) == [(0.0, 30.0), (15.0, 45.0), (30.0, 60.0), (40.0, 70.0)]
    cosines = {span: float(vector @ stored) for span, stored in segments.items()}
    best = max(cosines, key=lambda span: cosines[span])
    assert results["long"]["cosine"] == pytest.approx(cosines[best], abs=1e-5)
    assert results["long"]["segment"] == {"start": best[0], "end": best[1]}

    # Without "candidates", the same text is an M-BEIR query: another vector.
    plain = {
        hit["document_id"]: hit
        for hit in _search(client, rt, {"text": CAPTION, "rerank": off})["results"]
    }
    assert plain["long"]["cosine"] != pytest.approx(results["long"]["cosine"], abs=1e-4)


def test_a_video_query_finds_the_same_video_and_is_not_reranked(
    videos: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = videos
    answer = _search(client, rt, {"video": b64(BARE)})
    top = answer["results"][0]
    assert (top["document_id"], top["segment"]) == ("bare", {"start": 0.0, "end": 4.0})
    assert top["cosine"] == pytest.approx(1.0, abs=1e-5)  # a bare video embeds alike both ways
    assert all(hit["p_yes"] is None for hit in answer["results"])
    # As a file part, the same query is the same search: the cached answer.
    form = {"request": '{"wait": 0, "top_k": 10}', "video": (io.BytesIO(BARE), "q.mp4")}
    again = client.post("/v1/collections/docs/queries", data=form)
    assert again.status_code == 200, again.json
    assert again.json["cached"] is True
    assert [h["document_id"] for h in again.json["results"]] == [
        h["document_id"] for h in answer["results"]
    ]
    # Video -> text: the caption's document is among what a video finds.
    captions = _search(client, rt, {"video": b64(LONG)})
    assert "caption" in {hit["document_id"] for hit in captions["results"]}
    expected = rt.embedder(rt.settings.recall_model).encode_queries(
        [Query(video=VIDEO.decode(LONG, rt.settings))]
    )[0]
    stored = rt.embedder(rt.settings.recall_model).encode_candidates([Candidate(text=CAPTION)])[0]
    found = {h["document_id"]: h for h in captions["results"]}["caption"]
    assert found["cosine"] == pytest.approx(float(expected @ stored), abs=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"video": b64(BARE), "image": b64(b"x")}, 400, "one image or one video, not both"),
        (
            {"video": b64(BARE), "instruction": "Find it."},
            400,
            "a video query takes no instruction",
        ),
        ({"video": b64(BARE), "rerank": {"enabled": True}}, 400, "does not take video queries"),
        ({"video": b64(SHORT[: len(SHORT) * 3 // 4])}, 400, "truncated"),
        ({"video": b64(BARE[: len(BARE) // 2])}, 400, "could not be decoded"),
        ({"video": b64(b"not a video at all")}, 400, "could not be decoded"),
        ({"video": "%%%"}, 400, "video is not valid base64"),
        ({"text": "x", "candidates": "audio"}, 400, "candidates"),
    ],
)
def test_bad_query_videos_are_refused_before_anything_is_stored(
    pipeline_env: tuple[FlaskClient, Runtime], body: dict[str, Any], status: int, message: str
) -> None:
    client, rt = pipeline_env
    response = client.post("/v1/collections/docs/queries", json={"wait": 0, **body})
    assert message in error(response, status)["message"]
    if "video" in body and body["video"] != "%%%":
        assert not rt.media.exists(media_key(base64.b64decode(body["video"])))


def test_a_query_video_over_its_limit_is_a_413(pipeline_env: tuple[FlaskClient, Runtime]) -> None:
    from api.app import create_app

    client, rt = pipeline_env
    settings = rt.settings.model_copy(update={"max_query_video_bytes": len(BARE) - 1})
    small = create_app(settings).test_client()
    small.environ_base.update(client.environ_base)
    response = small.post("/v1/collections/docs/queries", json={"wait": 0, "video": b64(BARE)})
    assert "larger than" in error(response, 413)["message"]
    form = {"request": "{}", "video": (io.BytesIO(BARE), "q.mp4")}
    response = small.post("/v1/collections/docs/queries", data=form)
    assert "larger than" in error(response, 413)["message"]


def test_the_reranker_sees_the_frames_of_a_videos_best_segment(
    videos: tuple[FlaskClient, Runtime], tiny_models: dict[str, Any]
) -> None:
    """The rerank step samples the best segment of each video hit (outside the batcher) and
    the reranker scores its frames through its video input."""
    from rerank.reranker import RerankCandidate, RerankQuery
    from workers.queries import rerank_step

    client, rt = videos
    settings = rt.settings.model_copy(update={"rerank_model": str(tiny_models["qwen2_vl"])})
    reranking = Runtime(settings)
    body = {"text": CAPTION, "candidates": "video", "rerank": {"enabled": True, "k": 4}}
    job = client.post("/v1/collections/docs/queries", json={"wait": 0, "top_k": 4, **body}).json
    recall_step(reranking, job["id"])
    rerank_step(reranking, job["id"])
    answer = client.get(job["url"]).json
    assert answer["status"] == "done", answer
    results = {hit["document_id"]: hit for hit in answer["results"]}
    assert all(hit["p_yes"] is not None for hit in results.values())

    span = results["long"]["segment"]  # 1 frame a second: the segment's frames by number
    segment = VIDEO.decode(LONG, settings).segment(int(span["start"]), int(span["end"]))
    reranker = reranking.reranker(settings.rerank_model)
    query = RerankQuery(CAPTION, None, VIDEO_INSTRUCTION)
    expected = reranker.score(query, [RerankCandidate(CAPTION, video=segment)])[0]
    assert results["long"]["p_yes"] == pytest.approx(expected, abs=1e-5)
    reranking.index.close()


def test_a_keyword_match_the_dense_search_missed_gets_its_best_segments_cosine(
    videos: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hybrid search: a video found only by its words is scored by its nearest segment,
    whose span its hit carries (the dense side is emptied here, as a miss at scale)."""
    client, rt = videos
    monkeypatch.setattr(rt.index, "search", lambda *args, **kwargs: [])
    body = {"text": CAPTION, "candidates": "video", "mode": "hybrid", "rerank": {"enabled": False}}
    results = {hit["document_id"]: hit for hit in _search(client, rt, body)["results"]}
    assert set(results) == {"long", "short", "caption"}  # those holding a word ("a")
    assert results["short"]["segment"] == {"start": 0.0, "end": 3.0}
    embedder = rt.embedder(rt.settings.recall_model)
    query = Query(text=CAPTION, instruction=VIDEO_INSTRUCTION, protocol="video")
    vector = embedder.encode_queries([query])[0]
    segments = _segments(rt, client, "long")
    cosines = {span: float(vector @ stored) for span, stored in segments.items()}
    best = max(cosines, key=lambda span: cosines[span])
    assert results["long"]["cosine"] == pytest.approx(cosines[best], abs=1e-5)
    assert results["long"]["segment"] == {"start": best[0], "end": best[1]}
    assert "segment" not in results["caption"]


def test_a_reranker_without_video_input_sees_the_segments_middle_frame(
    videos: tuple[FlaskClient, Runtime], tiny_models: dict[str, Any]
) -> None:
    from media.video import frame_at
    from rerank.reranker import RerankCandidate, RerankQuery
    from workers.queries import rerank_step

    client, rt = videos
    model = f"qwen3-vl-reranker:{tiny_models['qwen3_vl']}"
    reranking = Runtime(rt.settings.model_copy(update={"rerank_model": model}))
    assert not reranking.reranker(model).takes_videos
    body = {"text": CAPTION, "candidates": "video", "rerank": {"enabled": True, "k": 4}}
    job = client.post("/v1/collections/docs/queries", json={"wait": 0, "top_k": 4, **body}).json
    recall_step(reranking, job["id"])
    rerank_step(reranking, job["id"])
    results = {hit["document_id"]: hit for hit in client.get(job["url"]).json["results"]}
    span = results["long"]["segment"]
    frame = frame_at(VIDEO.decode(LONG, rt.settings), (span["start"] + span["end"]) / 2)
    query = RerankQuery(CAPTION, None, VIDEO_INSTRUCTION)
    expected = reranking.reranker(model).score_pairs([(query, RerankCandidate(CAPTION, frame))])
    assert results["long"]["p_yes"] == pytest.approx(expected[0], abs=1e-5)
    reranking.index.close()
