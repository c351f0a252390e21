"""Recording the API's part of the audit log (store.audit), and reading it back.

After every answer: an admin action (whatever its outcome) and any request refused for
who asked (401, 403, 429) become one event, written in a transaction of its own after the
request's own. A failure to write it is logged, never turned into the client's error.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, request

from api.services import services
from store.audit import outcome_of, record
from store.db import session_scope

log = logging.getLogger(__name__)

ADMIN_ACTIONS = {
    "collections.create_collection": "collection.create",
    "collections.update_collection": "collection.update",
    "collections.delete_collection": "collection.delete",
    "collections.reindex_collection": "collection.reindex",
    "documents.ingest_documents": "documents.ingest",
    "documents.delete_document": "document.delete",
    "documents.delete_documents": "documents.delete",
}
REFUSALS = frozenset({401, 403, 429})


def register_audit(app: Flask) -> None:
    @app.after_request
    def _audit(response: Response) -> Response:
        action = ADMIN_ACTIONS.get(request.endpoint or "")
        if action is None and response.status_code not in REFUSALS:
            return response
        try:
            _record(action or f"request:{request.endpoint or request.path}", response)
        except Exception:  # the answer stands; the operator sees the gap in the log
            log.warning("audit event not recorded", exc_info=True)
        return response


def _record(action: str, response: Response) -> None:
    grant = g.get("api_key")
    status = response.status_code
    with session_scope(services().sessions) as session:
        record(
            session,
            action,
            outcome_of(status),
            key_id=grant.id if grant is not None else None,
            key_prefix=None if grant is not None else _presented_prefix(),
            target=_target(),
            status=status,
            detail=_detail(response),
        )


def _target() -> str | None:
    args = request.view_args or {}
    collection = g.get("collection") or args.get("name")
    parts = [str(collection)] if collection else []
    for name in ("document_id", "job_id"):
        if name in args:
            parts.append(str(args[name]))
    return "/".join(parts) or None


def _presented_prefix() -> str | None:
    """The prefix of a key that did not authenticate (the part ``umarvel keys list``
    shows of real keys), so that refusals can be traced to a caller."""
    header = request.headers.get("Authorization", "")
    secret = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    return secret[:12] or None


def _detail(response: Response) -> str | None:
    body: Any = response.get_json(silent=True) if response.is_json else None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    if "total" in body and "id" in body:  # an ingestion, reindex or delete job
        return f"job {body['id']}: {body['total']} documents"
    return None
