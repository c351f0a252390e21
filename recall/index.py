"""The Milvus vector index, reached through ``MilvusClient(uri=...)`` in every deployment.

One Milvus collection per (collection, generation): ``<prefix><name>_<uid12>_g<generation>``.
The primary key is the document's external id, so an upsert replaces and a replay is
harmless. Metadata fields declared on the collection become typed scalar fields (filters
on them are free, unlike filters on a JSON field).

What differs between servers is handled here, so callers never ask which one they have:

- **Consistency.** Counts and id listings are ``Strong``: they see every write
  acknowledged before them (Milvus' default, ``Bounded``, may not). Searches follow
  ``UMARVEL_MILVUS_SEARCH_CONSISTENCY``. On a Milvus server a ``Strong`` search waits for
  the next time tick (about 200 ms by default), while a ``Bounded`` one may miss documents
  written in the last seconds, and its answer is then cached until the collection changes
  again. ``LastWrite`` (the settings' default) sees every write up to a timestamp the
  caller gives (``written_at``: the newest that ``upsert`` and ``delete`` returned for
  the collection, in any process): it waits only while the server has not yet applied
  that write, and is ``Strong`` when no timestamp is given. milvus-lite is always strong.
- **Missing metadata values.** milvus-lite and Milvus 2.5+ store nulls. Older servers
  (the PyPI ``milvus`` standalone is 2.3.5) silently ignore ``nullable``; there each field
  also gets a boolean ``_has_<field>`` (user field names start with a letter, so never
  collide), a missing value is stored as the type's zero with ``_has_<field>`` false, and
  ``expression`` makes each filter clause require it: a missing value satisfies no
  comparison on either kind of server.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, TypeVar

import numpy as np

from core.errors import Unavailable
from recall.filters import (
    PK_FIELD,
    STR_MAX_BYTES,
    compile_filter,
    ids_expression,
    string_literal,
)

T = TypeVar("T")
NOT_LOADED = 101  # Milvus' error code for a search on an unloaded collection
RECONNECT_SECONDS = 3.0  # how long a lost channel's replacement may take to connect

VECTOR_FIELD = "vector"
PRESENT_PREFIX = "_has_"
# Segmented collections (``MilvusIndex.segmented``): a row is one segment of a document (a
# long video has several; anything else has one). Its key is the document's id for segment
# 0 and ``<id>\x1f<n>`` for segment n (ids hold no control characters).
DOCUMENT_FIELD = "_document"
SEGMENT_FIELD = "_segment"
START_FIELD = "_start"  # the segment's time span in seconds; 0 and 0: no span
END_FIELD = "_end"
SEGMENT_SEPARATOR = "\x1f"
MAX_TOP_K = 16384  # Milvus' largest search limit
STRONG = "Strong"
LAST_WRITE = "LastWrite"  # see the module's docstring
CUSTOMIZED = "Customized"  # Milvus' level for a search at the caller's guarantee timestamp
ZERO = {"int": 0, "float": 0.0, "str": "", "bool": False}
ID_MAX_LENGTH = 512  # UTF-8 bytes of a document id
PK_MAX_LENGTH = ID_MAX_LENGTH + 16  # and a segment number (512 in older collections)
HNSW_BUILD = {"M": 16, "efConstruction": 200}
# The search's candidate list. bench.search, 100,000 random 64-d vectors on milvus-lite:
# recall@10 0.51 at ef 64, 0.90 at ef 256, for p50 38 -> 40 ms (its cost is elsewhere).
SEARCH_EF = 256


@dataclass(frozen=True)
class IndexHit:
    document_id: str
    score: float
    span: tuple[float, float] | None = None  # the best segment's (start, end) in seconds


def segment_key(document_id: str, segment: int) -> str:
    """The primary key of a document's ``segment``."""
    return document_id if segment == 0 else f"{document_id}{SEGMENT_SEPARATOR}{segment}"


def milvus_name(prefix: str, storage: str, generation: int) -> str:
    """``storage`` is the collection's ``storage_name`` (its name and a uid piece)."""
    return f"{prefix}{storage}_g{generation}"


