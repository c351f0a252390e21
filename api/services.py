"""The handles the API uses, built once per app: SQL, Redis, the Celery client, media."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from core.celery_app import make_celery
from core.contract import Task
from core.settings import Settings
from media.store import MediaStore, open_media_store
from queries.cache import ResultCache
from queries.notices import JobNotices
from store.db import make_engine, make_session_factory
from store.fences import Fences
from store.redis import make_redis


@dataclass
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: Any
    fences: Fences
    cache: ResultCache
    celery: Celery
    media: MediaStore
    notices: JobNotices

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        redis = make_redis(settings.redis_url)
        return cls(
            settings=settings,
            sessions=make_session_factory(
                make_engine(settings.database_url, pool_size=settings.database_pool_size), redis
            ),
            redis=redis,
            fences=Fences(redis),
            cache=ResultCache(redis, settings.result_ttl_seconds),
            celery=make_celery(settings),
            media=open_media_store(settings),
            notices=JobNotices(redis),
        )

    def send(self, task: Task, args: list[Any], countdown: float = 0.0) -> None:
        """Send a task by name (``ingestion.outbox.Send``)."""
        self.celery.send_task(task.value, args=args, countdown=countdown or None)


def services() -> Services:
    return current_app.extensions["umarvel"]
