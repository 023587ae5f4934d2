"""The alerts and the dashboard against what a real ``detector worker`` exposes.

One worker on the embedded broker judges three hours of history and an incident
(a rule trips), then its ``/metrics`` is scraped: ``promtool check metrics``
accepts it, every metric an alert or a panel reads is there, every label a
selector matches on is on its samples, and the facts the alerts rely on hold (the
dead-man's switch and event time advance while idle, the global view is exported,
the breaker states the queries name exist).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from deploykit import DASHBOARDS, dashboard_queries, exposed_names, run_tool
from streamkit import Topics, WorkerProc, create_worker_topics, produce, wait_for
from test_deploy_config import PROMETHEUS_SERIES, expressions
from test_worker import CONFIG, HISTORY, START, scenario
from test_worker_reliability import split

from detector.broker import EmbeddedBroker
from detector.engine.breaker import State
from detector.wire.events import GLOBAL_RULE_ID

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(180)]

SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+\S+$")
LABEL = re.compile(r'([A-Za-z_]\w*)="((?:\\.|[^"\\])*)"')
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
STRING = re.compile(r'"(?:\\.|[^"\\])*"')
TARGET_LABELS = {"job", "instance", "__name__"}
"""Labels Prometheus adds to every scraped sample."""


@pytest.fixture(scope="module")
async def scrape(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A worker's ``/metrics`` after it judged history and an incident and tripped."""
    workdir: Path = tmp_path_factory.mktemp("scrape")
    topics = Topics.unique("scrape")
    await create_worker_topics(broker, topics)
    incident, _ = split(scenario(), START + HISTORY + 15 * 60)
    await produce(broker.bootstrap, topics.actions, *incident)
    worker = WorkerProc(broker.bootstrap, topics, workdir, CONFIG).start()
    try:
        await wait_for(
            lambda: worker.metric("detector_rule_transitions_total", 'to="open"') > 0,
            60,
            "a trip",
        )
        # The dead-man's switch: the last-processed time moves on while the input is idle.
        first = worker.metric("detector_last_processed_timestamp_seconds")
        await wait_for(
            lambda: worker.metric("detector_last_processed_timestamp_seconds") > first + 1,
            10,
            "the last-processed time to advance while idle",
        )
        # DetectorEventTimeStalled: event time follows the wall clock once the input is idle.
        watermark = worker.metric("detector_event_time_watermark_timestamp_seconds")
        await wait_for(
            lambda: (
                worker.metric("detector_event_time_watermark_timestamp_seconds") > watermark + 1
            ),
            20,
            "event time to advance while idle",
        )
        body = worker.get("/metrics")
        assert body is not None, worker.log()[-3000:]
        yield body.decode()
    finally:
        worker.stop()


def samples(exposition: str) -> dict[str, list[dict[str, str]]]:
    """Each sample name's label sets."""
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    for line in exposition.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1)].append(dict(LABEL.findall(m.group(2) or "")))
    return out


def test_promtool_accepts_the_exposition(scrape: str) -> None:
    run_tool("promtool", "check", "metrics", stdin=scrape.encode())


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=lambda v: str(v)[:60])
def test_queried_metrics_and_labels_are_exposed(scrape: str, where: str, expr: str) -> None:
    names = exposed_names(scrape) | PROMETHEUS_SERIES
    series = samples(scrape)
    for name, matchers in SELECTOR.findall(STRING.sub('""', expr)):
        if name in {"by", "without", "on", "ignoring", "group_left", "group_right"}:
            continue
        assert name in names, f"{where}: {name} is not exposed by the worker"
        used = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers)) - TARGET_LABELS
        if series.get(name):
            have = set().union(*(s.keys() for s in series[name]))
            assert used <= have, f"{where}: {name} has no label {used - have} (has {have})"


def test_what_the_alerts_rely_on_is_exported(scrape: str) -> None:
    series = samples(scrape)
    states = series["detector_rule_state"]
    # The breaker states the alerts and the dashboard name are the engine's.
    assert {s["state"] for s in states} == {s.value for s in State}
    # Exactly one state is current per rule that has states; the tripped rule is paused.
    current = [
        s
        for s, value in zip(states, _values(scrape, "detector_rule_state"), strict=True)
        if value == 1
    ]
    assert sorted(s["rule_id"] for s in current) == sorted({s["rule_id"] for s in states})
    assert {"rule_id": "bot", "state": "open"} in current or {
        "rule_id": "bot",
        "state": "half_open",
    } in current
    # The global view has its own per-bucket series (read by DetectorGlobalHalt).
    judged = {s["rule_id"] for s in series["detector_rule_deactivations"]}
    assert {GLOBAL_RULE_ID, "bot", "spam", "fraud"} <= judged
    # Account ids never appear in a label.
    for name, label_sets in series.items():
        for labels in label_sets:
            assert "account_id" not in labels, name


def test_the_dashboard_offers_every_judged_rule(scrape: str) -> None:
    """The ``rule`` variable lists every rule the engine judges, not only those that
    ever changed state; so does the breaker-state panel."""
    series = samples(scrape)
    judged = {s["rule_id"] for s in series["detector_rule_deactivations"]}
    assert judged <= {s["rule_id"] for s in series["detector_rule_state"]}
    checked = 0
    for path in sorted(DASHBOARDS.glob("*.json")):
        for where, expr in dashboard_queries(json.loads(path.read_text())):
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", expr.strip())
            if where.startswith("variable") and m:
                offered = {s.get(m.group(2)) for s in series.get(m.group(1), [])}
                assert judged <= offered, f"{path.name} {where} misses {judged - offered}"
                checked += 1
    assert checked, "no label_values variable found"


def _values(exposition: str, name: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith(name + "{")
    ]
