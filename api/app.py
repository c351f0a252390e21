"""The Flask application factory."""

from __future__ import annotations

from flask import Flask

from api.audit import register_audit
from api.auth import register_auth
from api.errors import register_error_handlers, retrying
from api.limits import register_body_limits
from api.metrics import register_metrics
from api.openapi import register_openapi
from api.services import Services
from api.validation import register_url_checks
from core import tracing
from core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask("umarvel")
    tracing.setup(settings, "umarvel-api", app)  # before the clients exist: they are traced
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    init_extensions(app, settings)
    register_metrics(app)
    register_url_checks(app)
    register_auth(app)
    register_body_limits(app, settings)
    register_audit(app)
    register_blueprints(app)
    retry_lost_races(app)
    register_openapi(app)
    register_error_handlers(app)
    return app


def init_extensions(app: Flask, settings: Settings) -> None:
    app.extensions["umarvel"] = Services.from_settings(settings)


def retry_lost_races(app: Flask) -> None:
    """Run a view again when its transaction lost a race with another request (a deadlock,
    a serialization failure, the same new row inserted twice); after the last try the
    error handler answers 409 with the reason. Views commit before any side effect that a
    retry could repeat (tasks are sent after the commit; media writes are idempotent)."""
    for endpoint, view in list(app.view_functions.items()):
        app.view_functions[endpoint] = retrying(view)


def register_blueprints(app: Flask) -> None:
    from api.routes import (
        audit,
        browse,
        collections,
        console,
        documents,
        health,
        media,
        queries,
    )

    for module in (health, collections, documents, browse, queries, media, audit, console):
        app.register_blueprint(module.bp)
