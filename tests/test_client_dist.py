"""The client as a distribution of its own (client/): the server's version, its one
dependency, its license, the install rules that put both in one pip command, and a fresh
virtual environment that installs it without any of the server's packages."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import umarvel_client
from core.version import VERSION

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client"
SERVER_ONLY = {"torch", "flask", "celery", "transformers"}


def _project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())["project"]


def test_the_client_has_the_servers_version() -> None:
    server = _project(ROOT)
    assert umarvel_client.__version__ == server["version"]
    if VERSION != "unknown":  # core.version reads the installed server's metadata
        assert umarvel_client.__version__ == VERSION
    # The server depends on exactly this client.
    assert f"umarvel-client=={server['version']}" in server["dependencies"]


def test_the_client_distribution_needs_only_httpx() -> None:
    client = _project(CLIENT)
    assert client["name"] == "umarvel-client"
    assert client["dynamic"] == ["version"]
    assert [re.split(r"[<>=!~ ]", pin)[0] for pin in client["dependencies"]] == ["httpx"]
    assert client["license"] == "Apache-2.0"
    assert (CLIENT / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert (CLIENT / "umarvel_client" / "py.typed").exists()
    # The server no longer packages it.
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any(
        p.startswith(("client", "umarvel_client")) for p in found["packages"]["find"]["include"]
    )


def test_make_installs_the_client_and_the_server_in_one_pip_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    # The recipe of the install stamp (`make constraints` reinstalls without constraints).
    stamp = makefile.split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0]
    (install,) = [line for line in stamp.splitlines() if "pip install" in line]
    assert install.endswith("-c constraints.txt -e ./client -e '.[worker,dev,tracing]'")
    assert re.search(r"^\$\(STAMP\):.*\bclient/pyproject\.toml\b", makefile, re.MULTILINE)


@pytest.mark.slow_install
def test_a_fresh_virtual_environment_installs_the_client_alone(tmp_path: Path) -> None:
    """``pip install client/`` from the package index into a new venv: the client imports,
    is typed, and brings none of the server's packages."""
    # A copy of client/, so that the build's egg-info and build/ stay out of the checkout.
    source = tmp_path / "client"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> str:
        done = subprocess.run(
            [python, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source))
    probe = (
        "import json, sys, pathlib, umarvel_client; "
        "folder = pathlib.Path(umarvel_client.__file__).parent; "
        "print(json.dumps([str(folder), umarvel_client.__version__, sorted(sys.modules)]))"
    )
    folder, version, modules = json.loads(run("-c", probe))
    assert Path(folder).is_relative_to(venv), folder  # the installed copy, not the checkout
    assert (Path(folder) / "py.typed").exists()
    assert version == umarvel_client.__version__
    assert not {m.split(".")[0] for m in modules} & (SERVER_ONLY | {"core", "api", "cli"})
    installed = {d["name"].lower() for d in json.loads(run("-m", "pip", "list", "--format=json"))}
    assert {"umarvel-client", "httpx"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY

    # mypy --strict checks a caller against the installed distribution (its py.typed), and
    # catches a wrong argument: the types reach callers.
    good = tmp_path / "caller.py"
    good.write_text(CALLER)
    assert _strict(python, good).returncode == 0, _strict(python, good).stdout
    bad = tmp_path / "bad_caller.py"
    bad.write_text(CALLER.replace("top_k=5", 'top_k="five"'))
    checked = _strict(python, bad)
    assert checked.returncode == 1
    assert 'Argument "top_k" to "search" of "Client" has incompatible type "str"' in checked.stdout


CALLER = """\
from pathlib import Path

from umarvel_client import AsyncClient, Client, SearchResult


def find(api: Client) -> list[str]:
    result: SearchResult = api.search("clips", text="a cat", candidates="video", top_k=5)
    spans = [hit.segment["start"] for hit in result.hits if hit.segment is not None]
    clip = {"kind": "video", "data": Path("a.mp4")}
    api.documents.ingest("clips", [{"id": "a", "media": [clip]}])
    return [hit.document_id for hit in result.hits if hit.score > 0.5 and spans]


async def find_later(api: AsyncClient) -> float | None:
    async with api:
        result = await api.search("clips", video=Path("q.mp4"))
    return result.hits[0].cosine if result.hits else None


with Client("http://localhost:8000", "key") as api:
    print(find(api))
"""


def _strict(python: str, caller: Path) -> subprocess.CompletedProcess[str]:
    """The project's mypy, --strict, resolving imports in the fresh environment."""
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    command += ["--python-executable", python, str(caller)]
    return subprocess.run(command, capture_output=True, text=True, cwd=caller.parent, check=False)
