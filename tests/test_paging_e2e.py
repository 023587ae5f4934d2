"""The page, end to end, with the real programs: a ``detector worker`` on the embedded
broker, Prometheus scraping it and evaluating the repository's alert rules,
Alertmanager routing with the repository's config, and the pager stand-in
(deploy/pager-stub/) as the on-call webhook. An incident trips a rule: the page
arrives naming the rule, with its runbook; a signed operator resume resolves it.

Only the timings differ from production: 1 s scrapes and evaluations, a 2 s
``keep_firing_for``, 1 s Alertmanager grouping, and every address on 127.0.0.1.
Every process is started and stopped by PID; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploykit import (
    ALERT_RULES,
    ALERTMANAGER_CONFIG,
    DASHBOARDS,
    PAGER_STUB,
    REPO,
    Service,
    dashboard_queries,
    grafana_to_promql,
    http_get,
    load_yaml,
    tool,
    wait_http,
)
from streamkit import Topics, WorkerProc, create_worker_topics, produce, wait_for
from test_worker import CONFIG, HISTORY, START, scenario
from test_worker_reliability import split

from detector.broker import EmbeddedBroker, free_port
from detector.wire.commands import Command

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]

RULE = "bot"
"""The scenario's incident: ``bot`` deactivates tenured accounts at 6x from START + HISTORY."""
PAGER_BASE = "http://pager-stub:8080"
"""The pager's address in deploy/alertmanager/alertmanager.yml, replaced by the stub's."""


@pytest.fixture
def services() -> Iterator[list[Service | WorkerProc]]:
    """The processes of the test, stopped by PID at the end (last started first)."""
    started: list[Service | WorkerProc] = []
    yield started
    for s in reversed(started):
        s.stop()


@pytest.fixture
def command_key(tmp_path: Path) -> tuple[bytes, dict[str, str]]:
    """A fresh command key, and the worker environment that points at it."""
    secret = os.urandom(32).hex().encode()
    path = tmp_path / "command.key"
    path.write_bytes(secret)
    path.chmod(0o600)
    return secret, {"DETECTOR_COMMAND_KEY_FILE": str(path)}


