"""observability/: the PrometheusRule is well formed, and every sidecar metric the rule and the
Grafana dashboard name is one the sidecar's /metrics really serves (so neither can drift)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import validate_config
from sidecar.server import build_apps, build_components

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "observability" / "prometheus-rule.yaml"
DASHBOARD = REPO / "observability" / "grafana-dashboard.json"
METRIC = re.compile(r"\bauthz_[a-z0-9_]+\b")
DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def _rule() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULE.read_text())
    return document


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in _rule()["spec"]["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


async def served_series() -> set[str]:
    """Every series name the sidecar's /metrics can serve (a family's samples, by its type)."""
    config = validate_config({"opa": {"url": "http://127.0.0.1:1"}})  # OPA down: bundle gauges have no samples
    parts = await build_components(config)
    try:
        _, admin, _ = build_apps(config, parts)
        async with TestClient(TestServer(admin)) as client:
            text = await (await client.get("/metrics")).text()
    finally:
        await parts.close()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def missing(expressions: list[str], served: set[str]) -> list[str]:
    return sorted({name for expr in expressions for name in METRIC.findall(expr)} - served)


async def test_every_metric_in_the_rule_and_the_dashboard_is_served() -> None:
    served = await served_series()
    assert not missing(rule_expressions(), served), "observability/prometheus-rule.yaml"
    assert not missing(dashboard_expressions(), served), "observability/grafana-dashboard.json"
    # The check can fail: a renamed metric is reported.
    assert missing(["rate(authz_decisions_total[5m]) + authz_no_such_metric_total"], served) == [
        "authz_no_such_metric_total"
    ]
    assert served >= {"authz_decision_seconds_bucket", "authz_bundle_info", "authz_state_store_errors_total"}


def test_the_rule_has_the_prometheus_rule_shape() -> None:
    rule = _rule()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] and rule["metadata"]["labels"]
    groups = rule["spec"]["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups)
    alerts = [r for g in groups for r in g["rules"]]
    assert len({r["alert"] for r in alerts}) == len(alerts), "alert names are unique"
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
    for alert in alerts:
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert re.fullmatch(r"Authz[A-Za-z]+", alert["alert"])
        assert isinstance(alert["expr"], str) and METRIC.search(alert["expr"]), alert["alert"]
        assert alert["expr"].count("(") == alert["expr"].count(")"), alert["alert"]
        assert DURATION.match(alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


@pytest.mark.parametrize("expressions", [rule_expressions, dashboard_expressions], ids=["rule", "dashboard"])
def test_expressions_name_only_known_label_values(expressions: Any) -> None:
    """Label values in matchers exist: a verdict or source that the sidecar never emits matches nothing."""
    known = {"verdict": {"allow", "deny", "step_up", "error"}}
    for expr in expressions():
        for label, value in re.findall(r'\b(verdict)!?="([^"]*)"', expr):
            assert value in known[label], expr


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
