"""The compose file and .env.example agree with the CLI and the settings (no Docker here)."""

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
    urls = [compose["x-umarvel"]["environment"]["UMARVEL_REDIS_URL"]]
    urls += [
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
        if image.startswith("umarvel-search:") or not image:
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
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"UMARVEL_[A-Z0-9_]+", text))
    assert named == {f"UMARVEL_{name.upper()}" for name in Settings.model_fields}


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
    assert "pip install --quiet -c constraints.txt ./client '.[worker]' " in text
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", text, re.MULTILINE)
    assert "USER umarvel" in text
    # Every package the wheel is built from (pyproject's list), and the client's folder, or
    # the image cannot start.
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [pattern.rstrip("*") for pattern in found["packages"]["find"]["include"]]
    assert {"core", "api", "workers", "ingestion", "recall", "rerank"} <= set(packages)
    assert "client" not in packages
    for package in [*packages, "client"]:
        assert f"COPY {package} {package}" in text


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
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MEDIA_S3_ACCESS_KEY"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, secret
        assert all(use.startswith(":?") for use in uses), (secret, uses)
