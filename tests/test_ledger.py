"""The affected-accounts ledger: complete for the incident window, the same whatever
the slicing of the input, bounded, and rebuilt exactly after a restart."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from test_worker import CONFIG, HISTORY, START, scenario

from detector.backtest import Backtest
from detector.config import EngineConfig
from detector.ledger import Ledger
from detector.stream.batcher import PartitionBatcher, RawRecord
from detector.stream.machine import StateMachine
from detector.wire.affected import AffectedAccount, TripSummary
from detector.wire.aggregates import IngestBatch, RuleTick
from detector.wire.records import TRANSITION, Record
from detector.wire.timefmt import from_rfc3339, to_rfc3339

DEACTIVATIONS = ("deactivate_account", "suspend_account")
INCIDENT_START = START + HISTORY


@pytest.fixture(scope="module")
def traffic() -> Any:
    return scenario()


@pytest.fixture(scope="module")
def backtest(traffic: Any) -> Any:
    return Backtest(CONFIG, ledger=True).events(iter(traffic[0]))


def accounts(ledger: list[AffectedAccount | TripSummary]) -> set[tuple[str, str, str]]:
    return {(r.trip_id, r.event_id, r.phase) for r in ledger if isinstance(r, AffectedAccount)}


def windows(records: list[Record], rule_id: str) -> tuple[float, float, list[tuple[float, float]]]:
    """The first trip's onset and pause, and its probe windows, from the transitions."""
    trs = [r for r in records if r.is_transition and r.rule_id == rule_id]
    trip = next(r for r in trs if r.evidence.get("trigger") == "trip")
    probes, start = [], None
    for r in trs:
        if r.to_state == "half_open":
            start = r.at
        elif r.from_state == "half_open" and start is not None:
            probes.append((start, r.at))
            start = None
    if start is not None:
        probes.append((start, math.inf))
    return from_rfc3339(trip.evidence["onset"]), trip.at, probes


def test_a_trip_lists_every_deactivation_of_the_window(traffic: Any, backtest: Any) -> None:
    values, _, truth = traffic
    onset, paused, probes = windows(backtest.records, "bot")
    assert onset <= INCIDENT_START < paused
    want = set()
    for v in values:
        d = orjson.loads(v)
        if d["rule_id"] != "bot" or d["action"] not in DEACTIVATIONS or d.get("shadow"):
            continue
        t = from_rfc3339(d["occurred_at"])
        if onset <= t < paused:
            want.add(("bot#1", d["event_id"], "incident"))
        elif any(a <= t < b for a, b in probes):
            want.add(("bot#1", d["event_id"], "probe"))
        elif t >= paused:  # applied while paused: up to the end of the input
            want.add(("bot#1", d["event_id"], "held"))
    got = accounts(backtest.ledger)
    assert got == want
    assert len([r for r in backtest.ledger if isinstance(r, AffectedAccount)]) == len(got)
    # Ground truth: every wrongful deactivation before the pause is listed.
    wrongful = set(truth.wrongful_events)
    early = {
        orjson.loads(v)["event_id"]
        for v in values
        if orjson.loads(v)["event_id"] in wrongful
        and from_rfc3339(orjson.loads(v)["occurred_at"]) < paused
    }
    assert early, "the incident hit nobody before the pause: the test proves nothing"
    assert early <= {e for _, e, _ in got}
    summary = next(r for r in backtest.ledger if isinstance(r, TripSummary))
    assert (summary.onset, summary.paused_at, summary.truncated_before) == (onset, paused, None)


def batches(values: list[bytes], partitions: int, per_batch: int) -> list[IngestBatch]:
    """The daemon's view: events spread over partitions, cut into small batches."""
    cutters = {p: PartitionBatcher(p, CONFIG, partitions=partitions) for p in range(partitions)}
    out, offsets = [], dict.fromkeys(range(partitions), 0)
    for i, v in enumerate(values):
        p = i % partitions
        cutters[p].add(RawRecord("actions", p, offsets[p], None, v), 4e9)  # wall clock: later
        offsets[p] += 1
        if cutters[p].count >= per_batch:
            out.append(cutters[p].cut()[0])
    out += [b.cut()[0] for b in cutters.values() if b.count]
    out += [b.cut(active=False)[0] for b in cutters.values()]
    return out


def machine_ledger(msgs: list[IngestBatch], machine: StateMachine | None = None) -> list[Any]:
    machine = machine or StateMachine(CONFIG)
    out: list[Any] = []
    for offset, batch in enumerate(msgs, machine.position + 1):
        out += machine.apply(IngestBatch.from_bytes(batch.to_bytes()), offset).ledger
    return out


