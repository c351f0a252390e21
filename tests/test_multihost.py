"""No shared disk: the API and each worker keep media in an S3 bucket, never in a folder.

The API, the recall worker and the rerank worker run as separate processes with separate
``UMARVEL_MEDIA_ROOT`` folders, as on separate hosts, and ``UMARVEL_MEDIA_BACKEND=s3``
against a real S3-protocol server (moto, its own process). Images posted to the API are
embedded by the recall worker and scored by the rerank worker from the bucket alone; every
media folder is still empty at the end. The API runs as it does in production: gunicorn,
two processes with threads.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from cli.stack import Stack, wait_until
from devkit.samples import sample_documents, shape_image
from recall.index import MilvusIndex
from tests.conftest import live_stack
from tests.helpers import admin_session, poll, query_kinds
from tests.s3_server import s3_server

pytestmark = pytest.mark.integration

BUCKET = "umarvel-media"
PROCESSES = ("api", "worker-recall", "worker-rerank")
KEYS = {"UMARVEL_MEDIA_S3_ACCESS_KEY": "testing", "UMARVEL_MEDIA_S3_SECRET_KEY": "testing"}


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture(scope="module")
def media_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An empty media folder of each process (each "host")."""
    return {name: tmp_path_factory.mktemp(f"media-{name}") for name in PROCESSES}


