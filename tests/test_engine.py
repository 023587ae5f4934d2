"""The engine (detector.engine.core) end to end on simulated traffic with known
ground truth: the decision policy on trained rules, warm-up, the global view,
determinism and persistence. Breaker transitions are in test_engine_breaker.py.

Every scenario starts from one trained state (see ``enginekit.trained``) and
replays seeded traffic, so each outcome is exactly reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from enginekit import (
    BROAD,
    BUCKET,
    CFG,
    FINDING_EVIDENCE,
    HOUR,
    MAKEUP_EVIDENCE,
    ONSET,
    RULES,
    SLOW,
    SPAM,
    T0,
    TICK,
    TRAINED,
    aggregates,
    by_tick,
    copy_tick,
    feed,
    first,
    onset_of,
    roundtrip,
    run,
    simulator,
    steady,
    trained,
    transitions,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from detector.engine.core import BucketScore, Engine
from detector.sim.model import Incident, RuleSpec, SpamWave
from detector.wire.aggregates import RuleTick
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import ALERT, Record

DETECT_WITHIN = 600.0
"""Every finding of the policy table comes within ten minutes of the onset."""
FEW = settings(max_examples=8, deadline=None, derandomize=True)


def test_fixtures() -> None:
    """The trained rules are out of warm-up, with a known make-up, and quiet."""
    engine = Engine.restore(trained(), CFG)
    assert (CFG.bucket_seconds, CFG.tick_seconds, CFG.warmup_buckets) == (60, 5, 1440)
    assert sorted(engine.rules) == sorted(spec.rule_id for spec in RULES)
    for rule_id, rule in engine.rules.items():
        s = rule.s
        assert (s.state, s.warm, s.known, s.version) == ("closed", False, True, 0), rule_id
    assert engine.glob is not None and not engine.glob.s.warm
    assert TRAINED < ONSET < TRAINED + HOUR


# ----- 1. decision policy ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Policy:
    """One row of the decision policy: traffic on a trained rule and the expected finding."""

    name: str
    spec: RuleSpec
    reason: str
    pauses: bool
    incident: Incident | None = None
    wave: SpamWave | None = None
    shifted: bool | None = None
    """Who is hit: well outside the usual population (True), the usual one (False)."""


POLICY = [
    Policy(
        "3x on the usual population (spam wave)",
        SPAM,
        "surge",
        pauses=False,
        wave=SpamWave("spam", ONSET, HOUR, 3.0, ramp_seconds=5.0),
        shifted=False,
    ),
    Policy(
        "3x wrongful deactivations of tenured clean accounts",
        SPAM,
        "surge_with_shift",
        pauses=True,
        incident=Incident("tenured", ("spam",), ONSET, HOUR, 3.0, target="tenured_clean"),
        shifted=True,
    ),
    Policy(
        "20x on a broad rule",
        BROAD,
        "extreme_surge",
        pauses=True,
        incident=Incident("20x", ("broad",), ONSET, HOUR, 20.0),
    ),
    Policy(
        "reversal flood 10x",
        SPAM,
        "reversal_surge",
        pauses=True,
        incident=Incident("reversals", ("spam",), ONSET, HOUR, 10.0, effect="reversals"),
    ),
    Policy(
        "rule goes silent",
        SPAM,
        "silent",
        pauses=False,
        incident=Incident("silence", ("spam",), ONSET, HOUR, 0.0, effect="silence"),
    ),
]
POLICY_BY_NAME = {case.name: case for case in POLICY}


@functools.cache
def policy_records(name: str) -> tuple[Record, ...]:
    """Two hours of one policy row's traffic from the trained state (run once)."""
    case = POLICY_BY_NAME[name]
    _, records = run(
        trained(case.spec.rule_id),
        [case.spec],
        2.0,
        incidents=[case.incident] if case.incident else [],
        waves=[case.wave] if case.wave else [],
    )
    return tuple(records)


