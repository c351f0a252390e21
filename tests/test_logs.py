"""Structured logs (key=value and JSON) and the metrics an operator reads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from core.logs import KeyValueFormatter

ROOT = Path(__file__).resolve().parent.parent


def _line(**extra: object) -> str:
    record = logging.LogRecord("api", logging.INFO, __file__, 1, "request done", None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return KeyValueFormatter().format(record)


def test_fields_are_key_value_and_quoted_when_needed() -> None:
    line = _line(event="request", status=202, job_id="ab12", collection="docs", route="/v1/x y")
    assert line.startswith("ts=")
    assert " level=INFO logger=api event=request " in line
    assert "status=202 " in line
    assert "job_id=ab12 collection=docs" in line
    assert 'route="/v1/x y"' in line
    assert line.endswith('msg="request done"')


def test_absent_fields_are_left_out_and_quotes_escaped() -> None:
    line = _line(error='bad "thing"')
    assert "job_id" not in line
    assert 'error="bad \\"thing\\""' in line


def test_every_field_of_an_event_is_kept() -> None:
    """An ingestion chunk's counts reach the log (a fixed field list used to drop them)."""
    line = _line(task="ingest.run", job_id="j1", indexed=4, failed=0, ms=12.5)
    assert "job_id=j1 task=ingest.run " in line  # the known fields first, in their order
    assert "failed=0 indexed=4 " in line  # then the others, by name


def test_json_lines_carry_the_same_fields() -> None:
    import json

    from core.logs import JsonFormatter

    record = logging.LogRecord("ingestion", logging.WARNING, __file__, 1, "repair %s", ("x",), None)
    record.job_id, record.missing = "j2", 3
    event = json.loads(JsonFormatter().format(record))
    assert {k: event[k] for k in ("level", "logger", "job_id", "missing", "msg")} == {
        "level": "WARNING",
        "logger": "ingestion",
        "job_id": "j2",
        "missing": 3,
        "msg": "repair x",
    }
    assert event["ts"].endswith("Z")


def test_the_queue_depth_is_the_latest_reading_across_processes(tmp_path: Path) -> None:
    """Two API processes scrape one after the other: the later reading is the depth."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for depth in (1000, 3):
        code = f"from core.metrics import QUEUE_DEPTH; QUEUE_DEPTH.labels('recall').set({depth})"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
    render = "from core.metrics import render; print(render()[0].decode())"
    done = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, cwd=ROOT, capture_output=True
    )
    assert 'umarvel_queue_depth{queue="recall"} 3.0' in done.stdout.decode()
