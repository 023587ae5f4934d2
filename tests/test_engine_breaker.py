"""Every breaker transition driven through the engine (detector.engine.core and
detector.engine.rule): the detector's trip, cool-down and probe, and operator
commands, on a trained rule with seeded incidents. The state machine on its own
is tested in test_breaker.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import orjson
import pytest
from enginekit import (
    CFG,
    HOUR,
    ONSET,
    OPERATOR,
    RULES,
    SPAM,
    TICK,
    TRAINED,
    Command,
    aggregates,
    alerts,
    feed,
    replay,
    run,
    simulator,
    trained,
    transitions,
)

from detector.config import EngineConfig
from detector.engine.breaker import State, Trigger
from detector.engine.core import Engine
from detector.errors import DetectorError, StateError, TransitionError
from detector.sim.model import Incident
from detector.wire.aggregates import RuleTick
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import Record
from detector.wire.timefmt import to_rfc3339

TENURED = Incident("tenured", ("spam",), ONSET, HOUR, 3.0, target="tenured_clean")
"""Wrongful deactivations of tenured clean accounts: paused as surge_with_shift within seconds."""
REVERSALS = Incident("reversals", ("spam",), ONSET, HOUR, 10.0, effect="reversals")
END = TRAINED + 2 * HOUR


@functools.cache
def spam_aggregates(*incidents: Incident) -> tuple[RuleTick, ...]:
    return tuple(aggregates(simulator([SPAM], incidents), TRAINED, END))


def spam_run(
    incidents: tuple[Incident, ...] = (TENURED,),
    commands: tuple[Command, ...] = (),
    config: EngineConfig = CFG,
) -> tuple[Engine, list[Record]]:
    """Two hours of the spam rule's traffic from the trained state, with operator commands."""
    engine = Engine.restore(trained("spam"), config, global_view=False)
    return engine, replay(engine, spam_aggregates(*incidents), TRAINED, END, commands)


def path(records: list[Record]) -> list[tuple[str, str, str]]:
    return [(r.from_state, r.to_state, r.reason) for r in transitions(records)]


# ----- the detector's own transitions -------------------------------------------------------


def test_trip_cooldown_probe_and_close_on_quiet_traffic() -> None:
    short = dataclasses.replace(TENURED, duration=180.0)
    engine, records = spam_run((short,))
    assert path(records) == [
        ("closed", "open", "surge_with_shift"),
        ("open", "half_open", "cooldown_elapsed"),
        ("half_open", "closed", "probe_passed"),
    ]
    trip, half, closed = transitions(records)
    assert ONSET <= trip.at < ONSET + 60
    assert half.at - trip.at == CFG.cooldown_seconds
    assert closed.at - half.at == CFG.probe_seconds
    assert [r.evidence["trigger"] for r in (trip, half, closed)] == [
        "trip",
        "cooldown_elapsed",
        "probe_passed",
    ]
    assert [r.evidence["state_version"] for r in (trip, half, closed)] == [1, 2, 3]
    assert half.evidence["cooldown_seconds"] == CFG.cooldown_seconds
    assert closed.evidence["probe_seconds"] == CFG.probe_seconds
    s = engine.state_of("spam")
    assert s is not None
    assert (s.state, s.version, s.since, s.cooldown) == ("closed", 3, closed.at, 600.0)
    assert not [r for r in records if r.at > closed.at]


@pytest.mark.parametrize(
    ("max_cooldown", "cooldowns"),
    [
        (14_400.0, [600.0, 1200.0, 2400.0]),
        (1_500.0, [600.0, 1200.0, 1500.0, 1500.0]),
    ],
)
def test_failed_probes_double_the_cooldown_up_to_the_maximum(
    max_cooldown: float, cooldowns: list[float]
) -> None:
    config = dataclasses.replace(CFG, max_cooldown_seconds=max_cooldown)
    engine, records = spam_run(config=config)
    trs = transitions(records)
    assert trs[0].reason == "surge_with_shift"
    got = []
    for before, after in itertools.pairwise(trs):
        if after.reason == "cooldown_elapsed":
            assert before.to_state == "open"
            assert after.at - before.at == after.evidence["cooldown_seconds"]
            got.append(after.evidence["cooldown_seconds"])
        elif after.to_state == "open":  # the incident is still running: the probe fails
            assert (before.to_state, after.from_state) == ("half_open", "half_open")
            assert after.evidence["trigger"] == "probe_failed"
            assert after.reason in ("surge_with_shift", "extreme_surge")
            assert after.at < ONSET + HOUR
    assert got == cooldowns
    passed = [r for r in trs if r.reason == "probe_passed"]
    assert len(passed) == 1 and passed[0].at >= ONSET + HOUR
    s = engine.state_of("spam")
    assert s is not None and (s.state, s.cooldown) == ("closed", CFG.cooldown_seconds)


