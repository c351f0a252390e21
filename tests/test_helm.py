"""The Helm chart (deploy/helm/umarvel-search): its values, and its manifests as Helm renders
them (helm-python-sdk, Helm's own Go SDK), each checked against the Kubernetes API schemas
(kubernetes-validate). Both are dev dependencies; without them the rendering tests skip."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.contract import Queue
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "umarvel-search"
QUEUES = [queue.value for queue in Queue]
VALUES_READ = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion), and the newest that
# kubernetes-validate knows: each manifest is checked against both.
KUBE_VERSIONS = ("1.25.0", "latest")


def _values(name: str = "values.yaml") -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / name).read_text()))


def test_the_chart_is_the_projects_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "umarvel-search"
    assert chart["appVersion"] == project["version"]
    assert chart["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


def test_every_value_the_templates_read_is_in_values_yaml() -> None:
    """Checked without Helm: every ``.Values.a.b`` a template names exists in values.yaml
    (a value read under another name renders as nothing, silently)."""
    values = _values()
    read = set()
    for template in sorted((CHART / "templates").iterdir()):
        read |= {m.group(1)[1:] for m in VALUES_READ.finditer(template.read_text())}
    assert len(read) > 30
    for path in sorted(read):
        node: Any = values
        for key in path.split("."):
            assert isinstance(node, dict), f".Values.{path}: {key} is under a leaf"
            assert key in node, f".Values.{path} is not in values.yaml"
            node = node[key]
    # What the templates read per queue (index .Values.workers $queue, and autoscaling's).
    for queue in QUEUES:
        assert set(values["workers"][queue]) == {"enabled", "replicas", "gpus", "resources"}
        assert set(values["autoscaling"][queue]) == {"minReplicas", "maxReplicas", "listLength"}


@pytest.mark.parametrize("name", ["values.yaml", "values-production.yaml"])
def test_settings_of_the_values_are_real_and_hold_no_secret(name: str) -> None:
    fields = {f"UMARVEL_{field.upper()}" for field in Settings.model_fields}
    settings = _values(name)["settings"]
    assert set(settings) <= fields, sorted(set(settings) - fields)
    secrets = {"UMARVEL_DATABASE_URL", "UMARVEL_REDIS_URL", "UMARVEL_MILVUS_TOKEN"}
    assert not set(settings) & (secrets | {"UMARVEL_MEDIA_S3_SECRET_KEY"})
    assert all(isinstance(value, str) for value in settings.values()), "strings, as in env"


def _helm() -> Any:
    return pytest.importorskip(
        "helm_python", reason="helm-python-sdk (a dev dependency) renders the chart"
    )


def _validator() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (a dev dependency) checks manifests"
    )


def _render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    helm = _helm()
    rendered = helm.Chart.load(str(CHART)).render(
        values, name="search", namespace="search", is_install=True
    )
    documents = []
    for text in rendered.values():
        documents += [d for d in yaml.safe_load_all(text) if d]
    return documents


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def _merged(values: dict[str, Any] | None) -> dict[str, Any]:
    """values.yaml with ``values`` over it, as Helm merges them."""
    return dict(_helm().Chart.load(str(CHART)).merge_values(values))


@pytest.fixture(scope="module", params=["values.yaml", "values-production.yaml"])
def rendered(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The values Helm renders with (merged), and the manifests."""
    given = None if request.param == "values.yaml" else _values(request.param)
    return _merged(given), _render(given)


