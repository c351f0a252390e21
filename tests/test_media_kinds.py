"""Media kinds: a new kind is one registry record, and documents carry it end to end
through validation, storage, the media route and the clean-up (no workers)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from core.errors import InvalidRequest
from core.settings import Settings
from devkit.samples import b64, shape_image
from media import kinds
from media.kinds import MediaKind
from media.store import LocalMediaStore, media_key
from store.db import make_engine, make_session_factory
from tests.helpers import make_key
from workers.queries import cleanup_media

URL = "/v1/collections/docs/documents"


def _check_blob(data: bytes, settings: Settings) -> None:
    if not data.startswith(b"BLOB"):
        raise InvalidRequest("a blob starts with BLOB")


BLOB = MediaKind(
    name="blob",
    max_bytes=lambda settings: 64,
    check=_check_blob,
    decode=lambda data, settings: data[4:],
    content_type=lambda data: "application/x-blob",
    per_document=2,
    embedded=False,
)


@pytest.fixture
def blob_kind() -> Iterator[MediaKind]:
    kinds.register(BLOB)
    try:
        yield BLOB
    finally:
        kinds.unregister(BLOB.name)


@pytest.fixture
def settings(migrated_url: str, redis_url: str, tmp_path: Path) -> Settings:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "b.blob").write_bytes(b"BLOB from a server path")
    return Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        ingest_roots=[allowed],
    )


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    return client


def test_a_new_kind_is_validated_stored_and_served(
    client: FlaskClient, settings: Settings, blob_kind: MediaKind
) -> None:
    red = shape_image("red", "circle")
    path = str(settings.ingest_roots[0] / "b.blob")
    documents = [
        {
            "id": "blobs",
            "text": "two blobs",
            "media": [{"kind": "blob", "data": b64(b"BLOB one")}, {"kind": "blob", "path": path}],
        },
        {"id": "both", "image": b64(red), "media": [{"kind": "blob", "data": b64(b"BLOB 2")}]},
        {"id": "bad", "text": "x", "media": [{"kind": "blob", "data": b64(b"NOPE")}]},
        {"id": "big", "text": "x", "media": [{"kind": "blob", "data": b64(b"BLOB" * 17)}]},
        {"id": "unknown", "text": "x", "media": [{"kind": "audio", "data": b64(b"x")}]},
        {"id": "three", "text": "x", "media": [{"kind": "blob", "data": b64(b"BLOB")}] * 3},
        {"id": "nosource", "text": "x", "media": [{"kind": "blob"}]},
        {"id": "only-blob", "media": [{"kind": "blob", "data": b64(b"BLOB alone")}]},
    ]
    response = client.post(URL, json={"documents": documents})
    assert response.status_code == 202, response.json
    messages = {e["index"]: e["message"] for e in response.json["errors"]}
    assert "give exactly one of data, path and file" in messages.pop(6)
    assert messages == {
        2: "a blob starts with BLOB",
        3: "blob is larger than 64 bytes",
        4: "media kind 'audio' is not one of blob, image, video",
        5: "a document may carry at most 2 blob part(s)",
        7: "a document needs text, an image, or both (or a video)",  # no model embeds blobs
    }

    blobs = client.get(f"{URL}/blobs").json
    keys = [media_key(b"BLOB one"), media_key(b"BLOB from a server path")]
    assert blobs["media"] == [{"kind": "blob", "url": f"/v1/media/{key}"} for key in keys]
    assert blobs["image_url"] is None
    served = client.get(blobs["media"][1]["url"])
    assert served.status_code == 200
    assert served.data == b"BLOB from a server path"
    assert served.mimetype == "application/x-blob"

    both = client.get(f"{URL}/both").json
    assert [part["kind"] for part in both["media"]] == ["image", "blob"]
    assert both["image_url"] == both["media"][0]["url"]  # the image part is the embedded one
    assert client.get(both["image_url"]).mimetype == "image/png"

    # Stored as they came; the refused items stored nothing.
    store = LocalMediaStore(settings.media_root)
    assert [store.get(key) for key in keys] == [b"BLOB one", b"BLOB from a server path"]
    assert not store.exists(media_key(b"NOPE"))


def test_the_clean_up_keeps_parts_of_every_kind(
    client: FlaskClient, settings: Settings, blob_kind: MediaKind
) -> None:
    doc = {"id": "d", "text": "x", "media": [{"kind": "blob", "data": b64(b"BLOB kept")}]}
    assert client.post(URL, json={"documents": [doc]}).status_code == 202
    store = LocalMediaStore(settings.media_root)
    unused = store.put(b"BLOB nobody refers to")
    past = time.time() - settings.media_grace_seconds - 60
    for key in (media_key(b"BLOB kept"), unused):
        os.utime(store.root / key[:2] / key[2:4] / key, (past, past))
    sessions = make_session_factory(make_engine(settings.database_url))
    rt = SimpleNamespace(settings=settings, media=store, sessions=sessions)
    assert cleanup_media(rt) == 1  # type: ignore[arg-type]
    assert store.exists(media_key(b"BLOB kept"))
    assert not store.exists(unused)


def test_an_unregistered_kind_is_refused_by_name(client: FlaskClient) -> None:
    doc = {"id": "d", "text": "x", "media": [{"kind": "blob", "data": b64(b"BLOB")}]}
    job = client.post(URL, json={"documents": [doc]}).json
    assert job["errors"][0]["message"] == "media kind 'blob' is not one of image, video"
