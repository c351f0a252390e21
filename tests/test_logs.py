"""Structured key=value logs."""

from __future__ import annotations

import logging

from core.logs import KeyValueFormatter


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