def fast_rules(path: Path) -> Path:
    """The repository's alert rules with a 2 s ``keep_firing_for`` (2 min in
    production), so that a resume resolves the page within seconds."""
    rules = load_yaml(ALERT_RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = "2s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def prometheus_config(path: Path, rules: Path, worker_port: int, am_port: int) -> Path:
    """Scrape the worker and evaluate every second; alerts to the local Alertmanager."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [
            {
                # The job name the rules and the dashboard select.
                "job_name": "detector",
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(path: Path, pager_port: int) -> Path:
    """The repository's routing, with the receivers pointing at the local pager stub
    and grouping waits of a second."""
    text = ALERTMANAGER_CONFIG.read_text().replace(PAGER_BASE, f"http://127.0.0.1:{pager_port}")
    config = yaml.safe_load(text)
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        route.update(group_wait="1s", group_interval="1s")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_monitoring(
    workdir: Path, worker_port: int, services: list[Service | WorkerProc]
) -> tuple[str, str]:
    """Start the pager stub, Alertmanager and Prometheus; returns the pager's and
    Prometheus's base URLs once all three answer."""
    pager_port, am_port, prom_port = free_port(), free_port(), free_port()
    pager = Service(
        "pager-stub",
        [sys.executable, str(PAGER_STUB), "--host", "127.0.0.1", "--port", str(pager_port)],
        workdir,
    ).start()
    services.append(pager)
    am_config = alertmanager_config(workdir / "alertmanager.yml", pager_port)
    tool("amtool")  # fails (or skips) with what to install
    alertmanager = Service(
        "alertmanager",
        [
            tool("alertmanager"),
            f"--config.file={am_config}",
            f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        workdir,
    ).start()
    services.append(alertmanager)
    rules = fast_rules(workdir / "rules.yml")
    prom_config = prometheus_config(workdir / "prometheus.yml", rules, worker_port, am_port)
    prometheus = Service(
        "prometheus",
        [
            tool("prometheus"),
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={workdir / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        workdir,
    ).start()
    services.append(prometheus)
    pager_url = f"http://127.0.0.1:{pager_port}"
    prom_url = f"http://127.0.0.1:{prom_port}"
    wait_http(pager, f"{pager_url}/health", 15)
    wait_http(alertmanager, f"http://127.0.0.1:{am_port}/-/ready", 30)
    wait_http(prometheus, f"{prom_url}/-/ready", 30)
    return pager_url, prom_url


def pages(pager_url: str, status: str) -> list[dict[str, Any]]:
    """The ``DetectorRulePaused`` alerts for RULE the pager received in notifications
    of ``status`` on its on-call path."""
    body = http_get(f"{pager_url}/notifications")
    out = []
    for item in json.loads(body) if body else []:
        note = item["body"]
        if item["path"] != "/page" or note["status"] != status:
            continue
        out += [
            a
            for a in note["alerts"]
            if a["labels"].get("alertname") == "DetectorRulePaused"
            and a["labels"].get("rule_id") == RULE
            and a["status"] == status
        ]
    return out


def query(prom_url: str, expr: str) -> dict[str, Any]:
    """An instant query's ``data`` (fails the test on a query error)."""
    body = http_get(f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert body is not None, f"Prometheus did not answer {expr!r}"
    answer: dict[str, Any] = json.loads(body)
    assert answer["status"] == "success", (expr, answer)
    data: dict[str, Any] = answer["data"]
    return data


def rule_state(worker: WorkerProc) -> str | None:
    return (worker.rules().get(RULE) or {}).get("state")


async def test_a_tripped_rule_pages_on_call_and_a_resume_resolves_the_page(
    broker: EmbeddedBroker,
    services: list[Service | WorkerProc],
    tmp_path: Path,
    command_key: tuple[bytes, dict[str, str]],
) -> None:
    began = time.monotonic()
    secret, key_env = command_key
    topics = Topics.unique("paging")
    await create_worker_topics(broker, topics)
    # History, then the incident's first 15 minutes: enough to trip, and no end of the
    # incident for a probe to close the rule by itself; only the operator's resume does.
    traffic = scenario()
    incident, _ = split(traffic, START + HISTORY + 15 * 60)
    await produce(broker.bootstrap, topics.actions, *incident)

    worker = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, extra_env=key_env)
    services.append(worker.start())
    pager_url, prom_url = start_monitoring(tmp_path, worker.port, services)

    def failure_logs() -> str:
        return (
            "\n".join(
                f"--- {s.name}\n{s.log()[-2000:]}" for s in services if isinstance(s, Service)
            )
            + f"\n--- worker\n{worker.log()[-3000:]}"
        )

    await wait_for(lambda: rule_state(worker) == "open", 60, f"the detector to pause {RULE}")
    try:
        await wait_for(lambda: bool(pages(pager_url, "firing")), 30, "the page")
    except AssertionError:
        raise AssertionError(f"no page arrived\n{failure_logs()}") from None
    paged = time.monotonic()
    page = pages(pager_url, "firing")[0]
    assert page["labels"] == {
        "alertname": "DetectorRulePaused",
        "rule_id": RULE,
        "severity": "page",
    }
    runbook = page["annotations"]["runbook_url"]
    assert runbook.endswith("/docs/runbooks/DetectorRulePaused.md")
    assert (REPO / "docs" / "runbooks" / "DetectorRulePaused.md").is_file()
    assert page["annotations"]["summary"] == (
        f"Rule {RULE} was paused by the over-enforcement detector"
    )
    # The evidence is rendered from the live metrics, not left as placeholders.
    description = page["annotations"]["description"]
    assert f"paused rule {RULE}" in description and "Breaker: open" in description
    assert "surge" in description, description
    assert "?" not in description, description

    # The dashboard's queries run against the live Prometheus, and the rule panels
    # show the rule.
    for path in sorted(DASHBOARDS.glob("*.json")):
        for where, expr in dashboard_queries(json.loads(path.read_text())):
            data = query(prom_url, grafana_to_promql(expr).replace('=~".*"', '=~"' + RULE + '"'))
            if "detector_rule_deactivations" in expr or "detector_rule_state" in expr:
                assert data["result"], f"{where}: no data for {RULE}"

    # The operator resumes the rule: a signed command on the commands topic.
    resume = Command.new(
        "resume", RULE, "oncall@example.com", "e2e: false alarm", time.time(), grace_seconds=3600
    ).signed(secret)
    await produce(broker.bootstrap, topics.commands, [resume.to_json()], [RULE.encode()])
    await wait_for(lambda: rule_state(worker) == "closed", 30, "the resume to be applied")
    # Closed by the operator, not by a passed probe: the resume is what resolves the page.
    assert worker.rules()[RULE]["reason"] == "operator_resume"
    try:
        await wait_for(lambda: bool(pages(pager_url, "resolved")), 30, "the resolved page")
    except AssertionError:
        raise AssertionError(f"no resolved notification\n{failure_logs()}") from None
    resolved = pages(pager_url, "resolved")[0]
    assert resolved["labels"] == page["labels"]
    assert resolved["endsAt"] >= page["startsAt"]
    assert worker.metric("detector_commands_total", 'result="accepted"') == 1
    # Prometheus's own view agrees: the alert is gone.
    firing = query(prom_url, 'ALERTS{alertname="DetectorRulePaused", alertstate="firing"}')
    assert firing["result"] == []
    sys.stderr.write(
        f"page {paged - began:.1f} s after the start, resolved "
        f"{time.monotonic() - paged:.1f} s later\n"
    )
