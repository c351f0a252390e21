"""The Milvus adapter against real servers, milvus-lite and a Milvus standalone (the tests
that take ``index``), and the filter language."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequest
from recall.filters import compile_filter, ids_expression, matches, string_literal, validate_fields
from recall.index import LAST_WRITE, MilvusIndex
from store.redis import make_redis
from store.writes import forget_writes, last_write, record_write

FIELDS = {"year": "int", "price": "float", "tag": "str", "public": "bool"}


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rows(vectors: np.ndarray) -> list[dict]:
    return [
        {
            "id": f"doc-{i}",
            "vector": vectors[i].tolist(),
            "year": 2000 + i,
            "price": i * 1.5,
            "tag": "ab"[i % 2],
            "public": i % 2 == 0,
        }
        for i in range(len(vectors))
    ]


pytestmark = pytest.mark.both_milvus


@pytest.fixture(scope="module")
def index(milvus_uri: str) -> MilvusIndex:
    return MilvusIndex(milvus_uri)


VECTORS = _vectors(6)
SPARSE = [  # metadata with missing values
    {"id": "doc-0", "vector": VECTORS[0].tolist(), "year": 2000, "price": 1.0, "tag": "a"},
    {"id": "doc-1", "vector": VECTORS[1].tolist(), "year": 2001, "tag": "b", "public": False},
    {"id": "doc-2", "vector": VECTORS[2].tolist(), "public": True},
]


@pytest.fixture(scope="module")
def filtered(index: MilvusIndex) -> str:
    """One collection per server for the filter tests (creating one costs seconds on a
    Milvus server): ``_rows`` of VECTORS."""
    name = f"f_{uuid.uuid4().hex[:10]}"
    index.create(name, 8, FIELDS)
    index.upsert(name, _rows(VECTORS), FIELDS)
    index.flush(name)
    return name


@pytest.fixture(scope="module")
def sparse(index: MilvusIndex) -> str:
    name = f"s_{uuid.uuid4().hex[:10]}"
    index.create(name, 8, FIELDS)
    index.upsert(
        name, [{f: row.get(f) for f in ["id", "vector", *FIELDS]} for row in SPARSE], FIELDS
    )
    index.flush(name)
    return name


@pytest.fixture
def name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def test_create_applies_hnsw_build_parameters(index: MilvusIndex, name: str) -> None:
    index.create(name, 8, FIELDS)
    index.create(name, 8, FIELDS)  # idempotent
    described = index.client.describe_index(name, "vector")
    assert described["index_type"] == "HNSW"
    assert described["metric_type"] == "COSINE"
    assert described["params"] == {"M": 16, "efConstruction": 200}


def test_upsert_twice_keeps_one_row_and_search_finds_it(index: MilvusIndex, name: str) -> None:
    vectors = _vectors(6)
    index.create(name, 8, FIELDS)
    index.upsert(name, _rows(vectors), FIELDS)
    index.upsert(name, _rows(vectors), FIELDS)
    index.flush(name)
    assert index.count(name) == 6
    hits = index.search(name, vectors[3], top_k=3)
    assert hits[0].document_id == "doc-3"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_delete(index: MilvusIndex, name: str) -> None:
    vectors = _vectors(4)
    index.create(name, 8, FIELDS)
    index.upsert(name, _rows(vectors), FIELDS)
    index.delete(name, ["doc-0", "doc-1"])
    index.flush(name)
    assert index.count(name) == 2
    assert {h.document_id for h in index.search(name, vectors[0], top_k=4)} == {"doc-2", "doc-3"}


# Document ids as the API admits them: no control characters or lone surrogates, at most
# 256 characters; rich in what an expression parser treats specially.
HOSTILE = st.sampled_from(
    ["'", '"', "\\", "[", "]", "(", ")", ",", " ", " or ", " and ", " not in ", "id", "==", "\\'"]
)
DOCUMENT_IDS = st.lists(
    st.one_of(HOSTILE, st.characters(exclude_categories=("Cs", "Cc"))), min_size=1, max_size=24
).map("".join)


def _all_ids(index: MilvusIndex, name: str) -> set[str]:
    index.flush(name)
    return set(index.ids(name))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ids=st.lists(DOCUMENT_IDS, min_size=2, max_size=6, unique=True), pick=st.integers(0, 5))
def test_deleting_one_document_removes_exactly_it(
    milvus_server: dict, name: str, ids: list[str], pick: int
) -> None:
    """On milvus-lite only (a Milvus server takes seconds per flush); the hostile ids of
    ``test_every_id_is_listed_and_deleted_whatever_it_holds`` run on both."""
    index = MilvusIndex(str(milvus_server["uri"]))
    index.create(name, 8, FIELDS)
    before = _all_ids(index, name)
    vectors = _vectors(len(ids), seed=len(before))
    rows = [{"id": i, "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]
    index.upsert(name, rows, FIELDS)
    doomed = ids[pick % len(ids)]
    index.delete(name, [doomed])
    assert _all_ids(index, name) == (before | set(ids)) - {doomed}
    index.delete(name, ids)  # the next example starts from what was there before
    assert _all_ids(index, name) == before - set(ids)


@given(value=st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00")))
def test_string_literals_read_back_as_the_value(value: str) -> None:
    """The literal parses (milvus-lite's own tokenizer) to exactly the value, or is refused."""
    from milvus_lite.search.filter.tokens import tokenize

    try:
        literal = string_literal(value)
    except InvalidRequest:
        assert any((ch < " " and ch not in "\t\n\r") or ch == "\x7f" for ch in value)
        return
    (token, *_) = tokenize(literal)
    assert token.value == value


def test_id_lists_are_one_expression_of_escaped_literals() -> None:
    assert ids_expression(["a", "x'] or id not in ['"]) == 'id in ["a", "x\'] or id not in [\'"]'


def test_search_on_a_missing_collection_is_empty(index: MilvusIndex) -> None:
    assert index.search("never_created", _vectors(1)[0], top_k=3) == []


def test_a_collection_dropped_by_another_client_searches_empty(
    index: MilvusIndex, milvus_uri: str, name: str
) -> None:
    """This client searched (and so loaded) the collection; another drops it, as a reindex
    drops the generation it replaced: the next search finds nothing, it does not fail."""
    vectors = _vectors(3)
    index.create(name, 8, FIELDS)
    index.upsert(name, _rows(vectors), FIELDS)
    index.flush(name)
    assert index.search(name, vectors[0], top_k=1)[0].document_id == "doc-0"
    other = MilvusIndex(milvus_uri)
    try:
        other.drop(name)
    finally:
        other.close()
    assert index.search(name, vectors[0], top_k=1) == []
    index.create(name, 8, FIELDS)  # made again, empty: found again, searched again
    assert index.search(name, vectors[0], top_k=1) == []
    index.upsert(name, _rows(vectors[:1]), FIELDS)
    index.flush(name)
    assert index.search(name, vectors[0], top_k=1)[0].document_id == "doc-0"
    index.drop(name)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"year": 2003}, {"doc-3"}),
        ({"year": {"gte": 2002, "lt": 2004}}, {"doc-2", "doc-3"}),
        ({"price": {"gt": 5.0}}, {"doc-4", "doc-5"}),
        ({"tag": {"in": ["b"]}}, {"doc-1", "doc-3", "doc-5"}),
        ({"public": True, "year": {"lte": 2002}}, {"doc-0", "doc-2"}),
        ({"tag": {"ne": "a"}, "price": {"lt": 4}}, {"doc-1"}),
        # A value that tries to close the string and add a clause matches nothing.
        ({"tag": 'a" or tag == "b'}, set()),
    ],
)
def test_filters_on_each_type(
    index: MilvusIndex, filtered: str, spec: dict, expected: set[str]
) -> None:
    expression = index.expression(spec, FIELDS)
    hits = index.search(filtered, VECTORS[0], top_k=6, expression=expression)
    assert {h.document_id for h in hits} == expected
    # The Python evaluation (used to delete by filter in SQL) decides the same.
    assert {row["id"] for row in _rows(VECTORS) if matches(spec, FIELDS, row)} == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"year": 2001}, {"doc-1"}),
        ({"year": {"ne": 2001}}, {"doc-0"}),  # doc-2 has no year: no comparison holds
        ({"tag": {"in": ["a", "b"]}}, {"doc-0", "doc-1"}),
        ({"public": False}, {"doc-1"}),
        ({"price": {"gte": 0}}, {"doc-0"}),
    ],
)
def test_a_missing_value_satisfies_no_comparison(
    index: MilvusIndex, sparse: str, spec: dict, expected: set[str]
) -> None:
    hits = index.search(sparse, VECTORS[0], top_k=3, expression=index.expression(spec, FIELDS))
    assert {h.document_id for h in hits} == expected
    assert {row["id"] for row in SPARSE if matches(spec, FIELDS, row)} == expected


