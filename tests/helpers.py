"""Helpers shared by the API tests."""

from __future__ import annotations

from typing import Any


def make_key(app: Any, scopes: list[str], collections: list[str] | None = None) -> str:
    from core.auth import create_key
    from core.db import session_scope

    with session_scope(app.extensions["umarvel"].sessions) as session:
        return create_key(session, "test", scopes, collections)[1]


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.json
    body = response.json
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]