def test_a_running_reversal_flood_never_passes_a_probe() -> None:
    _, records = spam_run((REVERSALS,))
    trs = transitions(records)
    assert trs[0].reason == "reversal_surge"
    same_instant = [
        (a.at - ONSET, b.reason)
        for a, b in itertools.pairwise(trs)
        if a.reason == "probe_passed" and b.at == a.at
    ]
    assert same_instant == [], "probe passed and the rule re-tripped at the same instant"
    during = [r for r in trs if r.at < ONSET + HOUR]
    assert "probe_passed" not in [r.reason for r in during], path(during)


# ----- operator commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "state"),
    [
        (TRAINED + 300, "closed"),
        (ONSET + 60, "open"),  # tripped at ONSET + 8
        (ONSET + 620, "half_open"),  # probing since ONSET + 608 (judged 10 s late)
    ],
)
def test_operator_pause_is_never_lifted_by_the_detector(at: float, state: str) -> None:
    engine, records = spam_run(commands=((at, "spam", Trigger.OPERATOR_PAUSE, 0.0),))
    pause = next(r for r in records if r.reason == "operator_pause")
    # A command takes effect at the engine's own time: the last judged tick, at most
    # one tick plus the lateness behind the time it was issued.
    assert at - CFG.lateness_seconds - TICK <= pause.at <= at
    assert pause.evidence["issued_at"] == to_rfc3339(at)
    assert (pause.from_state, pause.to_state) == (state, "forced_open")
    assert pause.evidence["operator"] == OPERATOR["operator"]
    assert pause.evidence["trigger"] == "operator_pause"
    assert pause.evidence["config_version"] == CFG.version
    # Hours after the cool-down would have elapsed, with the incident over: still paused.
    assert records[records.index(pause) + 1 :] == []
    s = engine.state_of("spam")
    assert s is not None and s.state == "forced_open"


@pytest.mark.parametrize("grace", [0.0, 600.0])
def test_operator_resume_holds_off_the_detector_for_the_grace(grace: float) -> None:
    resume_at = ONSET + 120  # tripped at ONSET + 8; the incident runs for an hour
    _, records = spam_run(commands=((resume_at, "spam", Trigger.OPERATOR_RESUME, grace),))
    resume = next(r for r in records if r.reason == "operator_resume")
    assert (resume.from_state, resume.to_state) == ("open", "closed")
    after = transitions([r for r in records if r.at > resume.at])
    retrip = after[0]
    assert (retrip.from_state, retrip.to_state) == ("closed", "open")
    assert retrip.reason == "surge_with_shift"
    assert resume.at + grace <= retrip.at <= resume.at + grace + 60
    if grace:
        held = [r for r in alerts(records) if resume.at < r.at < resume.at + grace]
        assert held and all(r.evidence["would_pause"] is True for r in held)


@pytest.mark.parametrize(
    ("trigger", "state"),
    [(Trigger.OPERATOR_DISABLE, "disabled"), (Trigger.OPERATOR_SHADOW, "shadow")],
)
@pytest.mark.parametrize(
    ("incident", "reason"),
    [(TENURED, "surge_with_shift"), (REVERSALS, "reversal_surge")],
    ids=["tenured", "reversals"],
)
def test_disabled_or_shadow_rule_alerts_with_would_pause(
    trigger: Trigger, state: str, incident: Incident, reason: str
) -> None:
    engine, records = spam_run((incident,), commands=((TRAINED + 60, "spam", trigger, 0.0),))
    assert path(records) == [("closed", state, trigger.value)]
    finding = next(r for r in records if r.reason == reason)
    assert (finding.kind, finding.from_state, finding.to_state) == ("alert", state, state)
    assert finding.evidence["would_pause"] is True
    assert ONSET <= finding.at <= ONSET + 600
    s = engine.state_of("spam")
    assert s is not None and s.state == state


