"""The OpenAPI document as a contract: schemathesis fuzzes every operation of the live API.

A real stack (PostgreSQL, Redis, milvus-lite, both workers, the API) serves a collection
with a document of each kind, an ingestion job, a query job and a stored image, so that
operations with path parameters reach real targets as well as missing ones. The
schemathesis CLI then runs over every operation of ``/v1/openapi.json`` for
``UMARVEL_FUZZ_SECONDS`` (default 45) and fails on any answer that is a server error,
has an undocumented status code or content type, does not match its documented schema,
or is not a proper 405 for an undocumented method.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cli.stack import Stack
from devkit.samples import b64, shape_image
from tests.conftest import live_stack

pytestmark = pytest.mark.integration

FUZZ_SECONDS = int(os.environ.get("UMARVEL_FUZZ_SECONDS", "45"))
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
]
COLLECTION = "fuzz"
# DELETE of a collection gets a spare of its own: deleting the one above would leave every
# other operation with nothing real to reach for the rest of the run.
SPARE = "fuzz_spare"
FIELDS = {"year": "int", "price": "float", "tag": "str", "public": "bool"}
HOOKS = Path(__file__).with_name("fuzz_hooks.py")


@pytest.fixture(scope="module")
def stack(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with live_stack(
        tiny_models,
        tmp_path_factory.mktemp("fuzz-stack"),
        # A generated recall_model for a reindex must fail at once, not try to download.
        extra_env={"HF_HUB_OFFLINE": "1"},
        heartbeat_seconds="0.5",
        # Generated queries may ask to wait; a short limit keeps each answer quick.
        max_wait_seconds="2",
    ) as running:
        running.wait_ready()
        yield running


def _until_done(http: requests.Session, url: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(url).json()
        if body.get("state") in ("done", "failed") or body.get("status") == "done":
            return body
        time.sleep(0.2)
    raise AssertionError(f"{url} did not finish: {body}")


def _targets(stack: Stack, key: str) -> dict[str, list[str]]:
    """Real values for each path parameter: a collection, its documents and jobs, an image."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    base = f"{stack.api_url}/v1/collections"
    for name in (COLLECTION, SPARE):
        created = http.post(base, json={"name": name, "metadata_fields": FIELDS})
        assert created.status_code == 201, created.text
    documents: list[dict[str, Any]] = [
        {
            "id": "both",
            "text": "a red circle",
            "image": b64(shape_image("red", "circle")),
            "metadata": {"year": 2001, "price": 9.5, "tag": "a", "public": True},
        },
        {"id": "text/only", "text": "a blue square", "metadata": {"year": 1999, "tag": "b"}},
        {"id": "image-only", "image": b64(shape_image("green", "triangle"))},
    ]
    ingestion = http.post(f"{base}/{COLLECTION}/documents", json={"documents": documents})
    assert ingestion.status_code == 202, ingestion.text
    job = _until_done(http, stack.api_url + ingestion.json()["url"])
    assert (job["state"], job["done"]) == ("done", 3), job
    query = http.post(f"{base}/{COLLECTION}/queries", json={"text": "a circle", "wait": 2})
    assert query.status_code in (200, 202), query.text
    query_job = _until_done(http, stack.api_url + query.json()["url"])
    image_url = http.get(f"{base}/{COLLECTION}/documents/both").json()["image_url"]
    return {
        "collections": [COLLECTION],
        "spare": [SPARE],
        "documents": [d["id"] for d in documents],
        "jobs": [job["id"], query_job["id"]],
        "media": [image_url.rsplit("/", 1)[1]],
    }


def _config(targets: dict[str, list[str]]) -> str:
    """schemathesis.toml: each path parameter takes a real value in half of the cases."""
    bindings = {
        "path.name": "collections",
        "path.document_id": "documents",
        "path.job_id": "jobs",
        "path.key": "media",
    }
    lines = []
    for dictionary, values in targets.items():
        lines += [f"[dictionaries.{dictionary}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    for parameter, dictionary in bindings.items():
        lines.append(f'"{parameter}" = {{ dictionary = "{dictionary}", probability = 0.5 }}')
    lines += [
        "",
        "[[operations]]",
        'include-operation-id = "delete_collection"',
        'parameters = { "path.name" = { dictionary = "spare", probability = 0.5 } }',
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(FUZZ_SECONDS + 400)  # the stack's start and the run itself
def test_every_operation_keeps_the_openapi_contract(stack: Stack, tmp_path: Path) -> None:
    key = stack.create_key(("admin",))
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(_targets(stack, key)))
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{stack.api_url}/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        ",".join(CHECKS),
        "--max-time",
        str(FUZZ_SECONDS),
        "--request-timeout",
        "30",
        "--workers",
        "1",
        "--generation-database",
        "none",  # every run starts afresh: no examples remembered from an earlier one
    ]
    if os.environ.get("UMARVEL_FUZZ_SEED"):  # to replay a run: its report prints the seed
        command += ["--seed", os.environ["UMARVEL_FUZZ_SEED"]]
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=tmp_path,  # where schemathesis keeps its cache, out of the work tree
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 300,
    )
    report = result.stdout + result.stderr
    print(report)
    print(f"schemathesis took {time.monotonic() - started:.0f} s")
    if result.returncode != 0:
        # A rare failure must be reproducible from the CI log alone: the report above names
        # each failing request (with a curl command) and the seed; the server's own lines
        # for what it could not answer follow.
        print("\n".join(_server_errors(stack)) or "the API logged no unhandled error")
    assert result.returncode == 0, "schemathesis found failures: its report is printed above"
    document = requests.get(f"{stack.api_url}/v1/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    tested = re.search(r"Tested:\s*(\d+)", report)
    assert tested is not None, "no count of tested operations in the report"
    assert int(tested.group(1)) == operations, "some operations were not tested"


def _server_errors(stack: Stack) -> list[str]:
    """The API's log lines of unhandled errors (with their tracebacks), and the request
    line logged with each."""
    log = (stack.log_dir or stack.workdir / "logs") / "api.log"
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if "level=ERROR" in line or "status=500" in line]
