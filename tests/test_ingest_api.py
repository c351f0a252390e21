"""Document input forms at the API: JSONL, multipart files, server-side paths (no workers)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from core.settings import Settings
from devkit.samples import b64, shape_image
from tests.helpers import error, make_key

URL = "/v1/collections/docs/documents"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "red.png").write_bytes(shape_image("red", "circle"))
    (tmp_path / "outside.png").write_bytes(shape_image("blue", "circle"))
    (folder / "sneaky.png").symlink_to(tmp_path / "outside.png")
    return folder


@pytest.fixture
def client(migrated_url: str, redis_url: str, tmp_path: Path, allowed: Path) -> FlaskClient:
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        ingest_roots=[allowed],
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    return client


def _messages(job: dict) -> dict[int, str]:
    return {e["index"]: e["message"] for e in job["errors"]}


def test_jsonl_reports_bad_lines_per_item(client: FlaskClient) -> None:
    lines = [
        json.dumps({"id": "a", "text": "first"}),
        "{not json",
        "",
        json.dumps({"id": "b", "image": b64(shape_image("red", "square"))}),
    ]
    response = client.post(URL, data="\n".join(lines) + "\n", content_type="application/x-ndjson")
    assert response.status_code == 202, response.json
    job = response.json
    assert (job["total"], job["failed"]) == (3, 1)
    assert list(_messages(job)) == [1]
    assert _messages(job)[1].startswith("line 2 is not valid JSON: Expecting property name")
    assert (job["rate"], job["eta_seconds"]) == (None, None)  # nothing indexed yet


def test_multipart_files_are_named_by_items(client: FlaskClient) -> None:
    documents = "\n".join(
        json.dumps(d)
        for d in (
            {"id": "with-file", "text": "a red circle", "image_file": "red"},
            {"id": "missing-file", "image_file": "nope"},
        )
    )
    response = client.post(
        URL,
        data={"documents": documents, "red": (io.BytesIO(shape_image("red", "circle")), "r.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.json
    assert _messages(response.json) == {1: "no file part named 'nope' in this request"}
    doc = client.get("/v1/collections/docs/documents/with-file").json
    assert doc["image_url"].startswith("/v1/media/")
    missing = client.post(URL, data={"x": "y"}, content_type="multipart/form-data")
    assert "'documents' field" in error(missing, 400)["message"]


def test_server_paths_stay_inside_the_allowed_roots(
    client: FlaskClient, allowed: Path, tmp_path: Path
) -> None:
    documents = [
        {"id": "inside", "image_path": str(allowed / "red.png")},
        {"id": "outside", "image_path": str(tmp_path / "outside.png")},
        {"id": "dotdot", "image_path": str(allowed / ".." / "outside.png")},
        {"id": "link", "image_path": str(allowed / "sneaky.png")},
        {"id": "absent", "image_path": str(allowed / "absent.png")},
        {"id": "two", "image": "aGk=", "image_path": str(allowed / "red.png")},
    ]
    job = client.post(URL, json={"documents": documents}).json
    messages = _messages(job)
    assert set(messages) == {1, 2, 3, 4, 5}
    for index in (1, 2, 3):
        assert "outside the allowed ingestion folders" in messages[index]
    assert "cannot read image_path" in messages[4]
    assert "at most one of image, image_path and image_file" in messages[5]
    assert client.get("/v1/collections/docs/documents/inside").json["image_url"]


def test_a_link_swapped_in_after_the_check_never_leads_outside(
    allowed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The roots are checked on the resolved path, then the file is opened: a link put in
    place between the two steps (here: resolve() sees no links at all) is still refused."""
    from api.routes.documents import _read_server_file
    from core.errors import InvalidRequest

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.png").write_bytes(b"not for you")
    (allowed / "dir").symlink_to(tmp_path / "elsewhere")  # a folder swapped for a link
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: self)
    with pytest.raises(InvalidRequest, match="cannot read image_path"):  # last part a link
        _read_server_file(str(allowed / "sneaky.png"), [allowed], 1000, "image_path")
    with pytest.raises(InvalidRequest, match="outside the allowed ingestion folders"):
        _read_server_file(str(allowed / "dir" / "secret.png"), [allowed], 1000, "image_path")
    assert _read_server_file(str(allowed / "red.png"), [allowed], 10**6, "image_path").startswith(
        b"\x89PNG"
    )


def test_delete_by_filter(migrated_url: str, redis_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=migrated_url, redis_url=redis_url, media_root=tmp_path)
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    fields = {"year": "int", "tag": "str"}
    assert (
        client.post("/v1/collections", json={"name": "f", "metadata_fields": fields}).status_code
        == 201
    )
    docs = [
        {"id": f"d{i}", "text": f"doc {i}", "metadata": {"year": 2000 + i, "tag": "ab"[i % 2]}}
        for i in range(6)
    ] + [{"id": "untagged", "text": "no metadata"}]
    assert client.post("/v1/collections/f/documents", json={"documents": docs}).status_code == 202
    version = client.get("/v1/collections/f").json["version"]
    spec = json.dumps({"year": {"gte": 2002}, "tag": "a"})
    response = client.delete(f"/v1/collections/f/documents?filter={spec}")
    assert response.json == {"deleted": 2}  # d2 and d4
    remaining = {f"d{i}" for i in (0, 1, 3, 5)} | {"untagged"}
    for doc_id in remaining:
        assert client.get(f"/v1/collections/f/documents/{doc_id}").status_code == 200
    for doc_id in ("d2", "d4"):
        assert client.get(f"/v1/collections/f/documents/{doc_id}").status_code == 404
    assert client.get("/v1/collections/f").json["version"] == version + 1
    assert (
        "needs DELETE of the collection"
        in error(client.delete("/v1/collections/f/documents"), 400)["message"]
    )
    assert (
        "is empty" in error(client.delete("/v1/collections/f/documents?filter={}"), 400)["message"]
    )
    assert (
        "not valid JSON"
        in error(client.delete("/v1/collections/f/documents?filter={x"), 400)["message"]
    )
    bad = client.delete('/v1/collections/f/documents?filter={"year": "2000 or 1==1"}')
    assert "declared int" in error(bad, 400)["message"]
