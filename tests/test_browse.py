"""Browsing a collection's documents: keyset pages under a filter, counts per value, the
JSONL export and its way back through ingestion; through the HTTP API on both SQL
databases, through the Python clients and the command line against a served app."""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.serving import make_server

from api.app import create_app
from api.routes import browse as browse_route
from api.routes.browse import encode_cursor
from cli.main import main
from cli.stack import free_port
from core.settings import Settings
from devkit.samples import b64, shape_image
from recall.filters import matches
from store.db import session_scope
from store.states import DocumentStatus
from store.tables import Collection, Document
from tests.helpers import error as _error
from tests.helpers import make_key
from umarvel_client import AsyncClient, Client, InvalidRequest

FIELDS = {"year": "int", "tag": "str", "price": "float", "public": "bool"}
URL = "/v1/collections/docs"
TAGS = ("cat", "dog", "cat", "bird", None)  # None: no tag at all


def _settings(url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        query_wait_seconds=0,  # no worker runs here
    )


def _app_client(settings: Settings, name: str = "docs") -> FlaskClient:
    app = create_app(settings)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(app, ["admin"])
    created = client.post("/v1/collections", json={"name": name, "metadata_fields": FIELDS})
    assert created.status_code == 201, created.json
    return client


@pytest.fixture
def client(migrated_url: str, redis_url: str, tmp_path: Path) -> FlaskClient:
    return _app_client(_settings(migrated_url, redis_url, tmp_path))


def _doc(i: int, prefix: str = "d") -> dict[str, Any]:
    metadata: dict[str, Any] = {"year": 2000 + i, "price": i / 2, "public": i % 3 == 0}
    if TAGS[i % len(TAGS)] is not None:
        metadata["tag"] = TAGS[i % len(TAGS)]
    return {"id": f"{prefix}{i:03d}", "text": f"document {i}", "metadata": metadata}


def _ingest(client: FlaskClient, docs: list[dict[str, Any]], url: str = URL) -> dict[str, Any]:
    response = client.post(f"{url}/documents", json={"documents": docs})
    assert response.status_code == 202, response.json
    assert response.json["errors"] == []
    return dict(response.json)


def _sessions(client: FlaskClient) -> Any:
    return client.application.extensions["umarvel"].sessions


def _in_id_order(client: FlaskClient, spec: dict[str, Any] | None = None) -> list[str]:
    """The collection's document ids in SQL id order, those ``spec`` matches (decided in
    Python, as ``recall.filters.matches`` decides for a Milvus filter)."""
    with session_scope(_sessions(client)) as session:
        rows = session.execute(
            select(Document.external_id, Document.doc_metadata)
            .join(Collection)
            .where(Collection.name == "docs")
            .order_by(Document.id)
        ).all()
    return [ext for ext, meta in rows if spec is None or matches(spec, FIELDS, meta)]


def _list(client: FlaskClient, **params: Any) -> dict[str, Any]:
    if isinstance(params.get("filter"), dict):
        params["filter"] = json.dumps(params["filter"])
    response = client.get(f"{URL}/documents", query_string=params)
    assert response.status_code == 200, response.json
    return dict(response.json)