def closed_windows(backtest: Any) -> set[tuple[str, str, str]]:
    """The backtest's list without the window still open at the end of the input (the
    backtest lists it when the input ends; the daemon's input never ends)."""
    last = [r for r in backtest.records if r.is_transition and r.rule_id == "bot"][-1]
    open_since = math.inf if last.to_state == "closed" else last.at
    return {
        (r.trip_id, r.event_id, r.phase)
        for r in backtest.ledger
        if isinstance(r, AffectedAccount) and (r.phase == "incident" or r.occurred_at < open_since)
    }


def test_the_daemon_lists_what_the_backtest_lists(traffic: Any, backtest: Any) -> None:
    msgs = batches(traffic[0], partitions=3, per_batch=97)
    got = machine_ledger(msgs)
    assert {e[2] for e in accounts(got)} == {"incident", "probe", "held"}
    assert accounts(got) == closed_windows(backtest)
    trips = [r for r in got if isinstance(r, TripSummary)]
    assert trips[0] == next(r for r in backtest.ledger if isinstance(r, TripSummary))


def test_a_restarted_machine_rebuilds_its_ledger_exactly(traffic: Any, backtest: Any) -> None:
    msgs = batches(traffic[0], partitions=3, per_batch=97)
    onset, _, _ = windows(backtest.records, "bot")
    # Stop shortly before the trip: the rings hold the incident's first minutes.
    cut = next(
        i
        for i, b in enumerate(msgs)
        if b.watermark is not None and b.watermark > onset + 60 and b.partition == 0
    )
    first = StateMachine(CONFIG)
    before = machine_ledger(msgs[:cut], first)
    snap = orjson.loads(orjson.dumps(first.snapshot()))
    restored = StateMachine.restore(snap, CONFIG)
    ledger = restored.ledger
    wm = restored.watermark()
    assert wm is not None
    for offset in range(ledger.rebuilt_from, restored.position + 1):
        for agg in IngestBatch.from_bytes(msgs[offset].to_bytes()).aggregates:
            if agg.hits:
                ledger.add_tick(agg, offset, False)
    ledger.prune(wm)
    assert {r: list(q) for r, q in ledger.rings.items() if q} == {
        r: list(q) for r, q in first.ledger.rings.items() if q
    }
    after = machine_ledger(msgs[cut:], restored)
    assert accounts(before + after) == closed_windows(backtest)


def hit(t: float, n: int) -> tuple[float, str, str, str]:
    return (t, f"e{n}", f"a{n}", "deactivate_account")


def trip(rule: str, onset: float, at: float, version: int = 1) -> Record:
    return Record(
        rule,
        at,
        TRANSITION,
        "closed",
        "open",
        "surge",
        {"trigger": "trip", "onset": to_rfc3339(onset), "state_version": version},
    )


def test_memory_is_bounded_and_a_truncated_list_says_so() -> None:
    ledger = Ledger(EngineConfig(ledger_max_per_rule=100, ledger_horizon_seconds=600))
    ledger.add("r", [hit(1000.0 + i, i) for i in range(200)], 0)
    ledger.add("r", [hit(1200.0 + i, 200 + i) for i in range(50)], 1)
    assert ledger.size == 100
    assert [h[1] for c in ledger.rings["r"] for h in c.hits] == [f"e{i}" for i in range(150, 250)]
    out = ledger.on_records([trip("r", 1000.0, 1300.0)])
    summary = out[0]
    assert isinstance(summary, TripSummary)
    assert summary.truncated_before == 1149.0  # the newest entry the ring had to drop
    assert len(out) == 1 + 100
    ledger.prune(2000.0)  # far past the horizon
    assert ledger.size == 0


def test_late_and_probe_deactivations_are_listed_once() -> None:
    ledger = Ledger(EngineConfig())
    ledger.add("r", [hit(100.0, 1), hit(200.0, 2)], 0)
    out = ledger.on_records([trip("r", 150.0, 300.0)])
    assert [r.event_id for r in out if isinstance(r, AffectedAccount)] == ["e2"]
    # Late arrival inside the incident window, and one applied while paused (listed when
    # the pause ends).
    out = ledger.add("r", [hit(250.0, 3), hit(320.0, 4)], 1)
    assert [r.event_id for r in out] == ["e3"]
    half = Record("r", 900.0, TRANSITION, "open", "half_open", "cooldown_elapsed", {})
    assert [(r.event_id, r.phase) for r in ledger.on_records([half])] == [("e4", "held")]
    assert [(r.event_id, r.phase) for r in ledger.add("r", [hit(330.0, 7)], 2)] == [
        ("e7", "held")
    ]  # late, inside the closed held window
    assert ledger.add("r", [hit(950.0, 5)], 2) == []  # listed when the probe ends
    closed = Record("r", 1200.0, TRANSITION, "half_open", "closed", "probe_passed", {})
    out = ledger.on_records([closed])
    assert [(r.event_id, r.phase) for r in out if isinstance(r, AffectedAccount)] == [
        ("e5", "probe")
    ]
    ended = [r for r in out if isinstance(r, TripSummary)]
    assert ended and ended[0].status == "closed" and ended[0].ended_at == 1200.0
    out = ledger.add("r", [hit(1100.0, 6)], 3)  # late, inside the probe window
    assert [(r.event_id, r.phase) for r in out] == [("e6", "probe")]
    ledger.prune(1200.0 + CONFIG.lateness_seconds + 1)
    assert "r" not in ledger.trips
    # A new trip gets a new id.
    out = ledger.on_records([trip("r", 1500.0, 1600.0, version=5)])
    assert isinstance(out[0], TripSummary) and out[0].trip_id == "r#5"


