"""The Prometheus alert rules and the Grafana dashboard in deploy/monitoring: valid PromQL
(promtool), alerts that fire on the series they should (promtool's rule tests), and only
metrics that the API and the workers export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

FOLDER = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
if PROMTOOL is None and os.environ.get("CI"):
    raise RuntimeError("CI needs promtool (Debian's prometheus package; make test installs it)")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool on this machine")


def _promtool(*args: str, cwd: Path = FOLDER) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((FOLDER / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((FOLDER / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _exported() -> set[str]:
    """Every series name the project's metrics expose (counters as ``_total``, histograms
    as ``_bucket``, ``_sum`` and ``_count``)."""
    from prometheus_client import REGISTRY

    import core.metrics  # noqa: F401  (registers them)

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


@needs_promtool
def test_the_alert_rules_are_valid_and_fire_as_their_tests_say() -> None:
    assert "SUCCESS: 9 rules found" in _promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in _promtool("test", "rules", "alerts.test.yml")


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses rule expressions: the dashboard's queries, as recording rules."""
    rules = [{"record": f"umarvel:panel_{n}", "expr": e} for n, e in enumerate(_dashboard_exprs())]
    (tmp_path / "panels.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]})
    )
    assert f"SUCCESS: {len(rules)} rules found" in _promtool(
        "check", "rules", "panels.yml", cwd=tmp_path
    )


def test_alerts_and_panels_use_only_exported_metrics() -> None:
    exported = _exported()
    used = {
        name
        for expr in [*_alert_exprs(), *_dashboard_exprs()]
        for name in re.findall(r"\bumarvel_[a-z_]+\b", expr)
    }
    assert used, "no umarvel_ metric referenced"
    assert used <= exported, sorted(used - exported)
    # Every metric is on the dashboard or in an alert (the round-trip counters are for
    # bench.service).
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    unshown = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for name in exported
        if name.startswith("umarvel_")
    } - shown
    assert unshown == {"umarvel_sql_round_trips_total", "umarvel_redis_round_trips_total"}