def test_reads_see_every_acknowledged_write(index: MilvusIndex, name: str) -> None:
    vectors = _vectors(20)
    index.create(name, 8, FIELDS)
    index.upsert(name, _rows(vectors), FIELDS)
    index.delete(name, ["doc-3", "doc-4"])  # no flush: counts and listings must agree anyway
    assert index.count(name) == 18
    assert sorted(index.ids(name)) == sorted(f"doc-{i}" for i in range(20) if i not in (3, 4))
    assert all(h.document_id != "doc-3" for h in index.search(name, vectors[3], top_k=20))


def _searched_with(index: MilvusIndex, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The consistency arguments of each search ``index`` sends from now on."""
    sent: list[dict] = []
    search = index.client.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        sent.append({k: v for k, v in kwargs.items() if k in CONSISTENCY_ARGS})
        return search(*args, **kwargs)

    monkeypatch.setattr(index.client, "search", spy)
    return sent


CONSISTENCY_ARGS = ("consistency_level", "guarantee_timestamp")


def test_a_last_write_search_sees_the_write_recorded_just_before(
    milvus_standalone: str, redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Milvus server: each document upserted just before a search is found by a
    ``LastWrite`` search given the timestamp recorded in Redis (a ``Bounded`` search right
    after such an upsert missed it on 2.3.5), and that timestamp only grows. Without one
    the search is ``Strong``."""
    index = MilvusIndex(milvus_standalone, search_consistency=LAST_WRITE)
    redis = make_redis(redis_url)
    vectors = _vectors(24, seed=7)
    index.create(name, 8)
    record_write(redis, name, index.upsert(name, [_row(i, vectors[i]) for i in range(20)]))
    index.search(name, vectors[0], top_k=1)  # loads the collection
    sent = _searched_with(index, monkeypatch)
    recorded = []
    for i in range(20, 24):
        written = index.upsert(name, [_row(i, vectors[i])])
        assert written is not None
        record_write(redis, name, written)
        seen = last_write(redis, name)
        assert seen == written
        assert index.search(name, vectors[i], top_k=1, written_at=seen)[0].document_id == f"d{i}"
        assert sent[-1] == {"consistency_level": "Customized", "guarantee_timestamp": seen}
        recorded.append(seen)
    assert recorded == sorted(set(recorded))  # each write later than the one before
    record_write(redis, name, recorded[0])  # a writer recording late lowers nothing
    assert last_write(redis, name) == recorded[-1]
    deleted = index.delete(name, ["d23"])
    assert deleted is not None
    assert deleted > recorded[-1]
    record_write(redis, name, deleted)
    hits = index.search(name, vectors[23], top_k=1, written_at=last_write(redis, name))
    assert hits[0].document_id != "d23"
    forget_writes(redis, name)  # Redis lost it: Strong, never a stale search
    assert last_write(redis, name) is None
    assert index.search(name, vectors[22], top_k=1, written_at=None)[0].document_id == "d22"
    assert sent[-1] == {"consistency_level": "Strong"}
    index.drop(name)


def test_last_write_searches_on_every_server(
    milvus_uri: str, milvus_kind: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """milvus-lite has no write timestamps to wait for: it is always strong."""
    index = MilvusIndex(milvus_uri, search_consistency=LAST_WRITE)
    vectors = _vectors(3)
    index.create(name, 8)
    written = index.upsert(name, [_row(i, vectors[i]) for i in range(3)])
    index.flush(name)
    assert (written is None) == (milvus_kind == "lite")
    sent = _searched_with(index, monkeypatch)
    assert index.search(name, vectors[2], top_k=1, written_at=written)[0].document_id == "d2"
    level = "Strong" if milvus_kind == "lite" else "Customized"
    assert sent[-1]["consistency_level"] == level
    index.drop(name)


def _row(i: int, vector: np.ndarray) -> dict:
    return {"id": f"d{i}", "vector": vector.tolist()}


def test_survives_a_server_crash(milvus_server: dict, name: str) -> None:
    vectors = _vectors(5)
    index = MilvusIndex(str(milvus_server["uri"]))
    index.create(name, 8, FIELDS)
    index.upsert(name, _rows(vectors), FIELDS)
    index.flush(name)
    stack = milvus_server["stack"]
    stack.kill("milvus")
    stack.start_milvus_only()
    fresh = MilvusIndex(str(milvus_server["uri"]))  # a new process would connect like this
    assert fresh.search(name, vectors[2], top_k=1)[0].document_id == "doc-2"
    assert fresh.count(name) == 5
    # A long-lived client (a worker's) reconnects and loads the collection again.
    stack.kill("milvus")
    stack.start_milvus_only()
    assert index.search(name, vectors[3], top_k=1)[0].document_id == "doc-3"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"year": "2000 or 1 == 1"}, "declared int"),
        ({"tag": {"eq": 5}}, "declared str"),
        ({"tag": {"gt": "a"}}, "range operators"),
        ({"year": {"like": 3}}, "unknown operator"),
        ({"secret": 1}, "cannot filter on 'secret'"),
        ({"year) or (1": 1}, "cannot filter on"),
        ({"tag": {"in": []}}, "'in' needs a list"),
        ({"price": {"lt": float("nan")}}, "declared float"),
        ({"public": 1}, "declared bool"),
        ("year > 1", "must be an object"),
    ],
)
def test_bad_filters_are_rejected(spec: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        compile_filter(spec, FIELDS)


def test_string_values_are_escaped_not_injected() -> None:
    expression = compile_filter({"tag": 'a" or id != "'}, FIELDS)
    assert expression == 'tag == "a\\" or id != \\""'


def test_field_declarations_are_validated() -> None:
    assert validate_fields(FIELDS) == FIELDS
    with pytest.raises(InvalidRequest, match="type must be one of"):
        validate_fields({"x": "json"})
    with pytest.raises(InvalidRequest, match="must match"):
        validate_fields({"vector": "int"})
    with pytest.raises(InvalidRequest, match="must match"):
        validate_fields({"Bad Name": "int"})


def test_every_id_is_listed_and_deleted_whatever_it_holds(index: MilvusIndex, name: str) -> None:
    ids = ['a"b', "back\\slash", "c'd", 'x"] or id != ["', "plain", "z\\"]
    ids += [f"n{i:03d}" for i in range(30)]
    vectors = _vectors(len(ids))
    rows = [{"id": i, "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]
    index.create(name, 8, FIELDS)
    index.upsert(name, rows, FIELDS)
    listed = index.ids(name, batch=7)  # several pages, cut inside the hostile ids
    assert sorted(listed) == sorted(ids)
    assert len(listed) == len(set(listed))
    doomed = ['a"b', "back\\slash", 'x"] or id != ["']
    index.delete(name, doomed)
    assert sorted(index.ids(name)) == sorted(set(ids) - set(doomed))


def test_a_document_of_many_segments_is_found_once_counted_once_and_deleted_whole(
    index: MilvusIndex, name: str
) -> None:
    """Segments of one video crowd the nearest rows: the search asks for more until it has
    ``top_k`` documents, each at its best segment with that segment's span."""
    from recall.index import DOCUMENT_FIELD, END_FIELD, SEGMENT_FIELD, START_FIELD, segment_key

    query = _vectors(1, seed=7)[0]
    noise = _vectors(40, seed=8) * 0.05
    video = query + noise[:12]  # twelve segments, all nearer the query than any other row
    others = _vectors(5, seed=9)
    rows = [
        {
            "id": segment_key("clip", n),
            "vector": (v / np.linalg.norm(v)).tolist(),
            DOCUMENT_FIELD: "clip",
            SEGMENT_FIELD: n,
            START_FIELD: 10.0 * n,
            END_FIELD: 10.0 * n + 30,
        }
        for n, v in enumerate(video)
    ]
    rows += [{"id": f"other-{i}", "vector": v.tolist()} for i, v in enumerate(others)]
    index.create(name, 8)
    assert index.segmented(name)
    index.upsert(name, rows)
    index.flush(name)
    nearest = max(range(12), key=lambda n: float(video[n] @ query / np.linalg.norm(video[n])))

    hits = index.search(name, query, top_k=3)
    assert len(hits) == 3
    assert hits[0].document_id == "clip"
    assert hits[0].span == (10.0 * nearest, 10.0 * nearest + 30)
    assert [h.document_id for h in hits[1:]] == [h.document_id for h in hits[1:] if h.span is None]
    assert {h.document_id for h in hits[1:]} < {f"other-{i}" for i in range(5)}
    assert index.count(name) == 6
    assert sorted(index.ids(name, batch=2)) == ["clip", *[f"other-{i}" for i in range(5)]]

    rows = index.segment_vectors(name, ["clip", "other-0", "absent"])
    assert set(rows) == {"clip", "other-0"}
    assert sorted(span for span, _ in rows["clip"]) == [
        (10.0 * n, 10.0 * n + 30) for n in range(12)
    ]
    ((span, vector),) = rows["other-0"]
    assert span is None
    assert np.abs(vector - others[0]).max() < 1e-6
    index.delete_stale(name, {"clip": 4, "other-0": 1})  # a revision of four segments
    index.flush(name)
    left = index.client.query(name, filter='_document == "clip"', output_fields=[SEGMENT_FIELD])
    assert sorted(row[SEGMENT_FIELD] for row in left) == [0, 1, 2, 3]
    assert index.count(name) == 6

    index.delete(name, ["clip", "other-1"])
    index.flush(name)
    assert index.count(name) == 4
    assert not index.client.query(name, filter='_document == "clip"', output_fields=["id"])
