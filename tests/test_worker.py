"""End-to-end tests of ``detector worker`` on the embedded broker: real processes,
real signals, the decisions compared with a backtest of the same events."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from streamkit import (
    Topics,
    WorkerProc,
    create_worker_topics,
    produce,
    read_topic,
    records_of,
    wait_for,
)

from detector.backtest import Backtest
from detector.broker import EmbeddedBroker
from detector.config import EngineConfig
from detector.sim.events import GroundTruth, events
from detector.sim.model import TENURED_CLEAN, Incident, RuleSpec, Simulator
from detector.wire.affected import AffectedAccount, parse_ledger_record

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

START = 1_767_571_200.0  # 2026-01-05T00:00:00Z
HISTORY = 3 * 3600.0
INCIDENT = 40 * 60.0
# Two hours of warm-up instead of a day, so that a test needs hours, not days, of traffic.
CONFIG = EngineConfig(warmup_buckets=120)


def _makeup(young: float) -> tuple[float, ...]:
    weights = [0.0] * len(TENURED_CLEAN)
    # A distinctive population: new/young accounts with strikes (cells are age|strikes|region).
    from detector.sim.model import CELLS

    for i, cell in enumerate(CELLS):
        age, strikes, _ = cell.split("|")
        if age in ("new", "young") and strikes != "0":
            weights[i] = young if age == "new" else 1.0
    total = sum(weights)
    return tuple(w / total for w in weights)


RULES = [
    RuleSpec("spam", 30.0, makeup=_makeup(2.0)),
    RuleSpec("bot", 12.0, makeup=_makeup(3.0), version="7"),
    RuleSpec("fraud", 4.0, makeup=_makeup(1.0)),
]


def scenario() -> tuple[list[bytes], list[bytes], GroundTruth]:
    """History, then ``bot`` starts deactivating tenured accounts at 6x."""
    inc = Incident("shift", ("bot",), START + HISTORY, INCIDENT, 6.0, target="tenured_clean")
    sim = Simulator(RULES, seed=11, start=START, end=START + HISTORY + INCIDENT, incidents=[inc])
    truth = GroundTruth()
    values, keys = [], []
    for ev in events(sim, START, START + HISTORY + INCIDENT, truth):
        values.append(orjson.dumps(ev))
        keys.append(str(ev["account_id"]).encode())
    return values, keys, truth


@pytest.fixture(scope="module")
def traffic() -> tuple[list[bytes], list[bytes], GroundTruth]:
    return scenario()


@pytest.fixture(scope="module")
def expected(traffic: tuple[list[bytes], list[bytes], GroundTruth]) -> list[dict[str, Any]]:
    """The backtest's decisions on the same events."""
    result = Backtest(CONFIG).events(iter(traffic[0]))
    return [r.to_dict() for r in result.records]


@pytest.fixture
def workers(tmp_path: Path, broker: EmbeddedBroker) -> Iterator[list[WorkerProc]]:
    """Worker processes of the test; each is stopped by PID at the end."""
    procs: list[WorkerProc] = []
    yield procs
    for w in procs:
        w.stop()


async def check_ledger(broker: EmbeddedBroker, topics: Topics, values: list[bytes]) -> None:
    """The daemon's affected-accounts ledger lists what the backtest's lists: the same
    incident accounts, and of the probes and held stretches those that ended."""
    want = ledger_entries(Backtest(CONFIG, ledger=True).events(iter(values)).ledger)
    last: dict[bytes, Any] = {}
    for m in await read_topic(broker.bootstrap, topics.affected):
        last[m.key] = parse_ledger_record(m.value)
    got = ledger_entries(list(last.values()))
    incident = {e for e in want if e[2] == "incident"}
    assert incident, "no trip: the test proves nothing"
    assert {e for e in got if e[2] == "incident"} == incident
    assert {e for e in got if e[2] in ("probe", "held")} <= want


def ledger_entries(records: list[Any]) -> set[tuple[str, str, str]]:
    return {(r.trip_id, r.event_id, r.phase) for r in records if isinstance(r, AffectedAccount)}


def settled(records: list[dict[str, Any]], until: float) -> list[dict[str, Any]]:
    """Decisions at or before ``until``: the worker judges the last seconds only when
    its partitions have gone idle for long enough, the backtest at once."""
    from detector.wire.timefmt import from_rfc3339

    return [r for r in records if from_rfc3339(r["at"]) <= until]


async def test_worker_decides_like_the_backtest(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: tuple[list[bytes], list[bytes], GroundTruth],
    expected: list[dict[str, Any]],
) -> None:
    topics = Topics.unique("same")
    await create_worker_topics(broker, topics)
    values, keys, _ = traffic
    await produce(broker.bootstrap, topics.actions, values, keys)
    w = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG)
    workers.append(w.start())
    until = START + HISTORY + INCIDENT - 120
    want = settled(expected, until)
    assert any(r["to"] == "open" and r["rule_id"] == "bot" for r in want)

    await wait_for(
        lambda: ((w.health() or {}).get("watermark") or 0) > until + 60,
        90,
        "the worker to judge the events",
    )
    got = settled(records_of(await read_topic(broker.bootstrap, topics.alerts)), until)
    assert got == want
    assert w.metric("detector_events_consumed_total") == len(values)
    assert w.metric("detector_events_dead_lettered_total") == 0
    await check_ledger(broker, topics, traffic[0])
    w.signal(signal.SIGTERM)
    assert w.wait_exit(20) == 0
