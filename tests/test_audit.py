"""The audit log records a scripted admin session exactly: key changes made with the CLI,
admin actions through the API whatever their outcome, and requests refused for auth or
quota; admins read it back with filters and a cursor, and it expires."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import update

from api.app import create_app
from cli.main import main
from core.settings import Settings
from store.audit import expire
from store.db import session_scope
from store.tables import AuditEvent, utcnow
from tests.helpers import error


def _key(runner: CliRunner, *args: str) -> tuple[int, str]:
    created = runner.invoke(main, ["keys", "create", *args])
    assert created.exit_code == 0, created.output
    first, secret = created.output.strip().splitlines()
    return int(first.split()[1]), secret


def test_a_scripted_admin_session_is_recorded_exactly(
    runner: CliRunner, migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    admin_id, admin = _key(runner, "ops", "--scope", "admin")
    search_id, search = _key(runner, "team", "--scope", "search", "--collection", "docs")
    assert runner.invoke(main, ["keys", "quotas", str(search_id), "--queued", "1"]).exit_code == 0
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        query_wait_seconds=0,
    )
    client = create_app(settings).test_client()
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_search = {"Authorization": f"Bearer {search}"}

    assert (
        client.post("/v1/collections", json={"name": "docs"}, headers=as_admin).status_code == 201
    )
    docs = {"documents": [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}]}
    ingested = client.post("/v1/collections/docs/documents", json=docs, headers=as_admin).json
    assert (
        client.patch(
            "/v1/collections/docs", json={"description": "x"}, headers=as_admin
        ).status_code
        == 200
    )
    assert client.delete("/v1/collections/docs/documents/a", headers=as_admin).status_code == 204
    assert error(client.post("/v1/collections", json={"name": "docs"}, headers=as_admin), 409)
    # Refused for who asked: a search key at an admin route, a bad key, a key over quota.
    assert error(client.post("/v1/collections", json={"name": "x"}, headers=as_search), 403)
    assert error(client.get("/v1/collections", headers={"Authorization": "Bearer umk_nope"}), 401)
    query = {"text": "q", "rerank": {"enabled": False}}
    assert (
        client.post("/v1/collections/docs/queries", json=query, headers=as_search).status_code
        == 202
    )
    again = {"text": "q2", "rerank": {"enabled": False}}
    assert error(client.post("/v1/collections/docs/queries", json=again, headers=as_search), 429)
    assert client.delete("/v1/collections/docs", headers=as_admin).status_code == 204
    assert runner.invoke(main, ["keys", "revoke", str(search_id)]).exit_code == 0

    listed = runner.invoke(main, ["audit", "--json", "--limit", "100"])
    assert listed.exit_code == 0, listed.output
    events = [json.loads(line) for line in listed.output.splitlines()][::-1]  # oldest first
    seen = [(e["action"], e["outcome"], e["key_id"], e["target"], e["status"]) for e in events]
    assert (
        seen
        == [
            ("keys.create", "ok", None, f"key {admin_id} ({admin[:12]})", None),
            ("keys.create", "ok", None, f"key {search_id} ({search[:12]})", None),
            ("keys.quotas", "ok", None, f"key {search_id} ({search[:12]})", None),
            ("collection.create", "ok", admin_id, "docs", 201),
            ("documents.ingest", "ok", admin_id, "docs", 202),
            ("collection.update", "ok", admin_id, "docs", 200),
            ("document.delete", "ok", admin_id, "docs/a", 204),
            ("collection.create", "failed", admin_id, "docs", 409),
            (
                "collection.create",
                "refused",
                search_id,
                None,
                403,
            ),  # refused before its body is read
            ("request:collections.list_collections", "refused", None, None, 401),
            ("request:queries.submit_query", "refused", search_id, "docs", 429),
            ("collection.delete", "ok", admin_id, "docs", 204),
            ("keys.revoke", "ok", None, f"key {search_id} ({search[:12]})", None),
        ]
    )
    assert events[4]["detail"] == f"job {ingested['id']}: 2 documents"
    assert events[9]["key_prefix"] == "umk_nope"
    assert "queued" in events[10]["detail"]

    # Admins read it over HTTP, filtered, a page at a time.
    page = client.get("/v1/audit?limit=2", headers=as_admin).json
    assert [e["action"] for e in page["events"]] == ["keys.revoke", "collection.delete"]
    older = client.get(f"/v1/audit?limit=2&cursor={page['next_cursor']}", headers=as_admin).json
    assert [e["id"] for e in older["events"]] == [events[-3]["id"], events[-4]["id"]]
    refused = client.get("/v1/audit?outcome=refused", headers=as_admin).json
    assert [e["status"] for e in refused["events"]] == [429, 401, 403]
    assert refused["next_cursor"] is None
    assert error(client.get("/v1/audit?outcome=maybe", headers=as_admin), 400)
    for past_int4 in ("key_id", "cursor"):  # SQL INTEGER columns: a 400, not a database error
        assert error(client.get(f"/v1/audit?{past_int4}={2**31}", headers=as_admin), 400)


def test_a_key_limited_to_collections_cannot_read_the_audit_log(
    runner: CliRunner, migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    _, limited = _key(runner, "team-admin", "--scope", "admin", "--collection", "docs")
    settings = Settings(database_url=migrated_url, redis_url=redis_url, media_root=tmp_path)
    client = create_app(settings).test_client()
    assert error(client.get("/v1/audit", headers={"Authorization": f"Bearer {limited}"}), 403)


def test_events_past_their_retention_are_deleted(runner: CliRunner, migrated_url: str) -> None:
    _key(runner, "old", "--scope", "search")
    _key(runner, "new", "--scope", "search")
    from store.db import make_engine, make_session_factory

    sessions = make_session_factory(make_engine(migrated_url))
    with session_scope(sessions) as session:
        oldest = min(session.query(AuditEvent.id).all())[0]
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.id == oldest)
            .values(at=utcnow() - timedelta(days=400))
        )
    with session_scope(sessions) as session:
        assert expire(session, 365) == 1
    with session_scope(sessions) as session:
        assert session.query(AuditEvent).count() == 1
