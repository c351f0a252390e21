"""The compose file, its two example files and the two Dockerfiles agree with the CLI, the
settings and the packages (no Docker here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main as cli
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
UMARVEL_SERVICES = ("migrate", "api", "recall-worker", "ingest-worker", "rerank-worker", "beat")
WORKERS = ("recall-worker", "ingest-worker", "rerank-worker")
# Each secret of .env and the services that get it, nothing else.
SECRETS = {
    "POSTGRES_PASSWORD": {"postgres"},
    "DATABASE_PASSWORD": {"postgres", "migrate", "api", *WORKERS},
    "REDIS_PASSWORD": {"redis", "api", *WORKERS, "beat"},
    "MINIO_ACCESS_KEY": {"minio", "milvus"},
    "MINIO_SECRET_KEY": {"minio", "milvus"},
    "MEDIA_S3_ACCESS_KEY": {"api", *WORKERS},
    "MEDIA_S3_SECRET_KEY": {"api", *WORKERS},
    "MILVUS_TOKEN": {"api", *WORKERS},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    wanted = {
        "api",
        "recall-worker",
        "ingest-worker",
        "rerank-worker",
        "beat",
        "migrate",
        "redis",
        "postgres",
        "etcd",
        "minio",
        "milvus",
    }
    assert wanted <= set(compose["services"])


def test_each_worker_has_a_gpu_of_its_own(compose: dict[str, Any]) -> None:
    devices = []
    for name in ("recall-worker", "ingest-worker", "rerank-worker"):
        (device,) = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device, f"{name}: count: 1 lands every worker on GPU 0"
        devices.append(tuple(device["device_ids"]))
    assert len(set(devices)) == 3, devices
    env_example = (ROOT / ".env.example").read_text()
    for variable in ("RECALL_GPU", "INGEST_GPU", "RERANK_GPU"):
        assert re.search(rf"^{variable}=\d+$", env_example, re.MULTILINE)


def test_nothing_talks_to_redis_without_its_password(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "flower" not in services  # it would publish the broker without authentication
    redis_service = services["redis"]
    password = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"  # compose refuses an empty one
    assert redis_service["command"][-2:] == ["--requirepass", password]
    assert redis_service["environment"]["REDISCLI_AUTH"] == password
    urls = [
        s["environment"]["UMARVEL_REDIS_URL"]
        for s in services.values()
        if "UMARVEL_REDIS_URL" in s.get("environment", {})
    ]
    assert urls
    assert all(url.startswith(f"redis://:{password}@redis:") for url in urls)
    assert re.search(r"^REDIS_PASSWORD=$", (ROOT / ".env.example").read_text(), re.MULTILINE)


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        if "build" in service or not image:
            continue  # built here
        tag = image.rsplit(":", 1)[-1]
        assert tag != "latest", name
        # A version (7.2.5, v2.3.5) or a dated release (MinIO's RELEASE.2023-03-20T...).
        assert re.search(r"\d+\.\d+|\d{4}-\d{2}-\d{2}", tag), f"{name}: {image} names no release"


def test_milvus_is_the_version_the_suite_runs_against(compose: dict[str, Any]) -> None:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (tested,) = [pin.split("==")[1] for pin in dev["dev"] if pin.startswith("milvus==")]
    assert compose["services"]["milvus"]["image"] == f"milvusdb/milvus:v{tested}"


def _umarvel_commands(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: service["command"]
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == "umarvel"
    }


def test_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    commands = _umarvel_commands(compose)
    assert set(commands) >= {"migrate", "recall-worker", "rerank-worker", "beat"}
    for name, argv in commands.items():
        group: Any = cli
        for word in argv[1:]:
            if not hasattr(group, "commands") or word.startswith("-"):
                break
            assert word in group.commands, f"{name}: 'umarvel {word}' is not a CLI command"
            group = group.commands[word]
    assert commands["recall-worker"][2:] == ["recall", "--no-ingest"]
    assert commands["ingest-worker"][2] == "ingest"
    assert commands["rerank-worker"][2] == "rerank"


def test_environment_names_real_settings(compose: dict[str, Any]) -> None:
    fields = {f"UMARVEL_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("UMARVEL_"):
                assert variable in fields, f"{name}: unknown setting {variable}"


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / "umarvel.env.example").read_text()
    named = set(re.findall(r"UMARVEL_[A-Z0-9_]+", text))
    assert named == {f"UMARVEL_{name.upper()}" for name in Settings.model_fields}


def _assigned(path: Path) -> set[str]:
    """The variables a .env-style file sets (uncommented lines)."""
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))


def test_secrets_and_settings_live_in_two_files() -> None:
    secrets = _assigned(ROOT / ".env.example")
    assert set(SECRETS) <= secrets
    assert not {v for v in secrets if v.startswith("UMARVEL_")}, "settings go to umarvel.env"
    settings = _assigned(ROOT / "umarvel.env.example")
    assert settings
    assert all(v.startswith("UMARVEL_") for v in settings)
    # No setting that is a secret, or that the compose file sets with one.
    wired = {"UMARVEL_DATABASE_URL", "UMARVEL_REDIS_URL", "UMARVEL_MILVUS_TOKEN"}
    assert not settings & (wired | {"UMARVEL_MEDIA_S3_ACCESS_KEY", "UMARVEL_MEDIA_S3_SECRET_KEY"})
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {".env", "umarvel.env"} <= set(ignored)


def test_each_service_gets_only_its_secrets(compose: dict[str, Any]) -> None:
    """No env_file hands .env to a container; each secret reaches only the services that
    use it (the MinIO root keys MinIO and Milvus, PostgreSQL's superuser password postgres)."""
    services = compose["services"]
    for name, service in services.items():
        env_file = service.get("env_file")
        if name in UMARVEL_SERVICES:
            assert env_file == "umarvel.env", name
        else:
            assert env_file is None, name
    for secret, allowed in SECRETS.items():
        used = re.compile(r"\$\{" + secret + r"[:}-]")
        using = {
            name
            for name, service in services.items()
            if used.search(yaml.safe_dump(service, width=10_000))
        }
        assert using == allowed, (secret, sorted(using))
    beat = services["beat"]["environment"]
    assert set(beat) == {"UMARVEL_REDIS_URL"}  # it only sends the clean-up task
    assert set(services["migrate"]["environment"]) == {"UMARVEL_DATABASE_URL"}
    for name in UMARVEL_SERVICES:
        url = services[name]["environment"].get("UMARVEL_DATABASE_URL", "")
        assert "POSTGRES_PASSWORD" not in url, name
        assert url == "" or url.startswith("postgresql+psycopg://umarvel:${DATABASE_PASSWORD:?")


def test_postgres_creates_the_services_role_on_a_fresh_volume(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    (mount,) = [v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    script = ROOT / mount.split(":")[0]
    assert script.exists()
    assert script.stat().st_mode & 0o111, "the image runs it only when executable"
    text = script.read_text()
    assert "CREATE ROLE umarvel LOGIN PASSWORD :'password'" in text
    assert 'password="$DATABASE_PASSWORD"' in text
    assert "ON_ERROR_STOP=1" in text


def test_workers_reserve_gpus_and_serve_metrics(compose: dict[str, Any]) -> None:
    for name in ("recall-worker", "ingest-worker", "rerank-worker"):
        service = compose["services"][name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert service["ports"][0].endswith(":9100")
        assert service["environment"]["UMARVEL_WORKER_METRICS_PORT"] == "9100"


def test_api_serves_the_wsgi_app_and_checks_readiness(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["command"][0] == "gunicorn"
    assert "api.wsgi:app" in api["command"]
    assert "0.0.0.0:8000" in api["command"]
    assert api["ports"] == ["8000:8000"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_workers_are_healthy_only_when_warm(compose: dict[str, Any]) -> None:
    for queue in ("recall", "ingest", "rerank"):
        test = compose["services"][f"{queue}-worker"]["healthcheck"]["test"]
        assert test == ["CMD", "umarvel", "ready", queue]
    assert "ready" in cli.commands


def test_api_and_migration_run_the_api_image_workers_and_beat_the_worker_image(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("api", "migrate"):
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile.api"}, name
        assert services[name]["image"].startswith("umarvel-search-api:"), name
    for name in (*WORKERS, "beat"):
        assert services[name]["build"] == ".", name
        assert services[name]["image"].startswith("umarvel-search-worker:"), name
    # beat writes its schedule file in its working directory: not the image's /app.
    assert services["beat"]["working_dir"] == "/tmp"


def _copies_every_package(text: str) -> None:
    """Every package the wheel is built from (pyproject's list), and the client's folder,
    or the image cannot start."""
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [pattern.rstrip("*") for pattern in found["packages"]["find"]["include"]]
    assert {"core", "api", "workers", "ingestion", "recall", "rerank"} <= set(packages)
    assert "client" not in packages
    for package in [*packages, "client"]:
        assert f"COPY {package} {package}" in text
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", text, re.MULTILINE)


def test_the_api_image_is_slim_and_runs_gunicorn_as_a_user() -> None:
    text = (ROOT / "Dockerfile.api").read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert base == "FROM python:3.11-slim"
    # The base dependencies (and the tracing extra) only, at the versions of constraints.txt.
    assert "pip install --quiet -c constraints.txt ./client '.[tracing]' " in text
    assert "[worker]" not in text
    assert "useradd --create-home --uid 10001 umarvel" in text
    assert "USER umarvel" in text
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    assert cmd.startswith('CMD ["gunicorn"')
    assert '"api.wsgi:app"]' in text
    _copies_every_package(text)


def test_dockerfile_builds_the_package_on_a_cuda_base() -> None:
    import torch

    text = (ROOT / "Dockerfile").read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert base.startswith("FROM nvidia/cuda:")
    # The base's CUDA release is the one the pinned torch was built with.
    assert torch.version.cuda is not None
    assert base.removeprefix("FROM nvidia/cuda:").startswith(f"{torch.version.cuda}.")
    assert "python3.11" in text
    # The client's distribution and the server's in one pip command: the server depends on
    # the client, which is on no index.
    assert "pip install --quiet -c constraints.txt ./client '.[worker,tracing]' " in text
    assert "useradd --create-home --uid 10001 umarvel" in text
    assert "USER umarvel" in text
    _copies_every_package(text)


MEDIA_SERVICES = ("api", "recall-worker", "ingest-worker", "rerank-worker")


def test_api_and_workers_share_media_through_minio_not_a_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env_example = (ROOT / ".env.example").read_text()
    stores = set()
    for name in MEDIA_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["UMARVEL_MEDIA_BACKEND"] == "s3", name
        assert env["UMARVEL_MEDIA_S3_CREATE_BUCKET"] == "true", name
        stores.add((env["UMARVEL_MEDIA_S3_ENDPOINT"], env["UMARVEL_MEDIA_S3_BUCKET"]))
        for setting, variable in (
            ("UMARVEL_MEDIA_S3_ACCESS_KEY", "MEDIA_S3_ACCESS_KEY"),
            ("UMARVEL_MEDIA_S3_SECRET_KEY", "MEDIA_S3_SECRET_KEY"),
        ):
            # From .env, with no default: compose refuses to start without it.
            assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", env[setting]), (name, setting)
            assert re.search(rf"^{variable}=$", env_example, re.MULTILINE), variable
        assert "UMARVEL_MEDIA_ROOT" not in env, name
        assert not any(":/data/media" in volume for volume in service.get("volumes", [])), name
        assert service["depends_on"]["minio"]["condition"] == "service_healthy", name
    # One store for all of them: the MinIO service, in a bucket of its own.
    assert stores == {("http://minio:9000", "umarvel-media")}
    assert "media" not in compose["volumes"]


def test_compose_refuses_to_start_without_its_secrets() -> None:
    """`${VAR:?message}`: compose stops with the message when VAR is unset or empty (an empty
    --requirepass would mean no password at all)."""
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in set(SECRETS) - {"MILVUS_TOKEN"}:  # the compose Milvus needs no token
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, secret
        assert all(use.startswith(":?") for use in uses), (secret, uses)
