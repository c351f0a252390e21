"""Ingestion chunks, in process: a bad document fails alone, with its reason; transient
failures are retried; what was accepted is written whatever happens to its message."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from devkit.samples import b64, shape_image
from store.tables import Document
from tests.helpers import ingest_in_process, run_entries
from workers.runtime import Runtime


def _media_path(rt: Runtime, key: str) -> Any:
    return rt.settings.media_root / key[:2] / key[2:4] / key


def test_poison_documents_fail_alone(pipeline_env: tuple[FlaskClient, Runtime]) -> None:
    client, rt = pipeline_env
    docs = [{"id": f"text-{i}", "text": f"document number {i}"} for i in range(10)]
    docs += [
        {"id": "corrupt", "image": b64(shape_image("red", "circle"))},
        {
            "id": "vanished",
            "text": "its image is gone",
            "image": b64(shape_image("blue", "square")),
        },
        {"id": "fine-image", "image": b64(shape_image("green", "triangle"))},
    ]
    # Submit, then break two stored images behind the API's back, as a disk fault would.
    response = client.post("/v1/collections/docs/documents", json={"documents": docs})
    assert response.status_code == 202
    job_id = response.json["id"]
    with rt.sessions() as session:
        keys = dict(session.execute(select(Document.external_id, Document.image_key)).all())
    _media_path(rt, keys["corrupt"]).write_bytes(b"not an image at all")
    _media_path(rt, keys["vanished"]).unlink()
    outcomes = run_entries(rt, job_id)
    assert sum(o["indexed"] for o in outcomes) == 11
    assert sum(o["failed"] for o in outcomes) == 2
    with rt.sessions() as session:
        rows = {d.external_id: d for d in session.scalars(select(Document))}
    assert {i for i, d in rows.items() if d.status == "failed"} == {"corrupt", "vanished"}
    assert "could not be decoded" in str(rows["corrupt"].error)
    assert "no media object" in str(rows["vanished"].error)
    job = client.get(f"/v1/ingest-jobs/{job_id}").json
    assert (job["state"], job["done"], job["failed"]) == ("done", 11, 2)
    assert {e["id"] for e in job["errors"]} == {"corrupt", "vanished"}
    served = client.get("/v1/collections/docs").json["milvus_collection"]
    assert rt.index.count(served) == 11


def test_a_clean_chunk_is_one_embedding_call(pipeline_env: tuple[FlaskClient, Runtime]) -> None:
    """Isolation costs nothing when nothing fails: the whole chunk embeds in one call."""
    client, rt = pipeline_env
    embedder = rt.embedder(rt.settings.recall_model)
    calls: list[int] = []
    original = embedder.encode_candidates

    def counting(candidates: Any) -> Any:
        calls.append(len(candidates))
        return original(candidates)

    embedder.encode_candidates = counting  # type: ignore[method-assign]
    try:
        ingest_in_process(client, rt, [{"id": f"d{i}", "text": f"doc {i}"} for i in range(5)])
    finally:
        embedder.encode_candidates = original  # type: ignore[method-assign]
    assert calls == [2, 2, 1]  # the chunks of 2 (UMARVEL_INGEST_CHUNK_SIZE here)


def test_a_video_part_is_embedded_as_the_recall_model_embeds_a_video(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    """A document's video part (decoded by the writer, before the model's batcher) gives
    the vector of a video candidate."""
    from devkit.clips import make_clip
    from devkit.samples import b64
    from media.kinds import VIDEO
    from recall.prompts import Candidate

    client, rt = pipeline_env
    clip = make_clip(80, 48, 20, 10)
    docs = [
        {
            "id": "clip",
            "text": "a yellow square moving right",
            "media": [{"kind": "video", "data": b64(clip)}],
        },
        {"id": "plain", "text": "no video here"},
    ]
    ingest_in_process(client, rt, docs)
    assert client.get("/v1/collections/docs/documents/clip").json["status"] == "indexed"
    collection = client.get("/v1/collections/docs").json
    stored = rt.index.vectors(collection["milvus_collection"], ["clip"])["clip"]
    embedder = rt.embedder(rt.settings.recall_model)
    expected = embedder.encode_candidates(
        [Candidate(text="a yellow square moving right", video=VIDEO.decode(clip, rt.settings))]
    )[0]
    assert np.abs(stored - expected).max() <= 1e-5


def _segment_rows(rt: Runtime, name: str, document: str) -> list[tuple[int, float, float]]:
    """(segment, start, end) of each Milvus row of ``document``, in segment order."""
    from recall.filters import ids_expression
    from recall.index import DOCUMENT_FIELD, END_FIELD, SEGMENT_FIELD, START_FIELD

    rows = rt.index.client.query(
        name,
        filter=ids_expression([document], DOCUMENT_FIELD),
        output_fields=[SEGMENT_FIELD, START_FIELD, END_FIELD],
        consistency_level="Strong",
    )
    return sorted((r[SEGMENT_FIELD], r[START_FIELD], r[END_FIELD]) for r in rows)


def test_a_long_video_is_embedded_as_overlapping_segments_found_once_with_their_span(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    """A 3-minute clip becomes 30-second segments every 15 s (the last ending with the clip),
    each the vector of the clip cut there; a search finds the video once, at its nearest
    segment; a shorter revision leaves no old segment behind, and a delete removes them all."""
    from devkit.clips import make_clip
    from media.kinds import VIDEO
    from recall.index import segment_key
    from recall.prompts import Candidate

    client, rt = pipeline_env
    assert (rt.settings.video_segment_seconds, rt.settings.video_segment_stride) == (30, 15)
    long_clip = make_clip(64, 48, 360, 2)  # 180 s at 2 frames a second
    caption = "a yellow square crossing a blue screen"
    docs = [
        {"id": "long", "text": caption, "media": [{"kind": "video", "data": b64(long_clip)}]},
        {"id": "short", "media": [{"kind": "video", "data": b64(make_clip(64, 48, 8, 2))}]},
        {"id": "plain", "text": "no video here"},
    ]
    ingest_in_process(client, rt, docs)
    name = client.get("/v1/collections/docs").json["milvus_collection"]
    starts = [15.0 * n for n in range(11)]
    assert _segment_rows(rt, name, "long") == [(n, s, s + 30.0) for n, s in enumerate(starts)]
    assert _segment_rows(rt, name, "short") == [(0, 0.0, 4.0)]
    assert _segment_rows(rt, name, "plain") == [(0, 0.0, 0.0)]
    # Reconciliation counts and lists documents, not segments.
    assert rt.index.count(name) == 3
    assert sorted(rt.index.ids(name)) == ["long", "plain", "short"]

    video = VIDEO.decode(long_clip, rt.settings)
    rows = rt.index.client.query(
        name, filter='_document == "long" and _segment in [0, 5, 10]', output_fields=["vector"]
    )
    stored = {row["id"]: np.asarray(row["vector"], np.float32) for row in rows}
    keys = [segment_key("long", n) for n in (0, 5, 10)]
    embedder = rt.embedder(rt.settings.recall_model)
    expected = embedder.encode_candidates(
        [Candidate(text=caption, video=video.segment(start, start + 60)) for start in (0, 150, 300)]
    )
    for key, vector in zip(keys, expected, strict=True):
        assert np.abs(stored[key] - vector).max() <= 1e-5

    hits = rt.index.search(name, stored[keys[1]], 3)
    assert [hit.document_id for hit in hits] == ["long", *[h.document_id for h in hits[1:]]]
    assert sorted(hit.document_id for hit in hits) == ["long", "plain", "short"]
    assert (hits[0].score, hits[0].span) == (pytest.approx(1.0, abs=1e-5), (75.0, 105.0))

    # A new revision with one segment: the other ten go; then the delete takes the last.
    short_again = {"id": "long", "media": [{"kind": "video", "data": b64(make_clip(64, 48, 8, 2))}]}
    ingest_in_process(client, rt, [short_again])
    assert _segment_rows(rt, name, "long") == [(0, 0.0, 4.0)]
    assert client.delete("/v1/collections/docs/documents/long").status_code == 204
    run_entries(rt)
    assert _segment_rows(rt, name, "long") == []
    assert rt.index.count(name) == 2


def test_a_video_is_decoded_and_sampled_outside_the_models_batcher(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer checks a video, and the ingesting thread samples it, before the model's
    batcher sees it: the batcher's threads only process and run the model."""
    import threading

    from devkit.clips import make_clip
    from media import kinds
    from media import video as video_module
    from recall import embedder as embedder_module

    client, rt = pipeline_env
    threads: list[str] = []

    def recording(function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(embedder_module, "sample_video", recording(video_module.sample_video))
    monkeypatch.setattr(kinds, "open_video", recording(video_module.open_video))
    docs = [
        {"id": f"clip{n}", "media": [{"kind": "video", "data": b64(make_clip(64, 48, 12, 4))}]}
        for n in range(3)
    ]
    ingest_in_process(client, rt, [*docs, {"id": "words", "text": "no video"}])
    assert client.get("/v1/collections/docs/documents/clip2").json["status"] == "indexed"
    assert threads.count(threading.current_thread().name) == len(threads) >= 6
    assert not any(name.startswith("query-batcher") for name in threads)