class MilvusIndex:
    def __init__(
        self, uri: str, token: str = "", timeout: float = 30.0, search_consistency: str = STRONG
    ) -> None:
        self.uri = uri
        self._token = token
        self._timeout = timeout
        self._search_consistency = search_consistency
        self._reconnecting = threading.Lock()
        self.client = self._connect(timeout)
        self._loaded: set[str] = set()
        self._segmented: dict[str, bool] = {}

    def _connect(self, timeout: float) -> Any:
        from pymilvus import MilvusClient

        # No keepalive pings while idle: milvus-lite's gRPC server answers a client that
        # pings every 10 s (pymilvus' default) with GOAWAY "too many pings".
        options = {"grpc.keepalive_permit_without_calls": False}
        last: Exception | None = None
        for _ in range(2):
            try:
                return MilvusClient(
                    uri=self.uri, token=self._token, timeout=timeout, grpc_options=options
                )
            except Exception as exc:  # a stale shared channel: try once more
                last = exc
        raise Unavailable(f"Milvus at {self.uri} is not reachable: {last}") from last

    def _retry(self, call: Callable[[], T]) -> T:
        """Run ``call``; after a connection failure, reconnect once and run it again.

        A long-lived client can lose its channel (a server restart, or a GOAWAY such as
        gRPC's "too many pings" after long idle periods): that is transient, the rest is not.
        A server that does not answer within ``RECONNECT_SECONDS`` is ``Unavailable`` at
        once: a caller (an ingestion chunk, a query step) must not hold its thread for the
        whole outage, or the threads that queries need are all waiting on a dead server.
        """
        from pymilvus import MilvusException

        client = self.client
        try:
            return call()
        except MilvusException as exc:
            if exc.code not in (1, 2) and "UNAVAILABLE" not in str(exc).upper():
                raise
        except Exception as exc:
            if "UNAVAILABLE" not in str(exc).upper():
                raise
        with self._reconnecting:  # one thread reconnects; the others use its client
            if self.client is client:
                self.client = self._connect(RECONNECT_SECONDS)
                self._loaded.clear()
        return call()

    @cached_property
    def _version(self) -> str:
        return str(self._retry(lambda: self.client.get_server_version()))

    @property
    def is_lite(self) -> bool:
        return self._version.startswith("milvus_lite")

    @cached_property
    def stores_nulls(self) -> bool:
        """milvus-lite and Milvus 2.5+ store null scalars; older servers do not."""
        if self.is_lite:
            return True
        found = re.match(r"v?(\d+)\.(\d+)", self._version)
        return found is None or (int(found[1]), int(found[2])) >= (2, 5)

    def expression(self, spec: Any, fields: dict[str, str]) -> str | None:
        """The filter ``spec`` as this server's expression (``recall.filters``)."""
        present = None if self.stores_nulls else (lambda field: f"{PRESENT_PREFIX}{field} == true")
        return compile_filter(spec, fields, present)

    def exists(self, name: str) -> bool:
        return bool(self._retry(lambda: self.client.has_collection(name)))

    def create(self, name: str, dim: int, fields: dict[str, str] | None = None) -> None:
        """Create ``name`` (COSINE, HNSW) unless it exists; typed scalar ``fields``."""
        from pymilvus import DataType, MilvusClient, MilvusException

        if self.exists(name):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PK_FIELD, DataType.VARCHAR, is_primary=True, max_length=PK_MAX_LENGTH)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field(DOCUMENT_FIELD, DataType.VARCHAR, max_length=ID_MAX_LENGTH)
        schema.add_field(SEGMENT_FIELD, DataType.INT64)
        schema.add_field(START_FIELD, DataType.DOUBLE)
        schema.add_field(END_FIELD, DataType.DOUBLE)
        types = {"int": DataType.INT64, "float": DataType.DOUBLE, "bool": DataType.BOOL}
        nullable = {"nullable": True} if self.stores_nulls else {}
        for field, kind in (fields or {}).items():
            if kind == "str":
                schema.add_field(field, DataType.VARCHAR, max_length=STR_MAX_BYTES, **nullable)
            else:
                schema.add_field(field, types[kind], **nullable)
            if not self.stores_nulls:
                schema.add_field(f"{PRESENT_PREFIX}{field}", DataType.BOOL)
        index_params = self.client.prepare_index_params()
        # Build parameters must be nested under "params": milvus-lite drops them otherwise.
        index_params.add_index(
            field_name=VECTOR_FIELD,
            index_type="HNSW",
            metric_type="COSINE",
            params={"params": dict(HNSW_BUILD)},
        )
        try:
            self.client.create_collection(
                name, schema=schema, index_params=index_params, consistency_level=STRONG
            )
        except MilvusException:
            if not self.exists(name):  # lost a creation race: fine; anything else: raise
                raise

    def segmented(self, name: str) -> bool:
        """Whether ``name``'s rows are segments (``DOCUMENT_FIELD`` and the others): every
        collection created since videos are segmented. An older one holds one vector a
        document (a video's whole clip) until a reindex writes a new generation."""
        known = self._segmented.get(name)
        if known is None:
            described = self._retry(lambda: self.client.describe_collection(name))
            known = any(f["name"] == DOCUMENT_FIELD for f in described["fields"])
            self._segmented[name] = known
        return known

    def ensure_loaded(self, name: str) -> None:
        """Collections come back unloaded after a restart; load before searching."""
        if name in self._loaded:
            return
        from pymilvus.client.types import LoadState

        state = self._retry(lambda: self.client.get_load_state(name)).get("state")
        if state == LoadState.Loading:  # a restarted server reloads it by itself: no waiting
            raise Unavailable(f"Milvus is loading {name} again; try again in a few seconds")
        if state != LoadState.Loaded:
            self.client.load_collection(name)
        self._loaded.add(name)

    def upsert(
        self, name: str, rows: Sequence[dict[str, Any]], fields: dict[str, str] | None = None
    ) -> int | None:
        """Rows of id, vector and the metadata ``fields`` (a missing value is ``None``).
        Returns the write's timestamp on a Milvus server (``None`` on milvus-lite): a search
        given it as ``written_at`` sees this write and every earlier one."""
        if not rows:
            return None
        data = list(rows)
        if self.segmented(name):  # a row without segment fields is a whole document
            data = [{**_whole(row), **row} for row in data]
        if fields and not self.stores_nulls:
            data = [_with_presence(row, fields) for row in data]
        self._retry(lambda: self.client.upsert(name, data=data))
        if self.is_lite:
            return None
        # MilvusClient.upsert drops the timestamp Milvus returns; pymilvus keeps the newest
        # per collection and server (for its own Session consistency): this write's or a
        # later one's.
        from pymilvus.client.ts_utils import get_collection_ts

        endpoint = self.client._get_connection().server_address
        written = get_collection_ts(name, endpoint, self.client._config.db_name)
        return int(written) or self._timestamp_now()

    def delete(self, name: str, ids: Sequence[str]) -> int | None:
        """Delete the vectors of exactly these documents (every segment of each), whatever
        characters their ids hold. Returns a timestamp at or after the write's on a Milvus
        server (``None`` on milvus-lite), as ``upsert`` does."""
        if not ids:
            return None
        expression = ids_expression(list(ids))
        if self.segmented(name):
            expression = ids_expression(list(ids), DOCUMENT_FIELD)
        return self._delete(name, expression)

    def delete_stale(self, name: str, segments: dict[str, int]) -> int | None:
        """Delete the segments of each document of ``segments`` from its count on (those
        of an older revision that had more): none of an old revision stays behind."""
        if not segments or not self.segmented(name):
            return None
        by_count: dict[int, list[str]] = {}
        for document, count in segments.items():
            by_count.setdefault(count, []).append(document)
        expression = " or ".join(
            f"({ids_expression(documents, DOCUMENT_FIELD)} and {SEGMENT_FIELD} >= {count})"
            for count, documents in sorted(by_count.items())
        )
        return self._delete(name, expression)

    def _delete(self, name: str, expression: str) -> int | None:
        self._retry(lambda: self.client.delete(name, filter=expression))
        return None if self.is_lite else self._timestamp_now()

    def _timestamp_now(self) -> int:
        """A timestamp the server allocates now: later than that of every write it has
        acknowledged. For deletes, whose timestamp Milvus 2.3.5 returns as 0."""
        from pymilvus.client.utils import check_status
        from pymilvus.grpc_gen import milvus_pb2

        def allocate() -> int:
            stub = self.client._get_connection()._stub
            response = stub.AllocTimestamp(
                milvus_pb2.AllocTimestampRequest(), timeout=self._timeout
            )
            check_status(response.status)
            return int(response.timestamp)

        return self._retry(allocate)

    def flush(self, name: str) -> None:
        """Seal what was written to ``name``, on milvus-lite only: it searches rows never
        flushed ~10x slower. A Milvus server makes each write durable and searchable when it
        acknowledges it and seals segments itself; a flush after every write there only
        makes small segments and, while a restarted server recovers its channels, waits out
        the whole recovery (23 s measured on 2.3.5), holding its caller's thread."""
        if self.is_lite:
            self._retry(lambda: self.client.flush(name))

    def _firsts(self, name: str) -> str:
        """The expression selecting one row a document (its first segment)."""
        return f"{SEGMENT_FIELD} == 0" if self.segmented(name) else ""

    def count(self, name: str) -> int:
        """The documents ``name`` holds vectors for."""
        self.ensure_loaded(name)
        firsts = self._firsts(name)
        result = self._retry(
            lambda: self.client.query(
                name, filter=firsts, output_fields=["count(*)"], consistency_level=STRONG
            )
        )
        return int(result[0]["count(*)"])

    def present(self, name: str, ids: Sequence[str], batch: int = 1000) -> set[str]:
        """Those of ``ids`` that ``name`` holds a vector for (asked by key, ``batch`` at a
        time: cheap for a few ids in a large collection)."""
        self.ensure_loaded(name)
        found: set[str] = set()

        def query(expression: str) -> Any:
            return self.client.query(
                name, filter=expression, output_fields=[PK_FIELD], consistency_level=STRONG
            )

        for start in range(0, len(ids), batch):
            expression = ids_expression(list(ids[start : start + batch]))
            rows = self._retry(partial(query, expression))
            found.update(str(row[PK_FIELD]) for row in rows)
        return found

    def vectors(
        self, name: str, ids: Sequence[str], written_at: int | None = None, batch: int = 1000
    ) -> dict[str, np.ndarray]:
        """The stored vectors of those of ``ids`` that ``name`` holds (none if it does not
        exist), asked by key, ``batch`` at a time, as fresh as a search (``written_at``)."""
        if not ids or not self.exists(name):
            return {}
        self.ensure_loaded(name)
        found: dict[str, np.ndarray] = {}
        consistency = self._consistency(written_at)

        def query(expression: str) -> Any:
            return self.client.query(
                name,
                filter=expression,
                output_fields=[PK_FIELD, VECTOR_FIELD],
                **consistency,
            )

        for start in range(0, len(ids), batch):
            expression = ids_expression(list(ids[start : start + batch]))
            for row in self._retry(partial(query, expression)):
                found[str(row[PK_FIELD])] = np.asarray(row[VECTOR_FIELD], dtype=np.float32)
        return found

    def segment_vectors(
        self, name: str, ids: Sequence[str], written_at: int | None = None, batch: int = 100
    ) -> dict[str, list[tuple[tuple[float, float] | None, np.ndarray]]]:
        """Every stored vector of those of ``ids`` that ``name`` holds, with its segment's
        span: one, without a span, for a document that is not a segmented video."""
        if not ids or not self.exists(name):
            return {}
        if not self.segmented(name):
            stored = self.vectors(name, ids, written_at)
            return {doc: [(None, vector)] for doc, vector in stored.items()}
        self.ensure_loaded(name)
        consistency = self._consistency(written_at)
        outputs = [DOCUMENT_FIELD, START_FIELD, END_FIELD, VECTOR_FIELD]
        found: dict[str, list[tuple[tuple[float, float] | None, np.ndarray]]] = {}

        def query(expression: str) -> Any:
            return self.client.query(name, filter=expression, output_fields=outputs, **consistency)

        for start in range(0, len(ids), batch):
            expression = ids_expression(list(ids[start : start + batch]), DOCUMENT_FIELD)
            for row in self._retry(partial(query, expression)):
                span = (float(row[START_FIELD]), float(row[END_FIELD]))
                vector = np.asarray(row[VECTOR_FIELD], dtype=np.float32)
                found.setdefault(str(row[DOCUMENT_FIELD]), []).append(
                    (span if span[1] > 0 else None, vector)
                )
        return found

    def ids(self, name: str, batch: int = 5000) -> list[str]:
        """Every document id in ``name`` (for reconciliation against SQL), in key order,
        read in pages of ``batch``. Not pymilvus' ``query_iterator``: it writes the last key
        of a page into the next page's filter unescaped, so an id holding a quote breaks it.
        The same server-side ordering is asked for here, with the key as a literal."""
        from pymilvus.client.constants import ITERATOR_FIELD, REDUCE_STOP_FOR_BEST

        self.ensure_loaded(name)
        ordered = {ITERATOR_FIELD: "True", REDUCE_STOP_FOR_BEST: "True"}
        found: list[str] = []
        after: str | None = None

        def page(expression: str) -> Any:
            return self.client.query(
                name,
                filter=expression,
                output_fields=[PK_FIELD],
                limit=batch,
                consistency_level=STRONG,
                **ordered,
            )

        firsts = self._firsts(name)
        while True:
            following = (
                f'{PK_FIELD} != ""' if after is None else f"{PK_FIELD} > {string_literal(after)}"
            )
            if firsts:
                following = f"{following} and {firsts}"
            keys = [str(row[PK_FIELD]) for row in self._retry(partial(page, following))]
            if not keys:  # a short page is not the end: the server may stop a page early
                return found
            found += keys
            after = max(keys)

    def search(
        self,
        name: str,
        vector: np.ndarray,
        top_k: int,
        expression: str | None = None,
        ef: int | None = None,
        written_at: int | None = None,
    ) -> list[IndexHit]:
        """The ``top_k`` nearest documents by cosine, best first; none from a collection
        that does not exist. A collection this client has loaded is searched without first
        asking the server whether it exists (a round trip a search); should it have been
        dropped since (a reindex swapped generations), the failed search asks then.
        ``written_at``: the newest write timestamp known for ``name`` (from ``upsert`` and
        ``delete``), which a ``LastWrite`` search waits for instead of the next time tick.

        In a segmented collection a document is found once, by its best segment (whose time
        span the hit carries): while segments of the same documents fill the nearest rows,
        the search asks for more of them (four times as many each round, to Milvus' limit).
        """
        if name not in self._loaded:
            if not self.exists(name):
                return []
            self.ensure_loaded(name)
        if not self.segmented(name):
            return [
                IndexHit(str(row["id"]), float(row["distance"]))
                for row in self._search(name, vector, top_k, expression, ef, written_at, [])
            ]
        outputs = [DOCUMENT_FIELD, START_FIELD, END_FIELD]
        limit = top_k
        while True:
            rows = self._search(name, vector, limit, expression, ef, written_at, outputs)
            best: dict[str, IndexHit] = {}
            for row in rows:  # nearest first: a document's first row is its best segment
                entity = row["entity"]
                document = str(entity[DOCUMENT_FIELD])
                if document not in best:
                    start, end = float(entity[START_FIELD]), float(entity[END_FIELD])
                    span = (start, end) if end > 0 else None
                    best[document] = IndexHit(document, float(row["distance"]), span)
            if len(best) >= top_k or len(rows) < limit or limit >= MAX_TOP_K:
                return list(best.values())[:top_k]
            limit = min(limit * 4, MAX_TOP_K)

    def _search(
        self,
        name: str,
        vector: np.ndarray,
        limit: int,
        expression: str | None,
        ef: int | None,
        written_at: int | None,
        outputs: list[str],
    ) -> list[Any]:
        """One Milvus search of ``name``'s nearest ``limit`` rows, with ``outputs`` fields."""
        from pymilvus import MilvusException

        params = {"metric_type": "COSINE", "params": {"ef": max(ef or 0, limit, SEARCH_EF)}}
        data = [np.asarray(vector, dtype=np.float32).tolist()]
        consistency = self._consistency(written_at)

        def search() -> Any:
            return self.client.search(
                name,
                data=data,
                limit=limit,
                filter=expression or "",
                search_params=params,
                output_fields=[PK_FIELD, *outputs],
                **consistency,
            )

        try:
            result = self._retry(search)
        except MilvusException as exc:
            self._loaded.discard(name)
            if not self.exists(name):  # dropped since this client loaded it
                return []
            if exc.code != NOT_LOADED:
                raise
            self.ensure_loaded(name)  # the server restarted: load again
            result = search()
        return list(result[0])

    def _consistency(self, written_at: int | None) -> dict[str, Any]:
        """A search's consistency arguments. ``LastWrite`` with a write timestamp asks the
        server to answer once it has applied everything up to that write (Milvus'
        ``Customized`` level: the guarantee timestamp is the caller's); without one, or on
        milvus-lite (always strong), it is ``Strong``."""
        if self._search_consistency != LAST_WRITE:
            return {"consistency_level": self._search_consistency}
        if not written_at or self.is_lite:
            return {"consistency_level": STRONG}
        return {"consistency_level": CUSTOMIZED, "guarantee_timestamp": int(written_at)}

    def drop(self, name: str) -> None:
        self._retry(lambda: self.client.drop_collection(name))
        self._loaded.discard(name)
        self._segmented.pop(name, None)

    def close(self) -> None:
        self.client.close()


def _whole(row: dict[str, Any]) -> dict[str, Any]:
    """The segment fields of a row that is a whole document."""
    return {DOCUMENT_FIELD: row[PK_FIELD], SEGMENT_FIELD: 0, START_FIELD: 0.0, END_FIELD: 0.0}


def _with_presence(row: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """A row for a server without nulls: each missing value as its type's zero, flagged."""
    stored = dict(row)
    for field, kind in fields.items():
        value = row.get(field)
        stored[f"{PRESENT_PREFIX}{field}"] = value is not None
        stored[field] = ZERO[kind] if value is None else value
    return stored
