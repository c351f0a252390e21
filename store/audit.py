"""The audit log: every admin action and every request refused for auth or quota, in SQL.

What enterprise buyers ask for first (SOC 2): who did what, to what, how it ended, when.
Admin actions through the API (collections created, changed, deleted or reindexed,
documents ingested or deleted) are recorded by the API after each answer
(``api.audit``), and so is every request refused with 401, 403 or 429; key changes made
with the CLI (create, revoke, quotas) are recorded in the same transaction as the change.
Events are kept ``UMARVEL_AUDIT_RETENTION_DAYS`` and then deleted by the clean-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from store.tables import AuditEvent, utcnow


class Outcome(StrEnum):
    OK = "ok"  # done
    FAILED = "failed"  # refused for the request itself (400, 404, 409, ...) or an error
    REFUSED = "refused"  # refused for who asked: auth (401, 403) or quota (429)


def outcome_of(status: int) -> Outcome:
    if status < 400:
        return Outcome.OK
    return Outcome.REFUSED if status in (401, 403, 429) else Outcome.FAILED


def record(
    session: Session,
    action: str,
    outcome: Outcome,
    *,
    key_id: int | None = None,
    key_prefix: str | None = None,
    target: str | None = None,
    status: int | None = None,
    detail: str | None = None,
) -> AuditEvent:
    """Add one event to the caller's transaction."""
    event = AuditEvent(
        key_id=key_id,
        key_prefix=key_prefix,
        action=action,
        target=None if target is None else target[:600],
        outcome=outcome,
        status=status,
        detail=None if detail is None else detail[:2000],
    )
    session.add(event)
    return event


@dataclass(frozen=True)
class Filters:
    action: str | None = None
    key_id: int | None = None
    outcome: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def page(
    session: Session, filters: Filters, before: int | None, limit: int
) -> tuple[list[AuditEvent], int | None]:
    """Events newest first, those with an id below ``before`` (a cursor); and the cursor of
    the next page (None: this is the last)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(AuditEvent.id < before)
    if filters.action:
        query = query.where(AuditEvent.action == filters.action)
    if filters.key_id is not None:
        query = query.where(AuditEvent.key_id == filters.key_id)
    if filters.outcome:
        query = query.where(AuditEvent.outcome == filters.outcome)
    if filters.target:
        query = query.where(AuditEvent.target == filters.target)
    if filters.since is not None:
        query = query.where(AuditEvent.at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.at < filters.until)
    events = list(session.scalars(query))
    more = len(events) > limit
    events = events[:limit]
    return events, (events[-1].id if more and events else None)


def view(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "key_id": event.key_id,
        "key_prefix": event.key_prefix,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "status": event.status,
        "detail": event.detail,
    }


def expire(session: Session, retention_days: int) -> int:
    """Delete events older than ``retention_days``; returns how many."""
    cutoff = utcnow() - timedelta(days=retention_days)
    result = session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
