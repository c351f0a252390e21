"""The version the API, the CLI and the workers report: the installed distribution's."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("umarvel-search")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION = package_version()
