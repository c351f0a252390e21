"""Every runtime distribution's license, from its installed metadata, is one an Apache-2.0
project may depend on (docs/licenses.md), and that page's table is what is installed."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def licenses() -> ModuleType:
    name = "scripts_licenses"
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "licenses.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_every_runtime_distribution_has_a_license_compatible_with_apache_2(
    licenses: ModuleType,
) -> None:
    found = licenses.runtime_licenses()
    assert len(found) > 50
    refused = [f"{f.name} ({f.expression}, from {f.source})" for f in found if f.verdict == "no"]
    assert not refused, "licenses not allowed for a dependency of Apache-2.0 code: " + ", ".join(
        refused
    )


def test_the_reviewed_exceptions_are_nvidias_cuda_libraries(licenses: ModuleType) -> None:
    """The names excepted by hand are NVIDIA's, read as proprietary or unknown: an allowed
    license needs no exception, and an exception never hides another package's license."""
    for found in licenses.runtime_licenses():
        if found.name in licenses.REVIEWED:
            assert found.name.startswith(("nvidia-", "cuda-")), found.name
            assert "Proprietary" in found.expression or found.expression == "unknown", found


@pytest.mark.parametrize(
    ("expression", "allowed"),
    [
        ("MIT", True),
        ("Apache-2.0 AND BSD-2-Clause", True),
        ("Apache-2.0 WITH LLVM-exception", True),
        ("MPL-2.0 AND (Apache-2.0 OR MIT)", True),
        ("LGPL-3.0-only", True),
        ("MIT OR GPL-3.0-only", True),
        ("MIT AND GPL-3.0-only", False),
        ("GPL-2.0-or-later", False),
        ("AGPL-3.0-only", False),
        ("SSPL-1.0", False),
        ("LicenseRef-NVIDIA-Proprietary", False),
        ("GPL-2.0-only WITH Classpath-exception-2.0", False),
    ],
)
def test_the_rules_read_spdx_expressions(
    licenses: ModuleType, expression: str, allowed: bool
) -> None:
    assert licenses.allowed(expression) is allowed


def test_a_license_is_read_from_each_place_metadata_keeps_it(licenses: ModuleType) -> None:
    from email.message import Message

    class Fake:
        def __init__(self, **fields: str | list[str]) -> None:
            self.metadata = Message()
            self.metadata["Name"] = "Some_Package"
            for key, value in fields.items():
                for item in value if isinstance(value, list) else [value]:
                    self.metadata[key.replace("_", "-")] = item

    read = licenses.license_of
    gpl = "License :: OSI Approved :: GNU General Public License v3 (GPLv3)"
    assert read(Fake(License_Expression="MIT")).verdict == "yes"
    assert read(Fake(License="Apache 2.0 License")).expression == "Apache-2.0"
    assert read(Fake(License="MPL-2.0 AND MIT")).verdict == "yes"
    # Free text in License is left to the classifiers; a GPL classifier is refused.
    assert read(Fake(License="Copyright (c) someone", Classifier=gpl)).verdict == "no"
    # The field and the classifiers disagree: both must be allowed.
    proprietary = "License :: Other/Proprietary License"
    assert read(Fake(License="MIT", Classifier=proprietary)).verdict == "no"
    assert read(Fake()).verdict == "no"  # nothing stated
    assert read(Fake()).name == "some-package"


def test_the_docs_table_is_what_is_installed(licenses: ModuleType) -> None:
    doc = (ROOT / "docs" / "licenses.md").read_text()
    table = doc.split(licenses.START, 1)[1].split(licenses.END, 1)[0]
    assert table == licenses.table(), "docs/licenses.md: `python scripts/licenses.py --write`"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert project["license"] == client["license"] == "Apache-2.0"
