"""Shared fixtures: tiny models, real SQL databases (SQLite and PostgreSQL), Redis, Milvus.

PostgreSQL: a fresh database per test on UMARVEL_TEST_POSTGRES (default: the server on
127.0.0.1:5432), dropped afterwards. Redis: database UMARVEL_TEST_REDIS_DB
(default 15), flushed before use.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from devkit.tiny_models import ARCHS

if TYPE_CHECKING:
    from cli.stack import MilvusStandalone, Stack

POSTGRES_ADMIN_URL = os.environ.get(
    "UMARVEL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = "redis://127.0.0.1:6379/" + os.environ.get("UMARVEL_TEST_REDIS_DB", "15")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from devkit.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny-models"))


# One embedder and one reranker per architecture, loaded once for each test module.
@pytest.fixture(scope="module")
def embedders(tiny_models: dict[str, Path]) -> dict[str, Any]:
    from recall import Embedder

    return {arch: Embedder.from_pretrained(str(path)) for arch, path in tiny_models.items()}


@pytest.fixture
def embedder(embedders: dict[str, Any], arch: str) -> Any:
    return embedders[arch]


@pytest.fixture(scope="module")
def rerankers(tiny_models: dict[str, Path]) -> dict[str, Any]:
    from rerank import Reranker

    return {arch: Reranker.from_pretrained(str(path)) for arch, path in tiny_models.items()}


@pytest.fixture
def reranker(rerankers: dict[str, Any], arch: str) -> Any:
    return rerankers[arch]


# Every built-in model family, from the registry.
@pytest.fixture(scope="session", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"umarvel_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind; every SQL test runs against both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def migrated_url(database_url: str) -> str:
    from store.db import upgrade

    upgrade(database_url)
    return database_url


@pytest.fixture
def runner(migrated_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A click runner whose commands use the test's database and Redis."""
    from click.testing import CliRunner

    from core.settings import get_settings

    monkeypatch.setenv("UMARVEL_DATABASE_URL", migrated_url)
    monkeypatch.setenv("UMARVEL_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


@pytest.fixture
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}; start redis-server")
    return REDIS_URL


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A real milvus-lite server process on a free loopback port."""
    from cli.stack import Stack, free_port

    port = free_port()
    workdir = tmp_path_factory.mktemp("milvus")
    stack = Stack(workdir, {"UMARVEL_MILVUS_URI": f"http://127.0.0.1:{port}"})
    stack.start_milvus_only()
    try:
        yield {"uri": f"http://127.0.0.1:{port}", "stack": stack, "port": port}
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def milvus_standalone_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MilvusStandalone]:
    """A real Milvus standalone server (the PyPI ``milvus`` package), once per session; the
    fault tests kill it and start it again on the same ports. Its etcd sessions live 10 s
    (Milvus' default: 30 s), the time a restarted server waits for its killed predecessor's
    sessions to expire before it serves their collections again."""
    from cli.stack import MilvusStandalone

    workdir = tmp_path_factory.mktemp("milvus-standalone")
    with MilvusStandalone(workdir, session_ttl=10) as server:
        yield server


@pytest.fixture(scope="session")
def milvus_standalone(milvus_standalone_server: MilvusStandalone) -> str:
    return milvus_standalone_server.uri


MILVUS_KINDS = ("lite", "standalone")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``milvus_kind``: milvus-lite for every test; a Milvus standalone server as well for
    tests marked ``both_milvus`` (the adapter's, and a subset of the integration tests)."""
    if "milvus_kind" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_milvus") is not None
        kinds = MILVUS_KINDS if both else MILVUS_KINDS[:1]
        metafunc.parametrize("milvus_kind", kinds, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against a Milvus server, with PostgreSQL only: the production pairing (SQLite runs
    against milvus-lite already), and each such test costs seconds of collection setup."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        pairing = (params.get("milvus_kind"), params.get("database_url"))
        (dropped if pairing == ("standalone", "sqlite") else kept).append(item)
        server = {"milvus_standalone", "milvus_standalone_server"} & set(item.fixturenames)
        if pairing[0] == "standalone" or server:
            item.add_marker(pytest.mark.standalone)  # `-m "not standalone"` skips the server
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="module")
def milvus_uri(milvus_kind: str, request: pytest.FixtureRequest) -> str:
    """The URI of the server this test runs against (see ``pytest_generate_tests``)."""
    if milvus_kind == "standalone":
        return str(request.getfixturevalue("milvus_standalone"))
    return str(request.getfixturevalue("milvus_server")["uri"])


def stack_env(
    database_url: str, workdir: Path, models: dict[str, Path], **overrides: str
) -> dict[str, str]:
    """The UMARVEL_* environment of a test stack: PostgreSQL, test Redis, tiny models."""
    from cli.stack import free_port

    env = {
        "UMARVEL_DATABASE_URL": database_url,
        "UMARVEL_REDIS_URL": REDIS_URL,
        "UMARVEL_MILVUS_URI": f"http://127.0.0.1:{free_port()}",
        "UMARVEL_MILVUS_PREFIX": f"t{uuid.uuid4().hex[:6]}_",
        "UMARVEL_MEDIA_ROOT": str(workdir / "media"),
        "UMARVEL_RECALL_MODEL": str(models["qwen3_vl"]),
        "UMARVEL_RERANK_MODEL": str(models["qwen2_vl"]),
        "UMARVEL_ALLOWED_RECALL_MODELS": json.dumps([str(models["qwen2_vl"])]),
        "UMARVEL_TORCH_THREADS": "1",
    }
    env.update({f"UMARVEL_{key.upper()}": value for key, value in overrides.items()})
    return env


@pytest.fixture
def pipeline_env(
    migrated_url: str,
    redis_url: str,
    tmp_path: Path,
    tiny_models: dict[str, Path],
    milvus_uri: str,
) -> Iterator[tuple[object, object]]:
    """The API as a test client and a worker runtime, in process, with a collection "docs":
    worker steps are called directly, in an order the test chooses."""
    from api.app import create_app
    from core.settings import Settings
    from tests.helpers import make_key
    from workers.runtime import Runtime

    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        milvus_uri=milvus_uri,
        milvus_prefix=f"r{uuid.uuid4().hex[:6]}_",
        recall_model=str(tiny_models["qwen3_vl"]),
        # The other architecture, and a path with no model (a build that fails).
        allowed_recall_models=[str(tiny_models["qwen2_vl"]), str(tmp_path / "no-such-model")],
        ingest_chunk_size=2,
        device="cpu",
        query_wait_seconds=0,  # no worker answers in process: a POST answers 202 at once
        model_runners=1,  # torch keeps its threads in this test process
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    rt = Runtime(settings)
    yield client, rt
    rt.index.close()


@contextmanager
def live_stack(
    models: dict[str, Path],
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    process_env: dict[str, dict[str, str]] | None = None,
    api_args: tuple[str, ...] = (),
    **overrides: str,
) -> Iterator[Stack]:
    """A running stack (milvus-lite, both workers, the API) on a fresh PostgreSQL database
    and the test Redis (flushed), configured by ``UMARVEL_*`` ``overrides``; ``process_env``
    adds variables for single processes (``Stack.process_env``), ``api_args`` options of
    ``umarvel api``."""
    import redis

    from cli.stack import Stack

    redis.Redis.from_url(REDIS_URL).flushdb()
    with fresh_postgres_database() as database_url:
        env = {**stack_env(database_url, workdir, models, **overrides), **(extra_env or {})}
        suffix = f"-{uuid.uuid4().hex[:6]}"
        stack = Stack(
            workdir, env, process_env=process_env or {}, worker_suffix=suffix, api_args=api_args
        )
        with stack as running:
            yield running
