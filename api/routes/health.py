"""Liveness, readiness of this API process, and the status of the whole system.

``/readyz`` is the probe of one API process: it serves as long as SQL and Redis answer,
whatever the workers do, so a restarting worker never takes API replicas out of their load
balancer. ``/statusz`` gives the verdict of the whole system: it adds a warm worker for
every queue. Both report the same checks, and both are public like ``/healthz``: they
disclose the same counts, no model error and nothing of any collection.
"""

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

PROCESS_CHECKS = ("database", "redis")


@bp.get("/healthz")
@documented(resp=responses({200: Liveness}, 400), tags=["health"], security={})
def healthz() -> Any:
    return {"status": "ok", "version": VERSION}


def _checks() -> dict[str, Any]:
    """SQL, Redis, then each queue's workers (read from Redis, so absent when it is away)."""
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
    return checks


def _verdict(checks: dict[str, Any], ready: bool) -> Any:
    return {"status": "ready" if ready else "not_ready", "checks": checks}, (200 if ready else 503)


@bp.get("/readyz")
@documented(resp=responses({200: Readiness, 503: Readiness}, 400), tags=["health"], security={})
def readyz() -> Any:
    """This API process can serve: SQL and Redis answer. Each queue's workers are reported
    in the checks but do not count (`GET /statusz` gives that verdict)."""
    checks = _checks()
    return _verdict(checks, all(checks[name]["ok"] for name in PROCESS_CHECKS))


@bp.get("/statusz")
@documented(resp=responses({200: Readiness, 503: Readiness}, 400), tags=["health"], security={})
def statusz() -> Any:
    """The whole system can serve: SQL and Redis answer and every queue has a worker with a
    warm model."""
    checks = _checks()
    every_queue = len(checks) == len(PROCESS_CHECKS) + len(Queue)
    return _verdict(checks, every_queue and all(check["ok"] for check in checks.values()))
