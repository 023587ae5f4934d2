"""Shared helpers of the engine tests: a seeded rule population, a trained engine
state (computed once per test session), and the driver loop that feeds simulated
aggregates to an engine tick by tick (the loop of ``bench/detection.py``'s
``run_engine``, kept here so that tests do not import the benchmark).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson

from detector.config import EngineConfig
from detector.engine.breaker import Trigger
from detector.engine.core import Engine
from detector.sim.model import (
    CELLS,
    GENERAL,
    Incident,
    RuleSpec,
    Simulator,
    SpamWave,
    chunk_aggregates,
    random_rules,
)
from detector.wire.aggregates import RuleTick
from detector.wire.records import ALERT, TRANSITION, Record
from detector.wire.timefmt import from_rfc3339

CFG = EngineConfig()
TICK = CFG.tick_seconds
BUCKET = CFG.bucket_seconds
HOUR = 3_600
DAY = 86_400
T0 = 1_767_571_200
"""2026-01-05T00:00:00Z, a Monday: the simulated traffic and the engine start here."""
SEED = 11
TRAIN_HOURS = 26
"""One day of history (1440 one-minute buckets) leaves warm-up; two hours to spare."""
TRAINED = T0 + TRAIN_HOURS * HOUR
"""Event time at which the trained state ends (02:00 on Tuesday)."""
ONSET = TRAINED + 1800 + 17.3
"""Where test incidents start: half an hour after training, mid-tick and mid-bucket."""
SIM_END = T0 + 3 * DAY
"""Every simulator ends here: a rule's drift path depends on the simulated span, so
one end keeps each rule's traffic identical between training and every test."""


def population(ages: Sequence[str], strikes: Sequence[str], regions: Sequence[str]) -> np.ndarray:
    """Uniform over the cells with these tenure bands, strike bands and regions."""
    want = {f"{a}|{s}|{r}" for a in ages for s in strikes for r in regions}
    p = np.array([1.0 if c in want else 0.0 for c in CELLS])
    out: np.ndarray = p / p.sum()
    return out


def distinctive(
    ages: Sequence[str], strikes: Sequence[str], regions: Sequence[str]
) -> tuple[float, ...]:
    """A rule's make-up: a distinctive population with a little of the platform mixed in."""
    mix = 0.97 * population(ages, strikes, regions) + 0.03 * GENERAL
    return tuple(float(v) for v in mix / mix.sum())


SPAM = RuleSpec(
    "spam",
    30.0,
    makeup=distinctive(("new", "young"), ("1-2", "3+"), ("BR", "IN", "ID")),
    reversal_fraction=0.03,
)
"""A spam rule: 30 deactivations a minute of new and young accounts with strikes."""
BROAD = RuleSpec("broad", 30.0, makeup=tuple(float(v) for v in GENERAL), broad=True)
"""A rule that hits the platform at large: who-is-hit evidence cannot help here."""
SLOW = RuleSpec("slow", 5.0, makeup=distinctive(("young",), ("3+",), ("US", "DE")))
"""A low-volume rule: even 20x of it stays below the warm-up cap per bucket."""
OTHERS = random_rules(7, SEED, min_rate=5.0, max_rate=60.0)
RULES = (SPAM, BROAD, SLOW, *OTHERS)


def simulator(
    specs: Sequence[RuleSpec],
    incidents: Sequence[Incident] = (),
    waves: Sequence[SpamWave] = (),
) -> Simulator:
    """The seeded simulator of these rules (their traffic does not depend on the others)."""
    return Simulator(
        list(specs),
        seed=SEED,
        start=T0,
        end=SIM_END,
        tick_seconds=TICK,
        incidents=list(incidents),
        waves=list(waves),
    )


def aggregates(sim: Simulator, t0: float, t1: float) -> list[RuleTick]:
    """The simulator's aggregates of the ticks in ``[t0, t1)``, in (tick, rule) order.

    The random stream of a chunk depends on its length: the same ticks asked for
    with another ``t1`` are different (but equally realistic) traffic.
    """
    out: list[RuleTick] = []
    for chunk in sim.chunks(t0, t1):
        for spec, ch in chunk:
            out += [agg for agg, _ in chunk_aggregates(spec, ch)]
    out.sort(key=lambda a: (a.tick, a.rule_id))
    return out


def copy_tick(agg: RuleTick) -> RuleTick:
    """A private copy: the engine merges later aggregates into the first one it queued."""
    return RuleTick.from_dict(agg.to_dict())


def feed(
    engine: Engine,
    aggs: Sequence[RuleTick],
    t0: float,
    t1: float,
    steps: Sequence[float] = (TICK,),
) -> list[Record]:
    """Drive ``engine`` over ``[t0, t1)``: add each aggregate before the watermark
    passes its tick's start, and move the watermark forward by ``steps`` (cycled;
    the default advances at the end of every tick, as the benchmark does)."""
    records: list[Record] = []
    i, k = 0, 0
    wm = t0
    while wm < t1:
        wm = min(wm + steps[k % len(steps)], t1)
        k += 1
        while i < len(aggs) and aggs[i].tick * TICK < wm:
            engine.add(copy_tick(aggs[i]))
            i += 1
        records += engine.advance(wm)
    return records