def test_enable_after_shadow_lets_the_detector_pause_again() -> None:
    enable_at = ONSET + 600
    commands = (
        (TRAINED + 60, "spam", Trigger.OPERATOR_SHADOW, 0.0),
        (enable_at, "spam", Trigger.OPERATOR_ENABLE, 0.0),
    )
    _, records = spam_run(commands=commands)
    trs = transitions(records)
    assert path(records)[:3] == [
        ("closed", "shadow", "operator_shadow"),
        ("shadow", "closed", "operator_enable"),
        ("closed", "open", "surge_with_shift"),
    ]
    assert trs[1].at <= trs[2].at <= enable_at + 60


def engine_in(state: str) -> tuple[Engine, float]:
    """The trained spam rule brought into ``state``; and the event time it is at."""
    engine = Engine.restore(trained("spam"), CFG, global_view=False)
    aggs = spam_aggregates(TENURED)
    at = {"open": ONSET + 60, "half_open": ONSET + 620}.get(state, TRAINED + 60)
    feed(engine, [a for a in aggs if a.tick * TICK < at], TRAINED, at)
    command = {
        "forced_open": Trigger.OPERATOR_PAUSE,
        "disabled": Trigger.OPERATOR_DISABLE,
        "shadow": Trigger.OPERATOR_SHADOW,
    }.get(state)
    if command is not None:
        engine.command("spam", command, at, OPERATOR)
    s = engine.state_of("spam")
    assert s is not None and s.state == state
    return engine, at


INVALID = [
    ("open", Trigger.OPERATOR_ENABLE),
    ("half_open", Trigger.OPERATOR_ENABLE),
    ("forced_open", Trigger.OPERATOR_DISABLE),
    ("forced_open", Trigger.OPERATOR_SHADOW),
    ("forced_open", Trigger.OPERATOR_ENABLE),
    ("disabled", Trigger.OPERATOR_RESUME),
    ("shadow", Trigger.OPERATOR_RESUME),
]


@pytest.mark.parametrize(("state", "trigger"), INVALID)
def test_invalid_operator_transition_raises_and_changes_nothing(
    state: str, trigger: Trigger
) -> None:
    engine, at = engine_in(state)
    before = orjson.dumps(engine.snapshot())
    with pytest.raises(TransitionError) as info:
        engine.command("spam", trigger, at, OPERATOR, grace_seconds=60.0)
    assert (info.value.rule_id, info.value.state, info.value.trigger) == (
        "spam",
        state,
        trigger.value,
    )
    assert orjson.dumps(engine.snapshot()) == before
    assert engine.advance(at) == []


IDEMPOTENT = [
    ("closed", Trigger.OPERATOR_RESUME),
    ("closed", Trigger.OPERATOR_ENABLE),
    ("forced_open", Trigger.OPERATOR_PAUSE),
    ("disabled", Trigger.OPERATOR_DISABLE),
    ("shadow", Trigger.OPERATOR_SHADOW),
]


@pytest.mark.parametrize(("state", "trigger"), IDEMPOTENT)
def test_repeated_command_changes_nothing(state: str, trigger: Trigger) -> None:
    engine, at = engine_in(state)
    before = orjson.dumps(engine.snapshot())
    assert engine.command("spam", trigger, at + 5, OPERATOR, grace_seconds=600.0) == []
    assert orjson.dumps(engine.snapshot()) == before


@pytest.mark.parametrize(
    ("state", "trigger"),
    [("closed", Trigger.TRIP), ("open", Trigger.COOLDOWN_ELAPSED)],
)
def test_command_rejects_the_detectors_own_triggers(state: str, trigger: Trigger) -> None:
    engine, at = engine_in(state)
    with pytest.raises(DetectorError):
        engine.command("spam", trigger, at, OPERATOR)