@pytest.mark.parametrize("case", POLICY, ids=lambda c: c.name)
def test_decision_policy(case: Policy) -> None:
    records = policy_records(case.name)
    assert records, "nothing was found"
    assert all(r.at >= ONSET for r in records), "a finding before the onset"
    finding = first(records, reason=case.reason)
    assert finding.at - ONSET <= DETECT_WITHIN
    ev = finding.evidence
    assert ev["config_version"] == CFG.version
    assert ev["statistic"] >= ev["threshold"] > 0
    if case.pauses:
        trip = transitions(records)[0]
        assert trip == finding
        assert (trip.from_state, trip.to_state) == ("closed", "open")
        assert (ev["trigger"], ev["state_version"]) == ("trip", 1)
    else:
        assert transitions(records) == []
        assert (finding.kind, finding.from_state, finding.to_state) == (ALERT, "closed", "closed")
        assert ev["would_pause"] is False
    if case.reason == "silent":
        assert ev["observed"] < CFG.silence_shift * ev["expected"]
        return
    needed: tuple[str, ...] = FINDING_EVIDENCE
    if case.reason != "reversal_surge":  # the trained rule's make-up is known
        needed += MAKEUP_EVIDENCE
    for key in needed:
        assert ev[key] is not None, key
    assert ev["observed"] > ev["expected"] > 0
    if case.reason == "extreme_surge":
        assert ev["observed"] > CFG.extreme_ratio * ev["expected"]
    if case.shifted is not None:
        outside = ev["outside_share"] - ev["usual_outside_share"]
        if case.shifted:
            assert outside >= 0.3, ev
        else:
            assert outside < CFG.shift_min_excess, ev


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in POLICY
        if c.reason != "silent"  # a silence alert names no onset
    ],
    ids=lambda c: c.name,
)
def test_evidence_onset_is_not_after_the_true_onset(case: Policy) -> None:
    finding = first(policy_records(case.name), reason=case.reason)
    assert onset_of(finding) <= ONSET, finding.evidence


