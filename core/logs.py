"""Structured logs: one ``key=value`` line per event, with the job id and collection when known.

ts=2026-11-26T12:00:00.123Z level=INFO logger=api event=request method=POST
route=/v1/collections/<name>/queries status=202 ms=8.1 job_id=ab12 collection=docs
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

# Attributes of a record that are context fields rather than logging's own.
FIELDS = (
    "event",
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


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname}",
            f"logger={record.name}",
        ]
        parts += [
            f"{name}={_value(getattr(record, name))}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        ]
        parts.append(f"msg={_value(record.getMessage())}")
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure_logging(level: str = "INFO") -> None:
    """Every log line of the process as key=value on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the request line is ours
