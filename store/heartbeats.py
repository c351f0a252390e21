"""Worker heartbeats in Redis: written by workers (``workers.heartbeat``), read by the
API's ``/statusz`` and ``/readyz`` and by ``umarvel ready``."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "umarvel:heartbeat"


def heartbeat_key(queue: str, hostname: str) -> str:
    return f"{PREFIX}:{queue}:{hostname}"


def read_heartbeats(client: Any, queue: str) -> list[dict[str, Any]]:
    beats = []
    for key in client.scan_iter(match=f"{PREFIX}:{queue}:*"):
        raw = client.get(key)
        if raw is not None:
            beats.append(json.loads(raw))
    return beats