def _walk(client: FlaskClient, between_pages: Any = None, **params: Any) -> list[str]:
    """Every page of a listing, following next_cursor; ``between_pages()`` after each."""
    seen: list[str] = []
    cursor = None
    while True:
        page = _list(client, **params, **({"cursor": cursor} if cursor else {}))
        seen += [doc["id"] for doc in page["documents"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        if between_pages is not None:
            between_pages()


def test_pages_follow_the_sql_ids_under_a_filter(client: FlaskClient) -> None:
    _ingest(client, [_doc(i) for i in range(23)])
    spec = {"year": {"gte": 2005}, "tag": {"in": ["cat", "bird"]}}
    expected = _in_id_order(client, spec)
    assert 5 < len(expected) < 23
    first = _list(client, filter=spec, limit=4)
    assert [doc["id"] for doc in first["documents"]] == expected[:4]
    assert set(first["documents"][0]) == {"id", "text", "metadata", "image_url", "media", "status"}
    assert first["documents"][0]["status"] == "pending"
    assert _walk(client, filter=spec, limit=4) == expected
    # The last page says so, even when it is exactly full.
    assert _list(client, filter=spec, limit=len(expected))["next_cursor"] is None
    assert _walk(client) == _in_id_order(client)  # no filter: every document, default limit
    # A missing value satisfies no comparison, "ne" included (as in Milvus).
    assert _walk(client, filter={"tag": {"ne": "cat"}}) == _in_id_order(
        client, {"tag": {"ne": "cat"}}
    )
    assert _walk(client, filter={"public": True, "price": {"lt": 5.0}}) == _in_id_order(
        client, {"public": True, "price": {"lt": 5.0}}
    )


def test_pages_by_status(client: FlaskClient) -> None:
    _ingest(client, [_doc(i) for i in range(6)])
    with session_scope(_sessions(client)) as session:
        session.execute(
            update(Document)
            .where(Document.external_id.in_(["d001", "d004"]))
            .values(status=DocumentStatus.INDEXED)
        )
    assert _walk(client, status="indexed", limit=1) == ["d001", "d004"]
    assert _walk(client, status="indexed", filter={"year": 2004}) == ["d004"]
    assert len(_walk(client, status="pending")) == 4
    assert _walk(client, status="failed") == []


def test_a_listing_sees_each_document_once_while_others_come_and_go(
    client: FlaskClient,
) -> None:
    """Between pages another thread adds documents and deletes some, before and after the
    listing's position: each document there throughout is listed exactly once."""
    stable = [_doc(i, "s") for i in range(30)]
    churn = [_doc(i, "c") for i in range(30)]
    _ingest(client, [doc for pair in zip(stable, churn, strict=True) for doc in pair])
    rng = random.Random(7)
    doomed = [doc["id"] for doc in churn]
    added: list[str] = []
    turn, done = threading.Event(), threading.Event()
    stop = False
    mutator = client.application.test_client()
    mutator.environ_base.update(client.environ_base)

    def mutate() -> None:
        while True:
            turn.wait()
            turn.clear()
            if stop:
                return
            for _ in range(2):
                if doomed:
                    gone = doomed.pop(rng.randrange(len(doomed)))
                    assert mutator.delete(f"{URL}/documents/{gone}").status_code == 204
            new = [_doc(len(added) + i, "n") for i in range(3)]
            _ingest(mutator, new)
            added.extend(doc["id"] for doc in new)
            done.set()

    def between_pages() -> None:
        turn.set()
        assert done.wait(30), "the other thread did not answer"
        done.clear()

    thread = threading.Thread(target=mutate, daemon=True)
    thread.start()
    try:
        seen = _walk(client, between_pages, limit=5, filter={"year": {"gte": 2000}})
    finally:
        stop = True
        turn.set()
        thread.join(30)
    assert len(added) >= 30  # it ran between every page
    counts = Counter(seen)
    assert [doc_id for doc_id, n in counts.items() if n > 1] == []
    assert {doc["id"] for doc in stable} <= set(seen)
    assert set(seen) <= {doc["id"] for doc in stable + churn} | set(added)


def test_a_cursor_is_opaque_and_continues_after_its_document(client: FlaskClient) -> None:
    _ingest(client, [_doc(i) for i in range(4)])
    first = _list(client, limit=2)
    cursor = first["next_cursor"]
    assert cursor == encode_cursor(int(_sql_id(client, "d001")))
    assert "after" not in cursor
    assert [doc["id"] for doc in _list(client, cursor=cursor)["documents"]] == ["d002", "d003"]
    # The document it names may be gone: the page still starts after it.
    assert client.delete(f"{URL}/documents/d001").status_code == 204
    assert [doc["id"] for doc in _list(client, cursor=cursor)["documents"]] == ["d002", "d003"]


def _sql_id(client: FlaskClient, external_id: str) -> int:
    with session_scope(_sessions(client)) as session:
        return int(session.scalar(select(Document.id).where(Document.external_id == external_id)))


def test_listing_needs_a_key_that_may_read_the_collection(client: FlaskClient) -> None:
    app = client.application
    anonymous = app.test_client()
    assert _error(anonymous.get(f"{URL}/documents"), 401)["code"] == "unauthorized"
    other = {"Authorization": "Bearer " + make_key(app, ["search"], ["other"])}
    for path in ("documents", "facets?field=tag", "export"):
        assert _error(anonymous.get(f"{URL}/{path}", headers=other), 403)["code"] == "forbidden"
    reader = {"Authorization": "Bearer " + make_key(app, ["search"], ["docs"])}
    assert anonymous.get(f"{URL}/documents", headers=reader).status_code == 200
    assert _error(client.get("/v1/collections/nope/documents"), 404)["code"] == "not_found"
    assert _error(client.get("/v1/collections/nope/export"), 404)["code"] == "not_found"


def test_facets_count_each_value_and_the_nulls_apart(client: FlaskClient) -> None:
    _ingest(client, [_doc(i) for i in range(20)])  # tags: cat 8, dog 4, bird 4, none 4
    tags = client.get(f"{URL}/facets", query_string={"field": "tag"}).json
    assert tags == {
        "field": "tag",
        "values": [
            {"value": "cat", "count": 8},
            {"value": "bird", "count": 4},  # ties by value
            {"value": "dog", "count": 4},
        ],
        "nulls": 4,
        "truncated": False,
    }
    young = {"field": "tag", "filter": json.dumps({"year": {"lt": 2005}}), "limit": "1"}
    assert client.get(f"{URL}/facets", query_string=young).json == {
        "field": "tag",
        "values": [{"value": "cat", "count": 2}],
        "nulls": 1,
        "truncated": True,
    }
    public = client.get(f"{URL}/facets", query_string={"field": "public"}).json
    assert public["values"] == [{"value": False, "count": 13}, {"value": True, "count": 7}]
    years = client.get(f"{URL}/facets", query_string={"field": "year", "limit": "2"}).json
    assert years["values"] == [{"value": 2000, "count": 1}, {"value": 2001, "count": 1}]
    assert all(type(v["value"]) is int for v in years["values"])
    prices = client.get(f"{URL}/facets", query_string={"field": "price", "limit": "1"}).json
    assert prices["values"] == [{"value": 0.0, "count": 1}]
    none = {"field": "tag", "status": "indexed"}
    assert client.get(f"{URL}/facets", query_string=none).json["values"] == []


def _lines(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/x-ndjson"
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_an_export_is_taken_back_by_ingestion(client: FlaskClient) -> None:
    png = shape_image("red", "circle")
    docs = [
        _doc(0),
        {"id": "picture", "image": b64(png), "metadata": {"year": 1999, "note": "é ✓"}},
        {"id": "both", "text": "a caption", "media": [{"kind": "image", "data": b64(png)}]},
        {"id": "line\u2028break", "text": "text\nover lines"},
    ]
    _ingest(client, docs)
    inline = _lines(client.get(f"{URL}/export", query_string={"media": "inline"}))
    assert [line["id"] for line in inline] == ["d000", "picture", "both", "line\u2028break"]
    assert inline[1] == {
        "id": "picture",
        "text": None,
        "metadata": {"year": 1999, "note": "é ✓"},
        "media": [{"kind": "image", "data": b64(png)}],
    }
    # Into another collection, as JSONL, exactly as it came out.
    assert client.post("/v1/collections", json={"name": "copy", "metadata_fields": FIELDS})
    body = client.get(f"{URL}/export", query_string={"media": "inline"}).get_data()
    job = client.post(
        "/v1/collections/copy/documents", data=body, content_type="application/x-ndjson"
    ).json
    assert (job["total"], job["errors"]) == (4, [])
    copied = client.get("/v1/collections/copy/export", query_string={"media": "inline"})
    assert _lines(copied) == inline
    # With URLs (the default), lines without media are taken back as they are; a part is
    # its document's media URL, which the key may read.
    urls = _lines(client.get(f"{URL}/export"))
    assert urls[0] == {
        "id": "d000",
        "text": "document 0",
        "metadata": docs[0]["metadata"],
        "media": [],
    }
    (part,) = urls[2]["media"]
    assert part["kind"] == "image"
    assert client.get(part["url"]).data == png
    assert _ingest(client, [urls[0], urls[3]], "/v1/collections/copy")["total"] == 2


def test_an_export_selects_and_streams_page_by_page(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(client, [_doc(i) for i in range(10)])
    spec = {"tag": "cat"}
    selected = client.get(f"{URL}/export", query_string={"filter": json.dumps(spec)})
    assert [line["id"] for line in _lines(selected)] == _in_id_order(client, spec)
    assert _lines(client.get(f"{URL}/export", query_string={"status": "indexed"})) == []
    # Read a page at a time, as the answer is sent: what is deleted once the first line is
    # out is never read if it was not in the first page.
    monkeypatch.setattr(browse_route, "EXPORT_PAGE", 3)
    monkeypatch.setattr(browse_route, "EXPORT_CHUNK_BYTES", 1)  # a line a chunk
    streamed = client.get(f"{URL}/export", buffered=False)
    assert streamed.is_streamed
    chunks = iter(streamed.response)
    first = json.loads(next(chunks))
    assert first["id"] == "d000"
    for i in (1, 5, 9):
        assert client.delete(f"{URL}/documents/d{i:03d}").status_code == 204
    rest = [json.loads(chunk)["id"] for chunk in chunks]
    streamed.close()
    assert rest == ["d001", "d002", "d003", "d004", "d006", "d007", "d008"]


@pytest.mark.parametrize(
    ("path", "params", "fragment"),
    [
        ("documents", {"cursor": "nope"}, "query.cursor is not a cursor of this listing"),
        ("documents", {"cursor": "YWZ0ZXI6LTE"}, "query.cursor is not a cursor"),  # after:-1
        ("documents", {"cursor": "YWZ0ZXI6MQ=="}, "query.cursor is not a"),  # padded
        ("documents", {"cursor": "YWZ0ZXI6MQ!"}, "query.cursor is not a cursor"),  # one more
        ("documents", {"limit": "0"}, "query.limit"),
        ("documents", {"limit": "1001"}, "query.limit"),
        ("documents", {"status": "gone"}, "query.status"),
        ("documents", {"filter": "{not json"}, "filter is not valid JSON"),
        ("documents", {"filter": '{"colour": 1}'}, "cannot filter on 'colour': declared fields"),
        ("documents", {"filter": '{"year": "2001"}'}, "field 'year' is declared int"),
        ("documents", {"filter": '{"tag": {"gt": "a"}}'}, "range operators need an int or float"),
        ("documents", {"filter": "[1]"}, "filter must be an object"),
        ("documents", {"surprise": "1"}, "query.surprise"),
        ("facets", {"field": "colour"}, "cannot count values of 'colour': declared fields are"),
        ("facets", {}, "query.field"),
        ("facets", {"field": "tag", "filter": '{"year": {"in": []}}'}, "'in' needs a list"),
        ("facets", {"field": "tag", "limit": "1001"}, "query.limit"),
        ("export", {"media": "bytes"}, "query.media"),
        ("export", {"filter": '{"year": {"between": [1, 2]}}'}, "unknown operator 'between'"),
        ("export", {"filter": '{"tag": "a\\u0001b"}'}, "control character U+0001"),
    ],
)
def test_a_bad_request_is_a_400_that_says_why(
    client: FlaskClient, path: str, params: dict[str, str], fragment: str
) -> None:
    """Refused before any page is read: an export's 400 comes before its first line."""
    assert fragment in _error(client.get(f"{URL}/{path}", query_string=params), 400)["message"]


def test_the_openapi_document_describes_the_routes(client: FlaskClient) -> None:
    document = client.application.test_client().get("/v1/openapi.json").json
    paths = document["paths"]
    listing = paths["/v1/collections/{name}/documents"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"filter", "status", "cursor", "limit"}
    assert {"200", "400", "404"} <= set(listing["responses"])
    assert "get" in paths["/v1/collections/{name}/facets"]
    export = paths["/v1/collections/{name}/export"]["get"]
    content = export["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson"}
    assert content["application/x-ndjson"]["schema"]["items"] == {
        "$ref": "#/components/schemas/ExportLine"
    }
    schemas = document["components"]["schemas"]
    assert set(schemas["ExportLine"]["properties"]) == {"id", "text", "metadata", "media"}
    assert "ExportMedia" in schemas


# The clients and the command line, against the app served over HTTP (SQLite: the SQL is
# the same as above, where both databases run it).


@pytest.fixture
def served(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[str, str, FlaskClient]]:
    """The API served on a free port, with a collection of 12 documents; (URL, key, a test
    client of the same app)."""
    client = _app_client(_settings(migrated_url, redis_url, tmp_path))
    _ingest(client, [_doc(i) for i in range(12)])
    key = client.environ_base["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    port = free_port()
    server = make_server("127.0.0.1", port, client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", key, client
    server.shutdown()


sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
def test_the_client_pages_counts_and_exports(served: tuple[str, str, FlaskClient]) -> None:
    url, key, app_client = served
    cats = {"tag": "cat"}
    with Client(url, key) as api:
        page = api.documents.list("docs", filter=cats, limit=2)
        assert [doc.id for doc in page.documents] == ["d000", "d002"]
        assert page.documents[0].metadata["tag"] == "cat"
        assert page.documents[0].media == []
        following = api.documents.list("docs", filter=cats, cursor=page.next_cursor, limit=2)
        assert following.documents[0].id == "d005"
        every = [doc.id for doc in api.documents.iter_documents("docs", page_size=5)]
        assert every == _in_id_order(app_client)
        assert [doc.id for doc in api.documents.iter_documents("docs", filter=cats)] == [
            "d000",
            "d002",
            "d005",
            "d007",
            "d010",
        ]
        facets = api.documents.facets("docs", "tag", filter={"year": {"gte": 2005}}, limit=2)
        assert [(v.value, v.count) for v in facets.values] == [("cat", 3), ("dog", 2)]
        assert (facets.nulls, facets.truncated) == (1, True)
        binary = io.BytesIO()
        assert api.documents.export("docs", binary, filter=cats) == 5
        text = io.StringIO()
        assert api.documents.export("docs", text, status="pending") == 12
        assert text.getvalue().encode() == app_client.get(f"{URL}/export").get_data()
        with pytest.raises(InvalidRequest) as caught:
            api.documents.list("docs", filter={"colour": "red"})
        assert "cannot filter on 'colour'" in caught.value.reason
        with pytest.raises(InvalidRequest, match="cannot count values of 'colour'"):
            api.documents.facets("docs", "colour")
    lines = [json.loads(line) for line in binary.getvalue().splitlines()]
    assert [line["id"] for line in lines] == ["d000", "d002", "d005", "d007", "d010"]


@sqlite_only
def test_the_async_client_pages_counts_and_exports(
    served: tuple[str, str, FlaskClient], tmp_path: Path
) -> None:
    url, key, app_client = served

    async def use() -> tuple[list[str], Any, int]:
        async with AsyncClient(url, key) as api:
            ids = [doc.id async for doc in api.documents.iter_documents("docs", page_size=5)]
            facets = await api.documents.facets("docs", "public")
            count = await api.documents.export("docs", tmp_path / "out.jsonl", media="inline")
            return ids, facets, count

    ids, facets, count = asyncio.run(use())
    assert ids == _in_id_order(app_client)
    assert [(v.value, v.count) for v in facets.values] == [(False, 8), (True, 4)]
    assert count == 12
    exported = (tmp_path / "out.jsonl").read_bytes()
    expected = app_client.get(f"{URL}/export", query_string={"media": "inline"})
    assert exported == expected.get_data()


@sqlite_only
def test_the_documents_commands(served: tuple[str, str, FlaskClient], tmp_path: Path) -> None:
    url, key, app_client = served
    runner = CliRunner()
    api = ["--api", url, "--key", key]

    def run(*args: str) -> Any:
        result = runner.invoke(main, ["documents", *args, *api])
        assert result.exit_code == 0, result.output
        return result

    listed = run("list", "docs", "--filter", '{"tag": "cat"}', "--limit", "2").output
    rows = listed.splitlines()
    assert rows[1].split()[:2] == ["d000", "pending"]
    assert rows[2].split()[0] == "d002"
    assert rows[-1].startswith("more: --cursor ")
    cursor = rows[-1].split()[-1]
    following = json.loads(run("list", "docs", "--cursor", cursor, "--json").output)
    assert following["documents"][0]["id"] == "d003"
    assert following["next_cursor"] is None
    facets = run("facets", "docs", "tag").output.splitlines()
    assert facets[1].split() == ["5", '"cat"']
    assert facets[-1].split() == ["2", "(no", "value)"]
    counted = json.loads(run("facets", "docs", "year", "--limit", "1", "--json").output)
    assert counted["truncated"] is True
    out = tmp_path / "cats.jsonl"
    exported = run("export", "docs", "--filter", '{"tag": "cat"}', "-o", str(out))
    assert "exported 5 documents to" in exported.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        "d000",
        "d002",
        "d005",
        "d007",
        "d010",
    ]
    to_stdout = runner.invoke(main, ["documents", "export", "docs", *api])
    assert to_stdout.exit_code == 0
    assert to_stdout.stdout_bytes == app_client.get(f"{URL}/export").get_data()
    assert to_stdout.stderr.strip() == "exported 12 documents to standard output"
    refused = runner.invoke(main, ["documents", "facets", "docs", "colour", *api])
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: 400 invalid_request: cannot count values of 'colour'")
    bad = runner.invoke(main, ["documents", "list", "docs", "--filter", "[1", *api])
    assert bad.exit_code == 2
    assert "not JSON" in bad.output
