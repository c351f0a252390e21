"""The runtime distributions of umarvel-search as installed here, and ``constraints.txt``.

Runtime means what the server's own requirements need (``pyproject.toml``: the base
dependencies and the extras named, ``worker`` by default), followed through each installed
distribution's requirements, their markers evaluated for this interpreter and the extras
asked for. The ``dev`` extra is not followed, and the project's own two distributions
(``umarvel-search``, ``umarvel-client``) are left out of the list.

    python scripts/constraints.py            # print constraints.txt
    python scripts/constraints.py --write    # write it at the root of the checkout

Run it in the environment that passes the test suite; ``make constraints`` reinstalls from
``pyproject.toml``'s pins alone and runs it, after any change of a pin.
``tests/test_packaging.py`` checks that every ``==`` pin of ``pyproject.toml`` is in
``constraints.txt`` at the same version.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OWN = frozenset({"umarvel-search", "umarvel-client"})
RUNTIME_EXTRAS = ("worker", "tracing")

HEADER = """\
# The version of every runtime distribution of umarvel-search (the base dependencies and
# the worker and tracing extras, followed through their own requirements; the dev extra and the
# project's own two distributions left out), as installed in the environment that passes
# the test suite. pip takes it with -c: the images and `make` install with it.
#
# Produced by `python scripts/constraints.py --write` in that environment. To refresh it
# after changing a pin in pyproject.toml, run `make constraints`: it installs from
# pyproject.toml's pins alone, then writes this file again. Do not edit it by hand:
# tests/test_packaging.py checks that every == pin of pyproject.toml is here at the same
# version.
"""


def project_requirements(extras: tuple[str, ...] = RUNTIME_EXTRAS) -> list[Requirement]:
    """The server's own requirements: the base dependencies and ``extras``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def runtime_distributions(
    extras: tuple[str, ...] = RUNTIME_EXTRAS,
) -> dict[str, metadata.Distribution]:
    """Every installed distribution the server needs at run time, by canonical name (the
    project's own two included: callers leave them out as they need)."""
    found: dict[str, metadata.Distribution] = {}
    wanted: list[tuple[Requirement, set[str]]] = [
        (r, set()) for r in project_requirements(extras) if _applies(r, set())
    ]
    followed: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        requirement, _ = wanted.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in followed:
            continue
        followed.add(key)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is not installed here") from None
        found[name] = distribution
        asked = set(requirement.extras)
        for line in distribution.requires or []:
            needed = Requirement(line)
            if _applies(needed, asked):
                wanted.append((needed, asked))
    return found


def constraints() -> str:
    pins = sorted(
        (canonicalize_name(d.metadata["Name"]), d.version)
        for name, d in runtime_distributions().items()
        if name not in OWN
    )
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins)


def main(argv: list[str]) -> int:
    text = constraints()
    if argv == ["--write"]:
        (ROOT / "constraints.txt").write_text(text)
    elif not argv:
        sys.stdout.write(text)
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