def test_every_manifest_is_valid_kubernetes(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    validator = _validator()
    _, documents = rendered
    checked = 0
    for document in documents:
        if document["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no schema in kubernetes-validate; see the autoscaling test
        for version in KUBE_VERSIONS:
            wanted = validator.latest_version() if version == "latest" else version
            validator.validate(document, wanted, strict=True)
        checked += 1
    assert checked >= 7  # ConfigMap, API Deployment and Service, 3 workers, beat, the Job


def test_the_chart_lints_clean() -> None:
    helm = _helm()
    for name in ("values.yaml", "values-production.yaml"):
        report = helm.lint(str(CHART), _values(name), strict=True)
        assert not report["errors"], report
        # Severity 2 is a warning, 3 an error; 1 (info) is the missing icon.
        assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_the_api_is_probed_for_itself_behind_a_service(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, documents = rendered
    api = _by_kind(documents, "Deployment")["search-umarvel-search-api"]
    assert api["spec"]["replicas"] == values["api"]["replicas"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "gunicorn"
    assert container["command"][-1] == "api.wsgi:app"
    assert container["image"].split("/")[-1].startswith("umarvel-search-api:")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = _by_kind(documents, "Service")["search-umarvel-search-api"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_one_gpu_worker_per_queue_and_one_beat(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, documents = rendered
    deployments = _by_kind(documents, "Deployment")
    for queue in QUEUES:
        worker = deployments[f"search-umarvel-search-{queue}-worker"]
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        expected = ["umarvel", "worker", queue] + (["--no-ingest"] if queue == "recall" else [])
        assert container["command"] == expected  # its own queue only
        assert container["image"].split("/")[-1].startswith("umarvel-search-worker:")
        assert container["readinessProbe"]["exec"]["command"] == ["umarvel", "ready", queue]
        gpus = values["workers"][queue]["gpus"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert ("replicas" in worker["spec"]) != values["autoscaling"]["enabled"]
        assert _env(container)["HF_HOME"] == "/models"
    beat = deployments["search-umarvel-search-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["umarvel", "beat"]
    assert set(_env(container)) == {"UMARVEL_REDIS_URL"}


def test_migrations_run_as_a_hook_before_install_and_upgrade(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, documents = rendered
    (job,) = _by_kind(documents, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["umarvel", "db", "upgrade"]
    # A pre-install hook runs before the ConfigMap exists: it reads the Secret only.
    assert "envFrom" not in container
    assert "UMARVEL_DATABASE_URL" in _env(container)


def test_credentials_come_from_the_existing_secret_only(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, documents = rendered
    assert not _by_kind(documents, "Secret"), "the chart reads a Secret, never makes one"
    secret = values["secret"]["name"]
    refs = []
    for document in documents:
        refs += re.findall(r"secretKeyRef': \{'name': '([^']+)'", str(document))
    assert refs
    assert set(refs) == {secret}
    (config,) = _by_kind(documents, "ConfigMap").values()
    fields = {f"UMARVEL_{field.upper()}" for field in Settings.model_fields}
    assert set(config["data"]) <= fields
    assert config["data"]["UMARVEL_MILVUS_URI"] == values["milvus"]["uri"]
    assert config["data"]["UMARVEL_MEDIA_S3_BUCKET"] == values["media"]["s3"]["bucket"]
    assert not {"UMARVEL_DATABASE_URL", "UMARVEL_REDIS_URL"} & set(config["data"])
    for deployment in _by_kind(documents, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_a_secret_among_the_settings_is_refused() -> None:
    helm = _helm()
    with pytest.raises(helm.HelmRenderError, match="UMARVEL_REDIS_URL is a secret"):
        _render({"settings": {"UMARVEL_REDIS_URL": "redis://:password@redis:6379/0"}})


def test_autoscaling_scales_each_worker_on_its_queue() -> None:
    given = _values("values-production.yaml")
    values = _merged(given)
    assert values["autoscaling"]["enabled"]
    documents = _render(given)
    scaled = _by_kind(documents, "ScaledObject")
    deployments = _by_kind(documents, "Deployment")
    assert len(scaled) == len(QUEUES)
    (auth,) = _by_kind(documents, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"][0]["name"] == values["secret"]["name"]
    for queue in QUEUES:
        target = f"search-umarvel-search-{queue}-worker"
        spec = scaled[target]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        # The Celery queue's Redis list is named after the queue (api.backpressure reads it).
        assert trigger["metadata"]["listName"] == queue
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert spec["minReplicaCount"] == values["autoscaling"][queue]["minReplicas"]
    assert not _by_kind(_render(None), "ScaledObject"), "off by default"