def run(
    snapshot: dict[str, Any],
    specs: Sequence[RuleSpec],
    hours: float,
    *,
    incidents: Sequence[Incident] = (),
    waves: Sequence[SpamWave] = (),
    global_view: bool = False,
    config: EngineConfig | None = None,
) -> tuple[Engine, list[Record]]:
    """Restore ``snapshot`` and replay ``hours`` of the rules' traffic from :data:`TRAINED`."""
    engine = Engine.restore(snapshot, config or CFG, global_view=global_view)
    t1 = TRAINED + hours * HOUR
    aggs = aggregates(simulator(specs, incidents, waves), TRAINED, t1)
    return engine, feed(engine, aggs, TRAINED, t1)


@functools.cache
def _trained_blob() -> bytes:
    engine = Engine(CFG)
    aggs = aggregates(simulator(RULES), T0, TRAINED)
    records = feed(engine, aggs, T0, TRAINED)
    assert not records, f"normal training traffic produced records: {records[:3]}"
    return orjson.dumps(engine.snapshot())


def trained(*rule_ids: str) -> dict[str, Any]:
    """A fresh copy of the engine state after :data:`TRAIN_HOURS` of normal traffic of
    every rule; with ``rule_ids``, only those rules' state (and no global view)."""
    snap: dict[str, Any] = orjson.loads(_trained_blob())
    if rule_ids:
        snap["rules"] = {r: snap["rules"][r] for r in rule_ids}
        snap["global"] = None
        snap["recent_trips"] = []
        snap["pending"] = {
            t: {r: a for r, a in aggs.items() if r in rule_ids}
            for t, aggs in snap["pending"].items()
        }
    return snap


def roundtrip(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as it comes back from storage (orjson bytes)."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(snapshot))
    return out


# ----- reading records -----


def transitions(records: Iterable[Record], rule_id: str | None = None) -> list[Record]:
    """The breaker transitions (of one rule)."""
    return [
        r for r in records if r.kind == TRANSITION and (rule_id is None or r.rule_id == rule_id)
    ]


def alerts(records: Iterable[Record], rule_id: str | None = None) -> list[Record]:
    """The alerts (of one rule)."""
    return [r for r in records if r.kind == ALERT and (rule_id is None or r.rule_id == rule_id)]


def first(records: Iterable[Record], **match: Any) -> Record:
    """The first record whose attributes equal ``match`` (e.g. ``reason="surge"``)."""
    for r in records:
        if all(getattr(r, k) == v for k, v in match.items()):
            return r
    raise AssertionError(f"no record with {match}")


def onset_of(record: Record) -> float:
    """The incident onset a record's evidence claims, in epoch seconds."""
    return from_rfc3339(record.evidence["onset"])


FINDING_EVIDENCE = ("test", "statistic", "threshold", "observed", "expected", "onset")
"""Evidence every surge or reversal finding carries."""
MAKEUP_EVIDENCE = ("outside_share", "usual_outside_share")
"""Who-is-hit evidence of a deactivation surge (``None`` only while the make-up is unknown)."""


def steady(
    rule_id: str, t0: float, t1: float, per_tick: float, cell: str = "new|0|US"
) -> list[RuleTick]:
    """A hand-made rule with exactly ``per_tick`` deactivations in every tick of ``[t0, t1)``."""
    return [
        RuleTick(rule_id, k, per_tick, cells={cell: per_tick}, versions=["1"])
        for k in range(math.ceil(t0 / TICK), math.ceil(t1 / TICK))
    ]


def by_tick(*streams: Iterable[RuleTick]) -> list[RuleTick]:
    """Several streams of aggregates merged in (tick, rule) order."""
    return sorted((a for s in streams for a in s), key=lambda a: (a.tick, a.rule_id))


Command = tuple[float, str, Trigger, float]
"""An operator command: event time, rule id, trigger, grace seconds."""
OPERATOR = {"operator": "alice", "ticket": "T-1"}


def replay(
    engine: Engine,
    aggs: Sequence[RuleTick],
    t0: float,
    t1: float,
    commands: Sequence[Command] = (),
) -> list[Record]:
    """:func:`feed`, with each operator command applied when the watermark reaches it."""
    records: list[Record] = []
    start = t0
    for at, rule_id, trigger, grace in sorted(commands):
        records += feed(engine, [a for a in aggs if start <= a.tick * TICK < at], start, at)
        records += engine.command(rule_id, trigger, at, OPERATOR, grace)
        start = at
    records += feed(engine, [a for a in aggs if start <= a.tick * TICK], start, t1)
    return records
