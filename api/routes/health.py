"""Liveness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import text

from api.openapi import documented, responses
from api.responses import Liveness, Readiness
from api.services import services
from core.contract import Queue
from core.version import VERSION
from store.db import session_scope
from store.heartbeats import read_heartbeats

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented(resp=responses({200: Liveness}, 400), tags=["health"], security={})
def healthz() -> Any:
    return {"status": "ok", "version": VERSION}


@bp.get("/readyz")
@documented(resp=responses({200: Readiness, 503: Readiness}, 400), tags=["health"], security={})
def readyz() -> Any:
    """Ready when SQL and Redis answer and every queue has a worker with a warm model."""
    svc = services()
    checks: dict[str, Any] = {}
    try:
        with session_scope(svc.sessions) as session:
            session.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    try:
        svc.redis.ping()
        checks["redis"] = {"ok": True}
        for queue in Queue:
            beats = read_heartbeats(svc.redis, queue)
            warm = [b for b in beats if b.get("warm")]
            checks[f"queue:{queue}"] = {
                "ok": bool(warm),
                "workers": len(beats),
                "warm": len(warm),
                # How many report a model error; its text is in their logs, not on a public
                # endpoint (it can name paths, hosts and models).
                "failing": sum(1 for b in beats if b.get("error")),
            }
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    ready = all(check["ok"] for check in checks.values()) and len(checks) == 2 + len(Queue)
    return {"status": "ready" if ready else "not_ready", "checks": checks}, (200 if ready else 503)
