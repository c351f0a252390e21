"""``GET /v1/audit``: the audit log, newest first, for admins whose key is not limited to
collections (store.audit)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g

from api.auth import require
from api.openapi import documented, responses
from api.responses import AuditPage
from api.schemas import AuditQuery, query_string
from api.services import services
from core.errors import Forbidden
from store.audit import Filters, page, view
from store.db import session_scope

bp = Blueprint("audit", __name__)


@bp.get("/v1/audit")
@documented(query=AuditQuery, resp=responses({200: AuditPage}, 400, 401, 403, 503), tags=["audit"])
def read_audit() -> Any:
    require("admin")
    grant = g.get("api_key")
    if grant is not None and grant.collections is not None:
        raise Forbidden("the audit log is for admin keys that are not limited to collections")
    query = query_string(AuditQuery)
    filters = Filters(
        action=query.action,
        key_id=query.key_id,
        outcome=query.outcome,
        target=query.target,
        since=query.since,
        until=query.until,
    )
    with session_scope(services().sessions) as session:
        events, cursor = page(session, filters, query.cursor, query.limit)
        return {
            "events": [view(event) for event in events],
            "next_cursor": cursor,
        }