def test_a_paused_rules_buckets_still_score_how_anomalous_they_are() -> None:
    """A paused rule is not judged, but its anomaly score (the dashboards' and the page's)
    still measures each bucket: at 20x, from the bucket it trips in on, every bucket
    scores 1, not 0."""
    engine = Engine.restore(trained(BROAD.rule_id), CFG)
    scores: list[BucketScore] = []
    engine.on_bucket = scores.append
    incident = Incident("20x", ("broad",), ONSET, HOUR, 20.0)
    t1 = TRAINED + HOUR
    aggs = aggregates(simulator([BROAD], [incident]), TRAINED, t1)
    trip = transitions(feed(engine, aggs, TRAINED, t1))[0]
    assert trip.to_state == "open"
    trip_bucket = trip.at // BUCKET * BUCKET
    during = [b.score for b in scores if trip_bucket <= b.start]
    before = [b.score for b in scores if b.start < ONSET // BUCKET * BUCKET]
    assert len(during) >= 10 and set(during) == {1.0}
    assert before and max(before) < 1.0


def test_every_transition_carries_versions_and_its_trigger() -> None:
    """Cool-down and probe transitions too: the state version counts every transition."""
    seen = 0
    for case in POLICY:
        versions: dict[str, int] = {}
        for rec in transitions(policy_records(case.name)):
            ev = rec.evidence
            assert ev["config_version"] == CFG.version
            assert ev["trigger"]
            assert ev["state_version"] == versions.get(rec.rule_id, 0) + 1
            versions[rec.rule_id] = ev["state_version"]
            if rec.to_state == "open":
                needed: tuple[str, ...] = FINDING_EVIDENCE
                if rec.reason != "reversal_surge":  # reversals have no who-is-hit evidence
                    needed += MAKEUP_EVIDENCE
                for key in needed:
                    assert ev.get(key) is not None, (rec.reason, key)
            seen += 1
    assert seen >= 6


# ----- 2. warm-up -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_seen_minutes", "per_tick", "paused"),
    [
        (0, 25.0, False),  # busy from the engine's start: it existed before the engine
        (30, 25.0, False),  # first seen in the engine's first hour: the same
        (59, 25.0, False),
        (60, 25.0, True),  # first seen after the first hour: 300 a bucket reaches the cap
        (90, 25.0, True),
        (90, 8.0, False),  # 96 a bucket stays below the cap of 200
    ],
)
def test_warmup_cap_applies_to_rules_new_after_the_first_hour(
    first_seen_minutes: int, per_tick: float, paused: bool
) -> None:
    seen = T0 + first_seen_minutes * 60
    end = seen + 20 * 60
    aggs = by_tick(steady("anchor", T0, end, 1.0), steady("new", seen, end, per_tick))
    records = feed(Engine(CFG), aggs, T0, end)
    assert [r for r in records if r.rule_id != "new"] == []
    if not paused:
        assert records == []
        return
    trip = transitions(records)[0]
    ticks_to_cap = -(-CFG.warmup_cap_per_bucket // per_tick)
    assert (trip.from_state, trip.to_state, trip.reason) == ("closed", "open", "warmup_cap")
    assert trip.at == seen + ticks_to_cap * TICK
    assert trip.evidence["observed"] == ticks_to_cap * per_tick >= CFG.warmup_cap_per_bucket
    assert trip.evidence["threshold"] == CFG.warmup_cap_per_bucket
    assert trip.evidence["warming_up"] is True
    assert trip.evidence["state_version"] == 1


def test_busy_rule_present_from_the_start_is_not_paused_during_warmup() -> None:
    """Seasonal, overdispersed traffic far above the cap, for the first three hours."""
    busy = RuleSpec("busy", 1000.0, makeup=SPAM.makeup)
    engine = Engine(CFG)
    end = T0 + 3 * HOUR
    records = feed(engine, aggregates(simulator([busy]), T0, end), T0, end)
    assert records == []
    s = engine.state_of("busy")
    assert s is not None and s.warm and min(s.hist_x) > CFG.warmup_cap_per_bucket


def test_rule_version_change_alerts_and_warms_up_again() -> None:
    new = dataclasses.replace(SLOW, version="2")
    engine, records = run(trained("slow"), [new], 0.5)
    assert len(records) == 1
    rec = records[0]
    judged = (aggregates(simulator([new]), TRAINED, TRAINED + HOUR / 2)[0].tick + 1) * TICK
    assert (rec.rule_id, rec.kind, rec.reason, rec.at) == (
        "slow",
        ALERT,
        "rule_version_changed",
        judged,
    )
    assert rec.evidence["previous_version"] == "1"
    assert rec.evidence["new_version"] == "2"
    assert rec.evidence["config_version"] == CFG.version
    s = engine.state_of("slow")
    assert s is not None
    assert (s.warm, s.rule_version, s.state, s.capped) == (True, "2", "closed", True)
    assert s.prev_baseline is not None and not s.prev_baseline.warming_up(engine.params.rates)
    assert s.baseline.n < CFG.warmup_buckets


def test_surge_of_20x_the_previous_versions_baseline_pauses() -> None:
    new = dataclasses.replace(SLOW, version="2")
    incident = Incident("20x", ("slow",), ONSET, HOUR, 20.0)
    _, records = run(trained("slow"), [new], 1.5, incidents=[incident])
    trips = transitions(records)
    assert trips, "never paused"
    trip = trips[0]
    assert (trip.to_state, trip.reason) == ("open", "extreme_surge")
    assert trip.evidence["test"] == "extreme_vs_previous_version"
    assert trip.at - ONSET <= DETECT_WITHIN


def test_rule_version_change_rearms_the_warmup_cap() -> None:
    """A busy rule's new version is held to the absolute cap like a new rule."""
    new = dataclasses.replace(SPAM, version="2")
    incident = Incident("20x", ("spam",), ONSET, HOUR, 20.0)
    _, records = run(trained("spam"), [new], 1.0, incidents=[incident])
    trip = transitions(records)[0]
    assert (trip.to_state, trip.reason) == ("open", "warmup_cap")
    assert ONSET <= trip.at <= ONSET + BUCKET + 20 * TICK


def test_make_up_after_a_version_change_describes_the_rules_normal_traffic() -> None:
    new = dataclasses.replace(SPAM, version="2")
    engine = Engine.restore(trained("spam"), CFG, global_view=False)
    aggs = aggregates(simulator([new]), TRAINED, TRAINED + 2 * HOUR)
    checked = 0
    for minute in range(10, 120, 10):
        t0, t1 = TRAINED + (minute - 10) * 60, TRAINED + minute * 60
        feed(engine, [a for a in aggs if t0 <= a.tick * TICK < t1], t0, t1)
        s = engine.state_of("spam")
        assert s is not None
        if s.known:
            share = sum(s.hist_out[-10:]) / sum(s.hist_n[-10:])
            assert share - s.makeup.outside_share < CFG.shift_min_excess, (minute, share)
            checked += 1
    assert checked >= 5


# ----- 3. the global view ---------------------------------------------------------------------

SHARED = ("rule-001", "rule-003", "rule-005")
"""30% of the ten trained rules."""
GLOBAL_REASONS = frozenset({"many_rules", "surge", "surge_with_shift", "extreme_surge"})


@functools.cache
def shared_failure() -> tuple[Record, ...]:
    """30% of the rules go wrong together at 3x, with the global view on (run once)."""
    incident = Incident("shared", SHARED, ONSET, HOUR, 3.0)
    _, records = run(trained(), RULES, 1.0, incidents=[incident], global_view=True)
    return tuple(records)


def test_shared_failure_of_30_percent_of_rules_halts_globally() -> None:
    assert len(SHARED) == round(0.3 * len(RULES))
    records = shared_failure()
    halts = transitions(records, GLOBAL_RULE_ID)
    assert halts, "no global halt"
    halt = halts[0]
    assert (halt.from_state, halt.to_state) == ("closed", "open")
    assert halt.reason in GLOBAL_REASONS
    assert ONSET <= halt.at <= ONSET + 15 * 60
    listed = halt.evidence.get("rules") or halt.evidence.get("top_rules") or []
    assert set(SHARED) <= set(listed)
    assert halt.evidence["config_version"] == CFG.version
    assert halt.evidence["state_version"] == 1
    assert not [r for r in records if r.at < ONSET]
    assert {r.rule_id for r in transitions(records)} <= {*SHARED, GLOBAL_RULE_ID}


def test_global_halt_cools_down() -> None:
    halts = transitions(shared_failure(), GLOBAL_RULE_ID)
    assert len(halts) >= 2, halts
    assert (halts[1].to_state, halts[1].reason) == ("half_open", "cooldown_elapsed")
    assert halts[1].at - halts[0].at == CFG.cooldown_seconds


@pytest.mark.parametrize(
    "incident",
    [
        Incident("tenured 20x", ("spam",), ONSET, HOUR, 20.0, target="tenured_clean"),
        Incident("broad 20x", ("broad",), ONSET, HOUR, 20.0),
        # the busiest rule: 20x of it lifts the total deactivations about 4.5x
        Incident("busiest 20x", ("rule-002",), ONSET, HOUR, 20.0),
    ],
    ids=lambda i: i.kind,
)
def test_one_rules_incident_does_not_halt_globally(incident: Incident) -> None:
    assert max(RULES, key=lambda s: s.rate_per_min).rule_id == "rule-002"
    _, records = run(trained(), RULES, 1.0, incidents=[incident], global_view=True)
    assert transitions(records, incident.rule_ids[0]), "the rule itself was not paused"
    assert [r for r in records if r.rule_id == GLOBAL_RULE_ID] == []


# ----- 4. determinism and persistence ---------------------------------------------------------

MIXED = [
    Incident("tenured", ("spam",), ONSET, 1200, 3.0, target="tenured_clean"),
    Incident("reversals", ("broad",), ONSET + 300, 1800, 10.0, effect="reversals"),
    Incident("20x", ("slow",), ONSET + 600, 600, 20.0),
]
"""Overlapping incidents on three rules: trips, cool-downs, probes and alerts."""
MIXED_SPECS = (SPAM, BROAD, SLOW)
MIXED_END = TRAINED + 2 * HOUR


@functools.cache
def mixed_aggregates() -> tuple[RuleTick, ...]:
    return tuple(aggregates(simulator(MIXED_SPECS, MIXED), TRAINED, MIXED_END))


@functools.cache
def mixed_records() -> tuple[Record, ...]:
    """The uninterrupted run that the other ways of feeding must reproduce."""
    engine = Engine.restore(trained("spam", "broad", "slow"), CFG, global_view=False)
    return tuple(feed(engine, mixed_aggregates(), TRAINED, MIXED_END))


def test_mixed_scenario_exercises_the_breaker() -> None:
    reasons = {(r.rule_id, r.reason) for r in mixed_records()}
    assert {("spam", "surge_with_shift"), ("broad", "reversal_surge")} <= reasons
    assert {r.reason for r in mixed_records()} >= {"cooldown_elapsed", "probe_passed"}


def test_same_aggregates_give_the_same_records() -> None:
    incident = Incident("shared", SHARED, ONSET, HOUR, 3.0)
    aggs = aggregates(simulator(RULES, [incident]), TRAINED, TRAINED + HOUR)
    engines = [Engine.restore(trained(), CFG) for _ in range(2)]
    outs = [feed(e, aggs, TRAINED, TRAINED + HOUR) for e in engines]
    assert outs[0] and outs[0] == outs[1]
    assert orjson.dumps(engines[0].snapshot()) == orjson.dumps(engines[1].snapshot())


def feed_with_restores(
    snapshot: dict[str, Any],
    aggs: Sequence[RuleTick],
    t0: float,
    t1: float,
    cuts: Sequence[float],
    *,
    global_view: bool,
) -> list[Record]:
    """Feed ``[t0, t1)``, replacing the engine by a restored copy of itself at each cut."""
    engine = Engine.restore(snapshot, CFG, global_view=global_view)
    records: list[Record] = []
    start = t0
    for cut in [*sorted(cuts), t1]:
        part = [a for a in aggs if start <= a.tick * TICK < cut]
        records += feed(engine, part, start, cut)
        engine = Engine.restore(roundtrip(engine.snapshot()), CFG, global_view=global_view)
        start = cut
    return records


@FEW
@given(
    st.lists(
        st.floats(ONSET - 60, ONSET + 2400).map(lambda t: round(t, 1)),
        min_size=1,
        max_size=4,
        unique=True,
    )
)
@example([ONSET + 7.5, ONSET + 300, ONSET + 605, ONSET + 1203.2])
def test_snapshot_and_restore_mid_incident_change_nothing(cuts: list[float]) -> None:
    records = feed_with_restores(
        trained("spam", "broad", "slow"),
        mixed_aggregates(),
        TRAINED,
        MIXED_END,
        cuts,
        global_view=False,
    )
    assert records == list(mixed_records())


def test_snapshot_and_restore_after_a_global_halt_change_nothing() -> None:
    incident = Incident("shared", SHARED, ONSET, HOUR, 3.0)
    end = TRAINED + 2 * HOUR
    aggs = aggregates(simulator(RULES, [incident]), TRAINED, end)
    whole = feed(Engine.restore(trained(), CFG), aggs, TRAINED, end)
    cuts = [ONSET + 60, ONSET + 600, ONSET + 1200]
    assert feed_with_restores(trained(), aggs, TRAINED, end, cuts, global_view=True) == whole


def test_restore_in_the_first_hour_keeps_rules_of_the_first_hour_uncapped() -> None:
    end = T0 + HOUR
    aggs = by_tick(steady("anchor", T0, end, 1.0), steady("busy", T0 + 1200, end, 25.0))
    whole = feed(Engine(CFG), aggs, T0, end)
    assert whole == []
    cut = T0 + 600
    engine = Engine(CFG)
    records = feed(engine, [a for a in aggs if a.tick * TICK < cut], T0, cut)
    engine = Engine.restore(roundtrip(engine.snapshot()), CFG)
    records += feed(engine, [a for a in aggs if a.tick * TICK >= cut], cut, end)
    assert records == whole


def split(agg: RuleTick, rnd: random.Random) -> list[RuleTick]:
    """``agg`` as one to three sub-aggregates of the same rule and tick."""
    parts = [
        RuleTick(agg.rule_id, agg.tick, versions=list(agg.versions))
        for _ in range(rnd.randint(1, 3))
    ]
    for cell, n in agg.cells.items():
        for _ in range(int(n)):
            part = rnd.choice(parts)
            part.cells[cell] = part.cells.get(cell, 0.0) + 1.0
            part.deactivations += 1.0
    for _ in range(int(agg.reversals)):
        rnd.choice(parts).reversals += 1.0
    return parts


@FEW
@given(st.randoms(use_true_random=True))
def test_sub_aggregates_of_a_tick_give_the_same_records(rnd: random.Random) -> None:
    aggs = mixed_aggregates()
    assert all(a.deactivations == sum(a.cells.values()) for a in aggs)
    pieces: list[RuleTick] = []
    start = 0
    while start < len(aggs):
        end = start
        while end < len(aggs) and aggs[end].tick == aggs[start].tick:
            end += 1
        tick = [p for a in aggs[start:end] for p in split(a, rnd)]
        rnd.shuffle(tick)
        pieces += tick
        start = end
    engine = Engine.restore(trained("spam", "broad", "slow"), CFG, global_view=False)
    assert feed(engine, pieces, TRAINED, MIXED_END) == list(mixed_records())


def test_add_does_not_modify_the_callers_aggregates() -> None:
    tick = TRAINED // TICK
    first_part = RuleTick("spam", tick, 3.0, cells={"new|1-2|BR": 3.0}, versions=["1"])
    kept = first_part.to_dict()
    engine = Engine.restore(trained("spam"), CFG, global_view=False)
    engine.add(first_part)
    engine.add(RuleTick("spam", tick, 2.0, cells={"new|1-2|BR": 2.0}, versions=["1"]))
    assert first_part.to_dict() == kept


def test_a_snapshot_does_not_change_when_the_engine_moves_on() -> None:
    engine = Engine.restore(trained("spam"), CFG, global_view=False)
    tick = TRAINED // TICK + 1
    engine.add(RuleTick("spam", tick, 3.0, cells={"new|1-2|BR": 3.0}, versions=["1"]))
    snap = engine.snapshot()
    kept = orjson.dumps(snap)
    engine.add(RuleTick("spam", tick, 2.0, cells={"new|1-2|BR": 2.0}, versions=["2"]))
    assert orjson.dumps(snap) == kept


steps = st.lists(st.sampled_from([1.0, 2.5, 5.0, 7.0, 60.0, 97.0, 300.0]), min_size=1, max_size=6)


@FEW
@given(steps)
def test_watermark_steps_do_not_change_findings(watermark_steps: list[float]) -> None:
    """Alerts only (no breaker deadline): the surge and silence tests ignore batching."""
    incidents = [Incident("silence", ("spam",), ONSET, 1800, 0.0, effect="silence")]
    waves = [SpamWave("broad", ONSET, HOUR, 3.0, ramp_seconds=5.0)]
    end = TRAINED + 1.5 * HOUR
    aggs = aggregates(simulator((SPAM, BROAD), incidents, waves), TRAINED, end)
    records = []
    for wm_steps in ([float(TICK)], watermark_steps):
        engine = Engine.restore(trained("spam", "broad"), CFG, global_view=False)
        records.append(feed(engine, aggs, TRAINED, end, wm_steps))
    assert {r.reason for r in records[0]} == {"surge", "silent"}
    assert records[1] == records[0]


@FEW
@given(steps)
def test_watermark_steps_do_not_change_breaker_deadlines_of_busy_rules(
    watermark_steps: list[float],
) -> None:
    """Trips, cool-downs and probes of rules with data in (nearly) every tick."""
    engine = Engine.restore(trained("spam", "broad", "slow"), CFG, global_view=False)
    records = feed(engine, mixed_aggregates(), TRAINED, MIXED_END, watermark_steps)
    assert records == list(mixed_records())


@FEW
@given(steps)
@example([60.0])
def test_watermark_steps_do_not_change_breaker_deadlines_of_a_sparse_rule(
    watermark_steps: list[float],
) -> None:
    incident = Incident("20x", ("slow",), ONSET, 300, 20.0)
    end = TRAINED + 1.5 * HOUR
    aggs = aggregates(simulator([SLOW], [incident]), TRAINED, end)
    records = []
    for wm_steps in ([float(TICK)], watermark_steps):
        engine = Engine.restore(trained("slow"), CFG, global_view=False)
        records.append(feed(engine, aggs, TRAINED, end, wm_steps))
    assert [r.reason for r in transitions(records[0])][1:] == ["cooldown_elapsed", "probe_passed"]
    assert records[1] == records[0]


def test_late_aggregate_inside_the_open_bucket_is_counted() -> None:
    engine = Engine.restore(trained("spam"), CFG, global_view=False)
    t = TRAINED + 30  # the bucket opened at TRAINED; ticks up to TRAINED + 20 are judged
    tick = TRAINED // TICK
    aggs = aggregates(simulator([SPAM]), TRAINED, TRAINED + BUCKET)
    feed(engine, [a for a in aggs if a.tick * TICK < t], TRAINED, t)
    assert engine.tick == tick + 3
    s = engine.state_of("spam")
    assert s is not None
    before = s.x
    late = RuleTick("spam", tick + 1, 7.0, cells={"tenured|0|US": 7.0}, versions=["1"])
    assert engine.add(copy_tick(late)) is True
    assert s.x == before + 7.0
    # The bucket closes with the late aggregate in it, as if it had come on time.
    feed(engine, [a for a in aggs if a.tick * TICK >= t], t, TRAINED + BUCKET + 15)
    on_time = Engine.restore(trained("spam"), CFG, global_view=False)
    feed(on_time, by_tick(aggs, [late]), TRAINED, TRAINED + BUCKET + 15)
    assert on_time.state_of("spam").hist_x[-1] == s.hist_x[-1]  # type: ignore[union-attr]
    assert engine.late_rejected == 0


def test_late_aggregate_for_a_closed_bucket_is_rejected() -> None:
    engine = Engine.restore(trained("spam"), CFG, global_view=False)
    t = TRAINED + BUCKET + 30
    feed(engine, aggregates(simulator([SPAM]), TRAINED, t), TRAINED, t)
    s = engine.state_of("spam")
    assert s is not None
    kept = orjson.dumps(s.to_dict())
    for tick in (TRAINED // TICK, TRAINED // TICK + 11):  # first and last tick of that bucket
        late = RuleTick("spam", tick, 7.0, cells={"tenured|0|US": 7.0}, versions=["1"])
        assert engine.add(late) is False
    assert engine.late_rejected == 2
    assert engine.snapshot()["late_rejected"] == 2
    assert orjson.dumps(s.to_dict()) == kept