@pytest.fixture(scope="module")
def stack(
    tiny_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    s3_url: str,
    media_roots: dict[str, Path],
) -> Iterator[Stack]:
    overrides = {
        "heartbeat_seconds": "0.5",
        "query_wait_seconds": "10",
        "media_backend": "s3",
        "media_s3_endpoint": s3_url,
        "media_s3_bucket": BUCKET,
        "media_s3_create_bucket": "true",
        "media_grace_seconds": "0",  # no beat runs here: the clean-up runs when a test says
    }
    process_env = {name: {"UMARVEL_MEDIA_ROOT": str(root)} for name, root in media_roots.items()}
    workdir = tmp_path_factory.mktemp("multihost")
    # The API as on its own hosts: gunicorn processes with threads, each with its own
    # connections and job-notice subscription.
    gunicorn = ("--workers", "2", "--threads", "4")
    with live_stack(
        tiny_models,
        workdir,
        extra_env=KEYS,
        process_env=process_env,
        api_args=gunicorn,
        **overrides,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def http(stack: Stack) -> requests.Session:
    return admin_session(stack)


@pytest.fixture(scope="module")
def bucket(s3_url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _objects(bucket: Any) -> set[str]:
    """The media keys in the bucket (the last part of each object's name)."""
    pages = bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {item["Key"].rsplit("/", 1)[-1] for page in pages for item in page.get("Contents", [])}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def ingested(stack: Stack, http: requests.Session) -> dict[str, Any]:
    base = f"{stack.api_url}/v1/collections"
    response = http.post(base, json={"name": "shapes", "metadata_fields": {"colour": "str"}})
    assert response.status_code == 201, response.text
    docs = sample_documents()
    response = http.post(f"{base}/shapes/documents", json={"documents": docs})
    assert response.status_code == 202, response.text
    job = poll(
        http, stack.api_url + response.json()["url"], lambda j: j["state"] in ("done", "failed")
    )
    images = {d["id"]: _sha(base64.b64decode(d["image"])) for d in docs if "image" in d}
    return {"job": job, "ids": {d["id"] for d in docs}, "images": images}


def _query(stack: Stack, http: requests.Session, body: dict[str, Any]) -> dict[str, Any]:
    url = f"{stack.api_url}/v1/collections/shapes/queries"
    response = http.post(url, json={"wait": 20, **body})
    assert response.status_code in (200, 202), response.text
    answer = response.json()
    if answer["is_running"]:
        answer = poll(http, stack.api_url + answer["url"], lambda j: not j["is_running"])
    return dict(answer)


def test_each_process_has_a_media_folder_of_its_own(
    stack: Stack, media_roots: dict[str, Path]
) -> None:
    for name in PROCESSES:
        raw = Path(f"/proc/{stack.processes[name].pid}/environ").read_bytes()
        env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
        assert env["UMARVEL_MEDIA_ROOT"] == str(media_roots[name]), name
        assert env["UMARVEL_MEDIA_BACKEND"] == "s3", name
    assert len({str(root) for root in media_roots.values()}) == len(PROCESSES)


def test_ingested_images_are_stored_in_the_bucket(
    stack: Stack, bucket: Any, ingested: dict[str, Any]
) -> None:
    job = ingested["job"]
    assert (job["state"], job["done"], job["failed"], job["errors"]) == ("done", 9, 0, [])
    assert set(ingested["images"].values()) <= _objects(bucket)


@query_kinds
def test_queries_are_recalled_and_reranked(
    stack: Stack, http: requests.Session, ingested: dict[str, Any], query: dict[str, Any]
) -> None:
    answer = _query(stack, http, {**query, "top_k": 4})
    assert answer["status"] == "done", answer
    results = answer["results"]
    assert len(results) == 4
    assert {r["document_id"] for r in results} <= ingested["ids"]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for hit in results:
        assert 0.0 <= hit["p_yes"] <= 1.0
        assert hit["score"] == pytest.approx(hit["cosine"] + 0.1 * hit["p_yes"], abs=1e-6)
    assert {"embed", "search", "rerank"} <= set(answer["timings"])


def test_result_images_are_served_from_the_bucket(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    answer = _query(stack, http, {"text": "a shape", "top_k": 9, "rerank": {"enabled": False}})
    with_images = [r for r in answer["results"] if r["image_url"]]
    assert {r["document_id"] for r in with_images} == set(ingested["images"])
    for hit in with_images:
        response = http.get(stack.api_url + hit["image_url"])
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "image/png"
        assert _sha(response.content) == ingested["images"][hit["document_id"]]


def test_a_deleted_document_leaves_search_and_its_image_is_cleaned_up(
    stack: Stack, http: requests.Session, bucket: Any, ingested: dict[str, Any]
) -> None:
    from media.store import open_media_store
    from workers.queries import cleanup_media
    from workers.runtime import Runtime

    base = f"{stack.api_url}/v1/collections/shapes"
    doomed = "red-circle"  # image and text; no query here sends its image
    body = {"text": "a red circle", "top_k": 9, "rerank": {"enabled": False}}
    assert doomed in {r["document_id"] for r in _query(stack, http, body)["results"]}
    assert http.delete(f"{base}/documents/{doomed}").status_code == 204
    assert doomed not in {r["document_id"] for r in _query(stack, http, body)["results"]}
    assert http.get(f"{base}/documents/{doomed}").status_code == 404
    index = MilvusIndex(stack.settings().milvus_uri)
    try:
        served = http.get(base).json()["milvus_collection"]
        wait_until(lambda: index.count(served) == 8, 30, "vector deleted")
    finally:
        index.close()

    # A clean-up elsewhere (as beat's task or `umarvel jobs cleanup` on yet another host):
    # the same S3 settings, no media folder.
    settings = stack.settings()
    assert settings.media_backend == "s3"
    orphan = open_media_store(settings).put(b"stored by a request that never committed")
    rt = Runtime(settings)
    before = _objects(bucket)
    assert {orphan, ingested["images"][doomed]} <= before
    assert cleanup_media(rt) == 2
    after = _objects(bucket)
    assert after == before - {orphan, ingested["images"][doomed]}
    kept = {key for doc, key in ingested["images"].items() if doc != doomed}
    assert kept <= after
    assert _sha(shape_image("green", "triangle")) in after  # a query job's image
    assert http.get(f"{stack.api_url}/v1/media/{ingested['images'][doomed]}").status_code == 404


def test_no_media_folder_was_written(
    stack: Stack, ingested: dict[str, Any], media_roots: dict[str, Path]
) -> None:
    shared = stack.settings().media_root  # every process's, had an override been lost
    for root in (*media_roots.values(), shared):
        written = [str(path) for path in root.rglob("*")] if root.exists() else []
        assert written == [], root