def test_records_after_a_command_are_not_dated_before_it() -> None:
    commands = (
        (TRAINED + 60, "spam", Trigger.OPERATOR_SHADOW, 0.0),
        (ONSET + 600, "spam", Trigger.OPERATOR_ENABLE, 0.0),
    )
    _, records = spam_run(commands=commands)
    enable = next(i for i, r in enumerate(records) if r.reason == "operator_enable")
    at = records[enable].at
    earlier = [(r.at - at, r.from_state, r.reason) for r in records[enable:] if r.at < at]
    assert earlier == []


def test_operator_halts_and_resumes_the_global_view() -> None:
    engine = Engine.restore(trained(), CFG)
    at = TRAINED + 30
    halt = engine.command(GLOBAL_RULE_ID, Trigger.OPERATOR_PAUSE, at, OPERATOR)
    assert path(halt) == [("closed", "forced_open", "operator_pause")]
    assert halt[0].rule_id == GLOBAL_RULE_ID
    glob = engine.state_of(GLOBAL_RULE_ID)
    assert glob is not None and glob.state == State.FORCED_OPEN
    # The halt is the operator's: an hour of traffic does not lift it.
    aggs = aggregates(simulator(RULES), TRAINED, TRAINED + HOUR)
    assert feed(engine, aggs, TRAINED, TRAINED + HOUR) == []
    resume = engine.command(GLOBAL_RULE_ID, Trigger.OPERATOR_RESUME, TRAINED + HOUR, OPERATOR)
    assert path(resume) == [("forced_open", "closed", "operator_resume")]
    assert all(r.s.state == "closed" for r in engine.rules.values())


def test_global_command_without_a_global_view_is_an_error() -> None:
    engine = Engine.restore(trained("spam"), CFG, global_view=False)
    with pytest.raises(StateError):
        engine.command(GLOBAL_RULE_ID, Trigger.OPERATOR_PAUSE, TRAINED, OPERATOR)


def test_run_helper_agrees_with_replay() -> None:
    """The two drivers of the test kit feed the engine the same way."""
    _, a = run(trained("spam"), [SPAM], 2.0, incidents=[TENURED])
    _, b = spam_run()
    assert a == b


def test_an_operator_resume_of_the_global_view_forgets_the_trips_behind_the_halt() -> None:
    # Rules that tripped during a global halt (their probes failed while it held) must not
    # halt everything again right after the operator lifts it: the operator has seen them.
    engine = Engine.restore(trained(), CFG)
    at = TRAINED + 30
    engine.command(GLOBAL_RULE_ID, Trigger.OPERATOR_PAUSE, at, OPERATOR)
    engine.recent_trips = [(at, "rule-001"), (at, "rule-003"), (at, "rule-005")]
    engine.command(GLOBAL_RULE_ID, Trigger.OPERATOR_RESUME, at + 60, OPERATOR)
    # The next tick on which anything happens looks at the recent trips again.
    engine._many_rules(len(engine._out), engine.now + 5)
    assert engine._drain() == []
    glob = engine.state_of(GLOBAL_RULE_ID)
    assert glob is not None and glob.state == State.CLOSED


def test_rules_held_by_the_global_halt_are_not_silent_and_learn_nothing() -> None:
    # The enforcement service holds every rule's decisions: the detector sees nothing.
    engine = Engine.restore(trained(), CFG)
    engine.command(GLOBAL_RULE_ID, Trigger.OPERATOR_PAUSE, TRAINED + 30, OPERATOR)
    before = {r: rule.s.baseline.n for r, rule in engine.rules.items()}
    records = feed(engine, [], TRAINED, TRAINED + 2 * HOUR)
    assert [r for r in records if r.reason == "silent"] == []
    assert {r: rule.s.baseline.n for r, rule in engine.rules.items()} == before
    # Once the halt is lifted, silence is a signal again.
    engine.command(GLOBAL_RULE_ID, Trigger.OPERATOR_RESUME, TRAINED + 2 * HOUR, OPERATOR)
    records = feed(engine, [], TRAINED + 2 * HOUR, TRAINED + 4 * HOUR)
    assert {r.rule_id for r in records if r.reason == "silent"}
