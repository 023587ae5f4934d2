"""Static checks of deploy/ with the real tools: promtool, amtool, docker-compose.

Every alert has a promtool unit test that sees it fire, a runbook, and a
``runbook_url`` pointing at it; every PromQL expression (alert rules, their
annotation templates, the Grafana dashboard) parses and reads only metric names
the detector defines. ``test_deploy_scrape.py`` repeats the name check against a
real worker's ``/metrics``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploykit import (
    ALERT_RULES,
    ALERT_TESTS,
    ALERTMANAGER_CONFIG,
    ALLOW_SKIP,
    DASHBOARDS,
    DEPLOY,
    PROMETHEUS_CONFIG,
    REPO,
    alert_rules,
    dashboard_panels,
    dashboard_queries,
    exposed_names,
    grafana_to_promql,
    load_yaml,
    metric_names,
    run_tool,
    tool,
)

from detector.metrics import Metrics

RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/example/over-enforcement-detector/blob/main/"
COMPOSE = REPO / "docker-compose.yml"
SEVERITIES = {"page", "ticket"}
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
"""Series Prometheus writes itself for every target."""
RUNBOOK_SECTIONS = ("## What it means", "## First checks")
TEMPLATE_QUERY = re.compile(r"`([^`]*)`")


def defined_names() -> set[str]:
    """Every sample name detector/metrics.py's registry can expose."""
    return exposed_names(Metrics().exposition().decode())


def annotation_queries(rule: dict[str, Any]) -> list[str]:
    """The PromQL of an alert's annotation templates (`` `...` | query``), with the
    ``printf`` placeholders filled in."""
    return [
        q.replace("%q", '"RULE"')
        for text in rule.get("annotations", {}).values()
        for q in TEMPLATE_QUERY.findall(text)
    ]


def expressions() -> list[tuple[str, str]]:
    """``(where, PromQL)`` of every alert expression, annotation query and dashboard
    query (the dashboard's as plain PromQL)."""
    out = []
    for rule in alert_rules():
        out.append((f"alert {rule['alert']}", rule["expr"]))
        out += [(f"alert {rule['alert']} annotation", q) for q in annotation_queries(rule)]
    for path in sorted(DASHBOARDS.glob("*.json")):
        for where, expr in dashboard_queries(json.loads(path.read_text())):
            out.append((f"{path.name} {where}", grafana_to_promql(expr)))
    return out


def fired_in_unit_tests() -> set[str]:
    """Alerts that some promtool unit test expects to fire (not only to stay quiet)."""
    fired = set()
    for path in ALERT_TESTS.glob("*.yml"):
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    return fired


# ----- Prometheus -----
def test_prometheus_config_and_rules_check() -> None:
    run_tool("promtool", "check", "config", str(PROMETHEUS_CONFIG))
    run_tool("promtool", "check", "rules", str(ALERT_RULES))


def test_alert_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in ALERT_TESTS.glob("*.yml"))
    assert tests
    out = run_tool("promtool", "test", "rules", *tests)
    assert "SUCCESS" in out


def test_every_alert_fires_in_a_promtool_test() -> None:
    alerts = {r["alert"] for r in alert_rules()}
    assert len(alerts) >= 8
    assert alerts - fired_in_unit_tests() == set(), "alerts no promtool test sees firing"
    assert fired_in_unit_tests() - alerts == set(), "promtool tests of unknown alerts"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_a_runbook_and_says_what_it_is(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}docs/runbooks/{name}.md"
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"no runbook {runbook.relative_to(REPO)}"
    text = runbook.read_text()
    assert text.startswith(f"# {name}\n")
    for section in RUNBOOK_SECTIONS:
        assert section in text, f"{runbook.name} lacks {section!r}"
    # Every runbook says how to hold/release a rule and where the affected accounts are.
    assert "detector ctl pause" in text and "detector ctl resume" in text
    assert "reinstate" in text.lower()
    if "rule_id" in rule["expr"] and rule["labels"]["severity"] == "page":
        assert "detector affected" in text and "detector ctl reinstate" in text


def test_no_runbook_without_an_alert() -> None:
    alerts = {r["alert"] for r in alert_rules()}
    runbooks = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert runbooks == alerts
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"[{a}.md]({a}.md)" in index for a in alerts)


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=lambda v: str(v)[:60])
def test_queries_read_only_defined_metrics(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - defined_names() - PROMETHEUS_SERIES
    assert unknown == set(), f"{where} reads metrics the detector does not define: {unknown}"


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule (dashboard macros and
    variables replaced by plain PromQL)."""
    rules = [{"record": f"check:query_{i}", "expr": e} for i, (_, e) in enumerate(expressions())]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    run_tool("promtool", "check", "rules", str(path))


def test_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'sum by (rule_id) (rate(detector_rule_alerts_total{reason=~"a|b"}[5m] offset 1h)) '
        "/ on (instance) group_left up and "
        'histogram_quantile(0.9, x_bucket) > bool 1 unless {__name__="y"}'
    )
    assert metric_names(expr) == {"detector_rule_alerts_total", "up", "x_bucket", "y"}


# ----- Alertmanager -----
def test_alertmanager_config_checks() -> None:
    run_tool("amtool", "check-config", str(ALERTMANAGER_CONFIG))


def test_pages_go_to_a_webhook_with_resolved_notifications() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    route = config["route"]
    assert {"alertname", "rule_id"} <= set(route["group_by"])
    page = next(r for r in route["routes"] if 'severity="page"' in r["matchers"])
    receiver = next(r for r in config["receivers"] if r["name"] == page["receiver"])
    hooks = receiver["webhook_configs"]
    assert hooks and all(h["send_resolved"] for h in hooks)
    # The pager's address is set in one place (the compose stack's pager stand-in).
    assert all(h["url"].startswith("http://pager-stub:8080/") for h in hooks)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_each_alert_routes_by_its_severity(rule: dict[str, Any]) -> None:
    """amtool's own routing: pages to the on-call receiver, tickets to the team's."""
    want = {"page": "oncall-pager", "ticket": "team-tickets"}[rule["labels"]["severity"]]
    labels = [f"alertname={rule['alert']}", "rule_id=bot", *map("=".join, rule["labels"].items())]
    out = run_tool(
        "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels
    )
    assert out.split()[0] == want


def test_a_missing_program_fails_unless_skipping_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(ALLOW_SKIP, raising=False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install prometheus"):
        tool("promtool")
    monkeypatch.setenv(ALLOW_SKIP, "1")
    with pytest.raises(pytest.skip.Exception):
        tool("promtool")


# ----- Grafana -----
def test_dashboard_is_provisioned_and_uses_the_provisioned_datasource() -> None:
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uids = {d["uid"] for d in datasources["datasources"]}
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        panels = [p for p in dashboard_panels(dashboard) if p.get("type") != "row"]
        assert panels
        ids = [p["id"] for p in dashboard_panels(dashboard)]
        assert len(ids) == len(set(ids)), "panel ids must be unique"
        for panel in panels:
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"


# ----- Compose -----
def test_compose_file_validates() -> None:
    run_tool("docker-compose", "-f", str(COMPOSE), "config", "-q")


def test_compose_runs_the_whole_stack() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert {
        "kafka",
        "detector-1",
        "detector-2",
        "simulator",
        "prometheus",
        "alertmanager",
        "grafana",
        "pager-stub",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # Prometheus scrapes the replicas the stack runs.
    targets = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in targets} == {"detector-1", "detector-2"}
    # Every file the stack mounts exists in the repository.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
