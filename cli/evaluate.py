"""``umarvel eval`` and ``umarvel similarity``: benchmark numbers and quality on your data."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


class ProgressBars:
    """One click progress bar per stage on stderr; ``bars(label, total)`` gives ``advance``."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __call__(self, label: str, total: int) -> Callable[[int], None]:
        self.close()
        self._bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
        self._bar.__enter__()
        return self._bar.update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def write_outputs(
    out: Path, summary: dict[str, Any], text: str, chart: Callable[..., None]
) -> None:
    """``results.json``, ``results.txt`` and ``results.png`` in ``out``; the table to stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.txt").write_text(text + "\n")
    chart(summary, out / "results.png")
    click.echo(text)
    click.echo(f"\nwrote {out / 'results.json'}, {out / 'results.txt'}, {out / 'results.png'}")
