"""The web console (static files in ``api/console/``, no build step) and the models a
collection may use, which its create form offers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, send_from_directory

from api.openapi import documented, responses
from api.responses import Models
from api.services import services
from core.errors import NotFound

bp = Blueprint("console", __name__)

FOLDER = Path(__file__).resolve().parent.parent / "console"
FILES = frozenset({"index.html", "console.js", "console.css"})
# The console runs only its own files: no inline script, nothing from another origin;
# images and videos are the API's own, fetched with the key and shown as blob: URLs.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


TEXT = {"schema": {"type": "string"}}
PAGE = {"content": {"text/html": TEXT}}
ASSET = {"content": {"text/html": TEXT, "text/javascript": TEXT, "text/css": TEXT}}


@bp.get("/console/")
@documented(
    resp=responses({200: None}, 400),
    tags=["console"],
    security={},
    extra={"responses": {"200": PAGE}},
)
def console() -> Any:
    """The web console: sign in with a key, collections, search, ingestion."""
    return _send("index.html")


@bp.get("/console/<file>")
@documented(
    resp=responses({200: None}, 400, 404),
    tags=["console"],
    security={},
    extra={"responses": {"200": ASSET}},
)
def console_file(file: str) -> Any:
    """One of the console's files."""
    return _send(file)


def _send(file: str) -> Any:
    if file not in FILES:
        raise NotFound(f"no console file {file!r}")
    response = send_from_directory(FOLDER, file, max_age=0)
    response.direct_passthrough = False  # the documented-route wrapper reads the body
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/v1/models")
@documented(resp=responses({200: Models}, 400, 401, 503), tags=["collections"])
def models() -> Any:
    """The recall models a new collection may name (``recall_model``); the first is the
    default. Any valid key may read it."""
    return {"recall_models": services().settings.recall_models}
