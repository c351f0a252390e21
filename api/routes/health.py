"""Liveness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.openapi import documented, responses

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented(resp=responses(200), tags=["health"], security={})
def healthz() -> Any:
    return {"status": "ok"}
