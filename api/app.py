"""The Flask application factory."""

from __future__ import annotations

from flask import Flask

from api.auth import register_auth
from api.errors import register_error_handlers
from api.metrics import register_metrics
from api.openapi import register_openapi
from api.services import Services
from core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask("umarvel")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    init_extensions(app, settings)
    register_metrics(app)
    register_auth(app)
    register_blueprints(app)
    register_openapi(app)
    register_error_handlers(app)
    return app


def init_extensions(app: Flask, settings: Settings) -> None:
    app.extensions["umarvel"] = Services.from_settings(settings)


def register_blueprints(app: Flask) -> None:
    from api.routes import collections, documents, health, media, queries

    for module in (health, collections, documents, queries, media):
        app.register_blueprint(module.bp)
