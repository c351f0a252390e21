"""Liveness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return {"status": "ok"}
