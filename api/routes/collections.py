"""Collections: create, list, read, update, delete, reindex."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import require, visible
from api.openapi import documented, responses
from api.responses import CollectionList, CollectionOut, IngestJobOut
from api.schemas import CollectionCreate, CollectionUpdate, ReindexRequest, json_body
from api.services import services
from core.contract import SearchMode
from core.errors import Conflict, InvalidRequest, NotFound
from ingestion import outbox, reindex
from ingestion.outbox import Kind
from queries.views import ingest_job_view
from recall.filters import validate_fields
from recall.index import milvus_name
from recall.methods import parse_spec
from store.db import session_scope
from store.states import DocumentStatus
from store.tables import Collection, Document

bp = Blueprint("collections", __name__, url_prefix="/v1/collections")


def get_collection(session: Session, name: str) -> Collection:
    collection = session.scalar(select(Collection).where(Collection.name == name))
    if collection is None:
        raise NotFound(f"collection {name!r} does not exist")
    return collection


def allowed_model(name: str | None) -> str:
    """The recall model to use: the default, or one the operator allows (else a 400)."""
    allowed = services().settings.recall_models
    if name is None:
        return allowed[0]
    if name not in allowed:
        raise InvalidRequest(
            f"recall_model {name!r} is not allowed here; allowed: {allowed}",
            [{"field": "recall_model", "message": "not in UMARVEL_ALLOWED_RECALL_MODELS"}],
        )
    parse_spec(name)  # an operator's malformed spec is refused before any collection uses it
    return name


def render(session: Session, collection: Collection) -> dict[str, Any]:
    counts = dict(
        session.execute(
            select(Document.status, func.count())
            .where(Document.collection_id == collection.id)
            .group_by(Document.status)
        ).all()
    )
    return {
        "name": collection.name,
        "description": collection.description,
        "recall_model": collection.recall_model,
        "metric": collection.metric,
        "rerank": {
            "enabled": collection.rerank_enabled,
            "k": collection.rerank_k,
            "weight": collection.rerank_weight,
        },
        "metadata_fields": collection.metadata_fields,
        "search_mode": collection.search_mode,
        "version": collection.version,
        "generation": collection.generation,
        "milvus_collection": milvus_name(
            services().settings.milvus_prefix, collection.storage_name, collection.generation
        ),
        "reindex": None
        if collection.reindex_job_id is None
        else {
            "job_id": collection.reindex_job_id,
            "url": f"/v1/ingest-jobs/{collection.reindex_job_id}",
            "generation": collection.building_generation,
            "recall_model": collection.building_model,
        },
        "documents": {
            "total": sum(counts.values()),
            "indexed": counts.get(DocumentStatus.INDEXED, 0),
            "pending": counts.get(DocumentStatus.PENDING, 0),
            "failed": counts.get(DocumentStatus.FAILED, 0),
        },
        "created_at": collection.created_at.isoformat(),
    }


@bp.post("")
@documented(
    json=CollectionCreate,
    resp=responses({201: CollectionOut}, 400, 401, 403, 409, 413, 503),
    tags=["collections"],
)
def create_collection() -> Any:
    require("admin")
    body = CollectionCreate.model_validate(json_body(request))
    g.collection = body.name
    require("admin", body.name)  # a key limited to collections creates only those
    svc = services()
    settings = svc.settings
    collection = Collection(
        name=body.name,
        description=body.description,
        recall_model=allowed_model(body.recall_model),
        rerank_enabled=body.rerank.enabled,
        rerank_k=body.rerank.k or settings.default_rerank_k,
        rerank_weight=(
            body.rerank.weight if body.rerank.weight is not None else settings.default_rerank_weight
        ),
        metadata_fields=validate_fields(body.metadata_fields),
        search_mode=SearchMode(body.search_mode),
    )
    try:
        with session_scope(svc.sessions) as session:
            session.add(collection)
            session.flush()
            payload = render(session, collection)
    except IntegrityError:
        raise Conflict(f"collection {body.name!r} already exists") from None
    return payload, 201, {"Location": f"/v1/collections/{body.name}"}


@bp.get("")
@documented(resp=responses({200: CollectionList}, 400, 401, 503), tags=["collections"])
def list_collections() -> Any:
    require("search")
    with session_scope(services().sessions) as session:
        rows = session.scalars(select(Collection).order_by(Collection.name)).all()
        return {"collections": [render(session, c) for c in rows if visible(c.name)]}


@bp.get("/<name>")
@documented(resp=responses({200: CollectionOut}, 400, 401, 403, 404, 503), tags=["collections"])
def read_collection(name: str) -> Any:
    require("search", name)
    with session_scope(services().sessions) as session:
        return render(session, get_collection(session, name))


@bp.patch("/<name>")
@documented(
    json=CollectionUpdate,
    resp=responses({200: CollectionOut}, 400, 401, 403, 404, 409, 413, 503),
    tags=["collections"],
)
def update_collection(name: str) -> Any:
    require("admin", name)
    body = CollectionUpdate.model_validate(json_body(request))
    with session_scope(services().sessions) as session:
        collection = get_collection(session, name)
        if body.description is not None:
            collection.description = body.description
        if body.rerank is not None:
            rerank = body.rerank
            if rerank.enabled is not None:
                collection.rerank_enabled = rerank.enabled
            if rerank.k is not None:
                collection.rerank_k = rerank.k
            if rerank.weight is not None:
                collection.rerank_weight = rerank.weight
        if body.search_mode is not None:  # every document is keyword-indexed already
            collection.search_mode = SearchMode(body.search_mode)
        collection.version += 1  # defaults change answers: cached ones must not be served
        session.flush()
        return render(session, collection)


@bp.delete("/<name>")
@documented(resp=responses({204: None}, 400, 401, 403, 404, 409, 503), tags=["collections"])
def delete_collection(name: str) -> Any:
    """Delete the collection's rows at once; a worker drops its Milvus collections."""
    require("admin", name)
    svc = services()
    with session_scope(svc.sessions) as session:
        collection = get_collection(session, name)
        generations = list(range(1, reindex.highest_generation(session, collection) + 1))
        # The drop outlives the collection's rows: it is recorded in the same transaction.
        entry = outbox.add_vectors(session, Kind.DROP, collection.storage_name, generations)
        session.delete(collection)
    outbox.dispatch(svc.send, [entry])
    return "", 204


@bp.post("/<name>/reindex")
@documented(
    json=ReindexRequest,
    resp=responses({202: IngestJobOut}, 400, 401, 403, 404, 409, 413, 503),
    tags=["collections"],
    extra={"requestBody": {"required": False}},  # no body: the collection's own model
)
def reindex_collection(name: str) -> Any:
    """Build the next generation (optionally with a new recall model) beside the served
    one; search keeps answering from the old one until the new one is complete."""
    g.collection = name
    require("admin", name)
    body = ReindexRequest.model_validate(json_body(request) if request.content_length else {})
    svc = services()
    with session_scope(svc.sessions) as session:
        # Locked and read fresh: two requests at once must not both open a build.
        collection = session.scalar(
            select(Collection)
            .where(Collection.name == name)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist")
        model = allowed_model(body.recall_model) if body.recall_model else collection.recall_model
        job, plan = reindex.start(session, collection, model)
        g.job_id = job.id
        payload = ingest_job_view(job)
    outbox.dispatch(svc.send, [plan])
    return payload, 202, {"Location": payload["url"]}
