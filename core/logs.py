"""Structured logs: one line per event, ``key=value`` (logfmt) or JSON
(``UMARVEL_LOG_FORMAT``), with every field the event carries: the job id and collection
when known, and whatever else the code logged with it (an ingestion chunk's ``indexed`` and
``failed``, a repair's counts).

ts=2026-11-26T12:00:00.123Z level=INFO logger=api event=request method=POST
route=/v1/collections/<name>/queries status=202 ms=8.1 job_id=ab12 collection=docs
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

# The fields that come first, in this order; any other field the event carries follows.
FIELDS = (
    "event",
    "request_id",
    "method",
    "route",
    "status",
    "ms",
    "job_id",
    "collection",
    "task",
    "stage",
    "documents",
    "error",
)


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


# What every LogRecord has of its own: anything else on a record is a field of the event.
_RECORD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The event's fields, the known ones first: never a field left out."""
    extra = {
        name: value
        for name, value in vars(record).items()
        if name not in _RECORD and not name.startswith("_") and value is not None
    }
    known = [(name, extra.pop(name)) for name in FIELDS if name in extra]
    return known + sorted(extra.items())


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"ts={_stamp(record)}", f"level={record.levelname}", f"logger={record.name}"]
        parts += [f"{name}={_value(value)}" for name, value in fields(record)]
        parts.append(f"msg={_value(record.getMessage())}")
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines that parse JSON."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _stamp(record),
            "level": record.levelname,
            "logger": record.name,
        }
        event.update(fields(record))
        event["msg"] = record.getMessage()
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "logfmt": KeyValueFormatter,
    "json": JsonFormatter,
}


# The request a line belongs to: set by the API for each request (its ``X-Request-Id``, or
# a new one), carried to the workers in the tasks' headers and set again around each task.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REQUEST_ID_HEADER = "X-Request-Id"
_GOOD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(sent: str | None) -> str:
    """The client's request id when it is a sensible one, else a new one."""
    return sent if sent is not None and _GOOD_ID.match(sent) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record, whoever logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Every log line of the process on stderr, as ``fmt`` (default: the settings')."""
    if fmt is None:
        from core.settings import get_settings

        fmt = get_settings().log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[fmt]())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the request line is ours
