"""The server's distribution: base dependencies for the API, the model stack in the
``worker`` extra, and ``constraints.txt`` holding every runtime distribution's version."""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# The model stack: never needed by the API process, always by the workers.
MODEL_STACK = {"torch", "torchvision", "transformers", "tokenizers", "accelerate", "peft"}


def _script() -> ModuleType:
    """scripts/constraints.py, which lists the runtime distributions and writes the file."""
    spec = importlib.util.spec_from_file_location("constraints", ROOT / "scripts/constraints.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _script()


def _project() -> dict[str, Any]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version
    return pins


def _pins(lines: list[str]) -> dict[str, str]:
    """The ``==`` pins among requirement lines, by canonical name."""
    pins: dict[str, str] = {}
    for line in lines:
        requirement = Requirement(line)
        (spec, *others) = [*requirement.specifier] or [None]
        if spec is not None and spec.operator == "==" and not others:
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_model_stack_is_the_worker_extra() -> None:
    project = _project()
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert set(extras) == {"worker", "tracing", "dev"}
    worker = _pins(extras["worker"])
    assert not MODEL_STACK & base
    assert set(worker) >= MODEL_STACK, "every model-stack requirement is pinned exactly"
    # torch is pinned together with torchvision, as before the split.
    assert {"torch": "2.14.1", "torchvision": "0.29.1"}.items() <= worker.items()


def test_every_pin_of_pyproject_is_in_the_constraints(script: ModuleType) -> None:
    project = _project()
    constraints = _constraints()
    extras = project["optional-dependencies"]
    runtime = _pins(project["dependencies"] + extras["worker"] + extras["tracing"])
    for name in script.OWN:
        runtime.pop(name, None)
    assert runtime
    for name, version in runtime.items():
        assert constraints.get(name) == version, f"{name}=={version} in pyproject.toml"
    # A dev tool is left out; when it is also a runtime distribution, the versions agree.
    for name, version in _pins(project["optional-dependencies"]["dev"]).items():
        assert constraints.get(name, version) == version, f"{name}=={version} (dev)"
    assert not set(constraints) & script.OWN


def test_the_constraints_are_what_is_installed_here(script: ModuleType) -> None:
    """Every runtime distribution of this environment, at its version, and nothing else."""
    installed = {
        name: dist.version
        for name, dist in script.runtime_distributions().items()
        if name not in script.OWN
    }
    stale = "constraints.txt differs from this environment: `make constraints` writes it again"
    assert _constraints() == installed, stale
    text = (ROOT / "constraints.txt").read_text()
    assert text == script.constraints(), stale
    header = "".join(line for line in text.splitlines() if line.startswith("#"))
    assert "scripts/constraints.py" in header  # how it was produced
    assert "make constraints" in header  # how to refresh it


def _worker_only_modules(script: ModuleType) -> set[str]:
    """Top-level import names of the distributions the worker extra adds to the base."""
    worker = set(script.runtime_distributions(("worker",)))
    base = set(script.runtime_distributions(()))
    added = worker - base
    assert added >= MODEL_STACK
    return {
        top
        for top, dists in metadata.packages_distributions().items()
        if any(canonicalize_name(d) in added for d in dists)
    }


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )


def test_importing_the_api_loads_no_distribution_of_the_worker_extra(
    script: ModuleType,
) -> None:
    worker_only = _worker_only_modules(script)
    assert {"torch", "transformers", "torchvision", "peft", "accelerate"} <= worker_only
    probe = """
        import json, sys
        before = {name.split(".")[0] for name in sys.modules}
        import api.app
        after = {name.split(".")[0] for name in sys.modules}
        print(json.dumps(sorted(after - before)))
    """
    done = _run(probe)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "api" in loaded
    # redis imports OpenTelemetry when it is installed (the tracing extra), whose resource
    # detection then takes psutil if it happens to be there: optional, never needed (the
    # next test runs the API with every worker-only module missing).
    assert not loaded & worker_only - {"psutil"}, sorted(loaded & worker_only)


def test_the_api_and_its_migration_run_without_the_worker_extra(
    script: ModuleType, tmp_path: Path
) -> None:
    """As in the API image: every module of the worker extra missing, the application
    serves its health and OpenAPI document, and ``umarvel db upgrade`` migrates."""
    blocked = sorted(_worker_only_modules(script) - {"_distutils_hack"})  # set up by site
    probe = f"""
        import importlib.abc, sys

        BLOCKED = set({blocked!r})

        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, NotInstalled())

        from api.app import create_app
        from cli.main import main
        from core.settings import Settings

        database = "sqlite:///{tmp_path}/umarvel.db"
        sys.argv = ["umarvel", "db", "upgrade"]
        import os
        os.environ["UMARVEL_DATABASE_URL"] = database
        try:
            main()
        except SystemExit as exit:
            assert not exit.code, exit.code
        settings = Settings(
            database_url=database, redis_url="redis://127.0.0.1:1/0", media_root="{tmp_path}"
        )
        client = create_app(settings).test_client()
        assert client.get("/healthz").status_code == 200
        assert "/statusz" in client.get("/v1/openapi.json").json["paths"]
        print(sorted(BLOCKED & {{name.split(".")[0] for name in sys.modules}}))
    """
    done = _run(probe)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
