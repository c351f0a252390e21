"""Keyword search in the SQL store: tokenisation, both engines, filters, and migration of
documents stored before keyword search existed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import column, delete, insert, select, table

from core.contract import Fusion
from core.errors import InvalidRequest
from queries.keywords import keyword_search
from recall.hybrid import hybrid_hits, keyword_hits
from store.db import make_engine, make_session_factory, session_scope, upgrade
from store.keywords import query_phrases, terms
from store.states import DocumentStatus
from store.tables import Collection, Document

FIELDS = {"brand": "str", "year": "int", "price": "float", "new": "bool"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SKU-48213", ["sku", "48213"]),
        ("Kowalczyk's ZÜRICH", ["kowalczyk", "s", "zürich"]),
        ("ﬁle №5", ["file", "no5"]),  # NFKC: ligatures and compatibility forms unfolded
        ("東京タワー", ["東", "京", "タ", "ワ", "ー"]),  # one term per character
        ("snake_case v1.2", ["snake", "case", "v1", "2"]),
        ("  ", []),
    ],
)
def test_terms(text: str, expected: list[str]) -> None:
    assert terms(text) == expected


def test_query_words_are_phrases() -> None:
    assert query_phrases("SKU-48213 東京 sku-48213") == [["sku", "48213"], ["東", "京"]]
    assert query_phrases("!!! ---") == []


def _sessions(url: str) -> Any:
    return make_session_factory(make_engine(url))


def _collection(session: Any, name: str = "shop") -> int:
    row = Collection(
        name=name, recall_model="m", rerank_k=50, rerank_weight=0.1, metadata_fields=FIELDS
    )
    session.add(row)
    session.flush()
    return int(row.id)


def _add(session: Any, collection_id: int, doc: str, text: str, **metadata: Any) -> Document:
    row = Document(
        collection_id=collection_id,
        external_id=doc,
        text=text,
        doc_metadata=metadata,
        status=DocumentStatus.INDEXED,
    )
    session.add(row)
    return row


def _ids(found: list[tuple[str, float]]) -> list[str]:
    return [doc for doc, _ in found]


def test_a_code_one_document_in_many_holds_is_found(migrated_url: str) -> None:
    sessions = _sessions(migrated_url)
    with session_scope(sessions) as session:
        shop = _collection(session)
        other = _collection(session, "other")
        for i in range(300):
            _add(session, shop, f"d{i}", f"a blue shirt, size {i % 7}, item SKU-{10000 + i}")
        _add(session, other, "elsewhere", "item SKU-48213 in another collection")
        _add(session, shop, "target", "Spare part SKU-48213 made by Kowalczyk in Zürich")
        _add(session, shop, "apart", "sku of part 48213")  # both terms, not as the code
    with session_scope(sessions) as session:
        assert _ids(keyword_search(session, shop, "SKU-48213", 10)) == ["target"]
        assert _ids(keyword_search(session, shop, "sku 48213", 10))[:2] != []
        assert _ids(keyword_search(session, shop, "kowalczyk", 10)) == ["target"]
        assert _ids(keyword_search(session, shop, "Zurich", 10)) == []  # accents are kept
        assert len(keyword_search(session, shop, "shirt", 500)) == 300
        # More of the query's words matched ranks higher.
        found = keyword_search(session, shop, "part SKU-48213", 10)
        assert _ids(found)[0] == "target"
        assert found[0][1] > found[1][1] > 0


def test_filters_status_and_changes_apply(migrated_url: str) -> None:
    sessions = _sessions(migrated_url)
    with session_scope(sessions) as session:
        shop = _collection(session)
        _add(session, shop, "old", "red lamp", brand="Acme", year=1999, price=10.5, new=False)
        _add(session, shop, "big", "red lamp", brand="Acme", year=2**40, price=99.0, new=True)
        _add(session, shop, "bare", "red lamp")
        pending = _add(session, shop, "pending", "red lamp", brand="Acme")
        pending.status = DocumentStatus.PENDING

    def found(query: str, spec: Any = None) -> set[str]:
        with session_scope(sessions) as session:
            return set(_ids(keyword_search(session, shop, query, 10, spec, FIELDS)))

    assert found("lamp") == {"old", "big", "bare"}  # not the pending one
    assert found("lamp", {"brand": "Acme"}) == {"old", "big"}
    assert found("lamp", {"year": {"gt": 2**32}}) == {"big"}  # 64-bit values
    assert found("lamp", {"price": {"lte": 10.5}, "new": False}) == {"old"}
    assert found("lamp", {"brand": {"ne": "Other"}}) == {"old", "big"}  # a missing value: no
    assert found("lamp", {"year": {"in": [1999, 5]}}) == {"old"}
    with pytest.raises(InvalidRequest, match="declared"):
        found("lamp", {"colour": "red"})
    with session_scope(sessions) as session:
        row = session.scalars(select(Document).where(Document.external_id == "old")).one()
        row.text = "green chair"  # the index follows the text
        session.execute(delete(Document).where(Document.external_id == "big"))
    assert found("lamp") == {"bare"}
    assert found("chair") == {"old"}


def test_documents_stored_before_keyword_search_are_found(database_url: str) -> None:
    upgrade(database_url, "0009")
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    stamps = {"created_at": now, "updated_at": now}
    collection = {
        "id": 1,
        "name": "old",
        "uid": "u" * 32,
        "description": "",
        "recall_model": "m",
        "metric": "COSINE",
        "rerank_enabled": True,
        "rerank_k": 50,
        "rerank_weight": 0.1,
        "metadata_fields": "{}",
        "generation": 1,
        "version": 1,
        **stamps,
    }
    texts = ["an old SKU-48213 entry", "an old entry", None]
    documents = [
        {
            "collection_id": 1,
            "external_id": f"d{i}",
            "text": text,
            "metadata": "{}",
            "revision": 1,
            "generation": 1,
            "status": "indexed",
            "retryable": False,
            **stamps,
        }
        for i, text in enumerate(texts)
    ]
    with engine.begin() as conn:  # rows as the schema of 0009 holds them
        conn.execute(_table("collections", collection), [collection])
        conn.execute(_table("documents", documents[0]), documents)
    upgrade(database_url)
    with session_scope(make_session_factory(engine)) as session:
        assert _ids(keyword_search(session, 1, "sku-48213", 10)) == ["d0"]
        assert set(_ids(keyword_search(session, 1, "entry", 10))) == {"d0", "d1"}
        assert session.get_one(Collection, 1).search_mode == "dense"
    engine.dispose()


def _table(name: str, row: dict[str, Any]) -> Any:
    return insert(table(name, *(column(field) for field in row)))


def test_hybrid_fusion_puts_a_match_of_both_first() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    keyword = [("c", 12.0), ("z", 3.0)]
    for fusion in (Fusion(), Fusion(method="weighted", keyword_weight=0.5)):
        hits = hybrid_hits(dense, keyword, {"z": 0.1}, fusion, limit=10)
        assert hits[0].document_id == "c"  # second by cosine, first by keyword
        assert {h.document_id for h in hits} == {"a", "b", "c", "z"}
        z = next(h for h in hits if h.document_id == "z")
        assert z.cosine == 0.1  # from its stored vector
        assert z.keyword == 3.0
    # A keyword match without a stored vector is not searchable: left out.
    assert "y" not in {h.document_id for h in hybrid_hits(dense, [("y", 1.0)], {}, Fusion(), 10)}
    # RRF: first in both rankings scores 1.
    assert hybrid_hits([("a", 0.5)], [("a", 2.0)], {}, Fusion(), 10)[0].recall == pytest.approx(1)
    assert [h.recall for h in keyword_hits(keyword)] == [1.0, 0.25]


def test_a_window_scores_only_the_newest_matches(migrated_url: str) -> None:
    sessions = _sessions(migrated_url)
    with session_scope(sessions) as session:
        shop = _collection(session)
        for i in range(6):
            _add(session, shop, f"d{i}", "lamp " * (6 - i))  # the oldest match best
            session.flush()  # ids in order
    with session_scope(sessions) as session:
        assert _ids(keyword_search(session, shop, "lamp", 3))[0] == "d0"
        windowed = _ids(keyword_search(session, shop, "lamp", 3, window=2))
        assert windowed == ["d4", "d5"]  # of the two newest, the better first


def test_a_rare_word_is_found_whatever_the_window(migrated_url: str) -> None:
    sessions = _sessions(migrated_url)
    with session_scope(sessions) as session:
        shop = _collection(session)
        _add(session, shop, "old", "an old Kowalczyk shirt")  # the oldest of all
        for i in range(8):
            _add(session, shop, f"d{i}", f"a shirt number {i}")
    with session_scope(sessions) as session:
        # "shirt" matches more than the window, "kowalczyk" does not: the rare word's
        # documents are ranked, scored by both.
        assert _ids(keyword_search(session, shop, "Kowalczyk shirt", 3, window=4)) == ["old"]
        # Every word common: the newest matches only.
        newest = _ids(keyword_search(session, shop, "shirt", 9, window=4))
        assert set(newest) == {"d4", "d5", "d6", "d7"}
