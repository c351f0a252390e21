"""WSGI entry point: ``gunicorn api.wsgi:app``."""

from api.app import create_app
from core.logs import configure_logging

configure_logging()
app = create_app()
