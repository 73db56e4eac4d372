"""manifests/monitoring: the alerting rules, their PrometheusRule twin, the Grafana dashboard.

- `promtool check rules` accepts the plain rules file, and `promtool test rules`
  runs its unit tests (wakegate-rules.test.yaml): each alert fires on the series
  that should trigger it, with the labels and text an operator will read.
- The PrometheusRule carries exactly the same groups, and renders.
- The rules cover what an operator must hear about, and every metric the rules
  and the dashboard's queries name is one that a real `wakegate controller` and
  a real `wakegate proxy` export: their /metrics are scraped after traffic that
  makes every family appear (a cold start, a refused key, a production instance).

tests/test_prometheus.py loads the same rules and runs every dashboard query in
a real Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .client import fetch
from .conftest import hello_service, metrics_text
from .kubectl import kustomize
from .ops_stack import (
    DASHBOARD,
    MONITORING,
    PROMETHEUS_RULE,
    RULES_FILE,
    RULES_TESTS,
    dashboard_queries,
    metric_names,
    program,
    rule_exprs,
    running_split,
    sample_names,
)

# What an operator must be told about, and the metric each alert watches.
REQUIRED_ALERTS = {
    "WakegateColdStartsSlow": "wakegate_cold_start_duration_seconds_bucket",
    "WakegateActivationsFailing": "wakegate_cold_starts_total",
    "WakegateHoldQueueNearlyFull": "wakegate_held_requests",
    "WakegateInstanceFlapping": "wakegate_scale_events_total",
    "WakegateProxyLostController": "wakegate_controller_connected",
    "WakegateInstanceAtMaxReplicas": "wakegate_instance_desired_replicas",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([program("/usr/bin/promtool", "prometheus"), *args], cwd=MONITORING,
                          capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES_FILE.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in result.stdout, result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout
    tested = {t["alertname"] for group in yaml.safe_load(RULES_TESTS.read_text())["tests"]
              for t in group["alert_rule_test"]}
    assert tested == set(REQUIRED_ALERTS)


def test_the_alerts_an_operator_needs_are_there() -> None:
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
             for rule in group["rules"]}
    assert set(REQUIRED_ALERTS) <= set(rules), set(REQUIRED_ALERTS) - set(rules)
    for name, metric in REQUIRED_ALERTS.items():
        rule = rules[name]
        assert metric in metric_names(rule["expr"]), (name, rule["expr"])
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_the_prometheusrule_has_the_same_groups_and_renders() -> None:
    plain = yaml.safe_load(RULES_FILE.read_text())
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["spec"]["groups"] == plain["groups"], \
        "prometheusrule.yaml and wakegate-rules.yaml differ: change both"
    # The CRD (monitoring.coreos.com/v1) has no schema in kubernetes-validate:
    # its required fields and the ones used here, by hand.
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["metadata"]["namespace"] == "wakegate-system"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "wakegate"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"], group
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels",
                              "annotations"}, r
            assert isinstance(r["expr"], str) and r["expr"].strip(), r
            for field in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in r.get(field, {}).values()), r
    assert kustomize(MONITORING) == [rule]


def test_metric_names_are_read_from_promql() -> None:
    expr = ('sum by (le, job) (rate(a_bucket{x="b_total", y=~"$service"}[$__rate_interval] '
            'offset 1h)) / on(job) group_left(z) b:sum > 1e3 and time() - c unless d @ 100')
    assert metric_names(expr) == {"a_bucket", "b:sum", "c", "d"}


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "wakegate" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    graphs = [p for p in panels if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"] and panel.get("description"), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for where, expr in dashboard_queries():
        assert metric_names(expr), f"{where} names no metric: {expr}"
        for used in ("$environment", "$service"):
            assert used[1:] in variables or used not in expr, where


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(
    tmp_path: Path,
) -> None:
    config: dict[str, Any] = {
        "environments": {"private": {}, "demo": {}, "production": {"min_replicas": 1}},
        "services": {"hello": hello_service(environments=["private", "demo", "production"])},
    }
    with running_split(tmp_path, config, proxies=1) as sp:
        proxy = sp.proxies[0]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            cold = await fetch(http, proxy.base, "hello.demo.localhost")
            assert cold.status == 200 and cold.cold, cold
            refused = await fetch(http, proxy.base, "hello.private.localhost")
            assert refused.status == 401, refused
        exported: set[str] = set()
        for base in (sp.controller.controller, proxy.base):
            exported |= await asyncio.to_thread(lambda b=base: sample_names(metrics_text(b)))
    missing = {
        f"{where}: {name}"
        for where, expr in [*rule_exprs(), *dashboard_queries()]
        for name in metric_names(expr) if name not in exported
    }
    assert not missing, f"not exported by wakegate: {sorted(missing)}; exported: " \
                        f"{sorted(n for n in exported if n.startswith('wakegate_'))}"
