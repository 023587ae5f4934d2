"""A stretch of event time without any action from any rule is skipped, not judged."""

from __future__ import annotations

import time

from detector.config import EngineConfig
from detector.engine.core import Engine
from detector.wire.aggregates import RuleTick

T0 = 1_767_571_200  # 2026-01-05T00:00:00Z


def feed_minutes(engine: Engine, start: float, minutes: int, per_tick: float = 2.0) -> None:
    tick_s = engine.config.tick_seconds
    first = int(start // tick_s)
    for t in range(first, first + minutes * engine.params.tpb):
        engine.add(RuleTick("r", t, per_tick, cells={"new|1-2|US": per_tick}))
        engine.advance((t + 1) * tick_s)


def test_a_long_gap_is_skipped_with_an_alert_and_quickly() -> None:
    cfg = EngineConfig(warmup_buckets=60)
    engine = Engine(cfg)
    feed_minutes(engine, T0, 90)
    rule = engine.rules["r"]
    learned = rule.s.baseline.n
    later = T0 + 90 * 60 + 30 * 86_400  # a month without any event
    engine.add(RuleTick("r", int(later // cfg.tick_seconds), 2.0))
    started = time.perf_counter()
    records = engine.advance(later + 60)
    took = time.perf_counter() - started
    gaps = [r for r in records if r.reason == "time_gap"]
    assert len(gaps) == 1 and gaps[0].rule_id == "*"
    assert gaps[0].evidence["skipped_seconds"] >= 30 * 86_400
    assert not [r for r in records if r.reason == "silent"]
    # Nothing learned from the empty month, and it did not take a month of buckets.
    assert rule.s.baseline.n - learned <= 2
    assert took < 1.0


def test_a_short_lull_is_judged_bucket_by_bucket() -> None:
    cfg = EngineConfig(warmup_buckets=60, max_gap_seconds=3600)
    engine = Engine(cfg)
    feed_minutes(engine, T0, 90)
    later = T0 + 90 * 60 + 30 * 60  # half an hour of silence: within max_gap_seconds
    engine.add(RuleTick("r", int(later // cfg.tick_seconds), 2.0))
    records = engine.advance(later + 60)
    assert not [r for r in records if r.reason == "time_gap"]
    # The empty buckets were judged: the rule going silent is a finding.
    assert "r" in {r.rule_id for r in records if r.reason == "silent"}
