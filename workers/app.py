"""Entry point for ``celery -A workers.app worker``: the app with the tasks registered."""

from core.settings import get_settings
from workers.celery_app import make_celery

app = make_celery(get_settings(), include_tasks=True)