def test_a_global_halt_lists_every_rules_deactivations_from_the_incidents_onset() -> None:
    """Rules the halt stopped before they tripped are listed too: from the earliest onset
    of the rules whose trips caused it, while it holds, and during its probe."""
    ledger = Ledger(EngineConfig())
    ledger.add("a", [hit(90.0, 1), hit(130.0, 2)], 0)
    ledger.add("b", [hit(110.0, 3)], 0)
    ledger.add("quiet", [hit(120.0, 4), hit(99.0, 5)], 0)
    out = ledger.on_records([trip("a", 100.0, 140.0)])
    assert [r.event_id for r in out if isinstance(r, AffectedAccount)] == ["e2"]
    halt = Record(
        "*",
        150.0,
        TRANSITION,
        "closed",
        "open",
        "many_rules",
        {"trigger": "trip", "rules": ["a", "b"], "state_version": 1},
    )
    out = ledger.on_records([halt])
    summary = out[0]
    assert isinstance(summary, TripSummary) and summary.trip_id == "*#1"
    assert summary.onset == 100.0  # rule a's, the earliest; b has no trip
    listed = [(r.rule_id, r.event_id, r.phase) for r in out if isinstance(r, AffectedAccount)]
    assert sorted(listed) == [
        ("a", "e2", "incident"),
        ("b", "e3", "incident"),
        ("quiet", "e4", "incident"),
    ]
    assert {r.trip_id for r in out} == {"*#1"}
    # While the halt holds, any rule's applied deactivation is listed under it (and under
    # the rule's own trip if it has one) when the held stretch ends.
    assert ledger.add("quiet", [hit(160.0, 6)], 1) == []
    assert [(r.trip_id, r.event_id) for r in ledger.add("a", [hit(135.0, 7)], 1)] == [
        ("a#1", "e7"),
        ("*#1", "e7"),
    ]  # late, inside both incident windows
    resumed = Record("*", 300.0, TRANSITION, "open", "closed", "operator_resume", {})
    out = ledger.on_records([resumed])
    assert [(r.rule_id, r.event_id, r.phase) for r in out if isinstance(r, AffectedAccount)] == [
        ("quiet", "e6", "held")
    ]
    assert out[-1] == TripSummary("*#1", "*", 100.0, 150.0, "many_rules", "closed", 300.0, None)


@pytest.mark.parametrize("path", ["fast", "full"])
def test_shadow_decisions_are_not_listed(path: str) -> None:
    from detector.aggregate import Aggregator
    from detector.wire.events import Event

    t0 = 1_700_000_000.0
    events = [
        Event("e1", t0, "r", "deactivate_account", "a1", region="DE", shadow=True),
        Event("e2", t0 + 1, "r", "deactivate_account", "a2", region="DE"),
        Event("e3", t0 + 2, "r", "warn", "a3"),
    ]
    agg = Aggregator(CONFIG, hits=True)
    if path == "fast":
        values = [ev.to_json() for ev in events]
        assert agg.add_raw(values, 0, len(values)) == len(values)
    else:
        for ev in events:
            assert agg.add(ev) is None
    (tick,) = agg.drain()
    assert tick.hits == [(t0 + 1, "e2", "a2", "deactivate_account")]
    assert (tick.deactivations, tick.shadow, tick.other) == (2, 1, 1)
    assert RuleTick.from_dict(orjson.loads(orjson.dumps(tick.to_dict()))).hits == tick.hits


def test_backtest_command_writes_the_ledger_as_the_worker_publishes_it(
    traffic: Any, backtest: Any, tmp_path: Any
) -> None:
    from detector.cli import main

    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(v + b"\n" for v in traffic[0]))
    out = tmp_path / "ledger.jsonl"
    config = tmp_path / "config.json"
    config.write_bytes(orjson.dumps({"warmup_buckets": CONFIG.warmup_buckets}))
    argv = ["backtest", str(events), "--config", str(config), "--ledger", str(out), "--quiet"]
    assert main(argv) == 0
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert written == [orjson.loads(r.to_json()) for r in backtest.ledger]
    assert any(r["kind"] == "account" for r in written)
