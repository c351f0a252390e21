"""format_string, UniIR's text normalisation (SPEC section 2)."""

from __future__ import annotations

import pytest

from mllm.text import format_string


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\r\nb", "A\nb."),  # every "\r" goes, not only those at the ends
        ('\r"q"\r', "Q."),  # removed before the quotes are stripped
        ("line one\r\nline two", "Line one\nline two."),
        ("\r\r", ""),
        ('  "said it"  ', "Said it."),
        ("why?\r", "Why?"),
    ],
)
def test_format_string(raw: str, expected: str) -> None:
    assert format_string(raw) == expected
