"""Events to per-rule, per-tick aggregates (detector.aggregate), checked against a
naive recomputation, and the merge of aggregates (detector.wire.aggregates)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.aggregate import Aggregator
from detector.config import EngineConfig
from detector.errors import ContractError
from detector.wire.aggregates import RuleTick
from detector.wire.events import ACTIONS, Event

CFG = EngineConfig()  # 60 s buckets, 5 s ticks, 10 s lateness, 600 s max future
# A config under which no event of a 15-minute window is ever rejected.
LENIENT = EngineConfig(lateness_seconds=3600.0, max_future_seconds=3600.0)
# A bucket boundary: 2026-03-01T12:00:00Z.
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()

DEACTIVATING = {"deactivate_account", "suspend_account"}
REVERSING = {"reinstate_account", "restore_content"}
PROPS = settings(max_examples=200, deadline=None)


def event(
    t: float,
    rule: str = "r",
    action: str = "deactivate_account",
    *,
    shadow: bool = False,
    version: str | None = None,
    age: float | None = None,
    strikes: int | None = None,
    region: str | None = None,
) -> Event:
    return Event(
        "e", t, rule, action, "acct", rule_version=version, account_age_days=age,
        account_prior_strikes=strikes, region=region, shadow=shadow,
    )  # fmt: skip


def test_fixtures() -> None:
    assert T0 % CFG.bucket_seconds == 0
    assert (CFG.bucket_seconds, CFG.tick_seconds) == (60, 5)
    assert (CFG.lateness_seconds, CFG.max_future_seconds) == (10.0, 600.0)


# ----- naive recomputation -----


def naive_reasons(times: list[float], cfg: EngineConfig) -> list[str | None]:
    """The docstring's rules, restated: ``future`` beyond the watermark's allowance,
    ``too_late`` when the event's bucket is before the bucket of ``watermark - lateness``."""
    watermark: float | None = None
    out: list[str | None] = []
    for t in times:
        if watermark is not None and t > watermark + cfg.max_future_seconds:
            out.append("future")
        elif watermark is not None and math.floor(t / cfg.bucket_seconds) < math.floor(
            (watermark - cfg.lateness_seconds) / cfg.bucket_seconds
        ):
            out.append("too_late")
        else:
            out.append(None)
            watermark = t if watermark is None else max(watermark, t)
    return out


def naive_totals(events: list[Event], cfg: EngineConfig) -> dict[tuple[str, int], dict[str, Any]]:
    totals: dict[tuple[str, int], dict[str, Any]] = {}
    for ev in events:
        key = (ev.rule_id, math.floor(ev.occurred_at / cfg.tick_seconds))
        row = totals.setdefault(
            key,
            {"deactivations": 0, "reversals": 0, "shadow": 0, "other": 0, "cells": Counter()},
        )
        row.setdefault("versions", [])
        if ev.action in DEACTIVATING:
            row["deactivations"] += 1
            row["shadow"] += ev.shadow
            age = ev.account_age_days
            band = (
                "?" if age is None else
                "new" if age < 7 else
                "young" if age < 90 else
                "established" if age < 730 else
                "tenured"
            )  # fmt: skip
            s = ev.account_prior_strikes
            strikes = "?" if s is None else "0" if s == 0 else "1-2" if s <= 2 else "3+"
            row["cells"][f"{band}|{strikes}|{ev.region or '?'}"] += 1
        elif ev.action in REVERSING:
            row["reversals"] += 1
        else:
            row["other"] += 1
        if ev.rule_version is not None and ev.rule_version not in row["versions"]:
            row["versions"].append(ev.rule_version)
    return totals


def as_row(agg: RuleTick) -> dict[str, Any]:
    return {
        "deactivations": agg.deactivations,
        "reversals": agg.reversals,
        "shadow": agg.shadow,
        "other": agg.other,
        "cells": Counter(agg.cells),
        "versions": agg.versions,
    }


# ----- strategies -----


@st.composite
def event_lists(draw: st.DrawFn, max_jump_ms: int = 700_000) -> list[Event]:
    """Events whose times walk around T0 in whole milliseconds, mostly forward,
    sometimes jumping far enough to be ``future`` or ``too_late``, often onto a tick's
    or a bucket's first instant (T0 starts both)."""
    edges = st.sampled_from([0, 1, 4_999, 5_000, -5_000, 10_000, 60_000])
    steps = draw(
        st.lists(
            st.integers(-20_000, 30_000) | st.integers(-max_jump_ms, max_jump_ms) | edges,
            max_size=60,
        )
    )
    out, ms = [], 0
    for step in steps:
        ms += step
        out.append(
            event(
                T0 + ms / 1000,
                draw(st.sampled_from(["a", "b", "c"])),
                draw(st.sampled_from(sorted(ACTIONS))),
                shadow=draw(st.booleans()),
                version=draw(st.sampled_from([None, "v1", "v2", "v3"])),
                age=draw(st.sampled_from([None, 0, 6.5, 7, 89, 90, 800])),
                strikes=draw(st.sampled_from([None, 0, 1, 2, 3, 9])),
                region=draw(st.sampled_from([None, "", "EU", "US"])),
            )
        )
    return out


windowed_events = event_lists(max_jump_ms=0).filter(
    lambda evs: all(abs(e.occurred_at - T0) <= 900 for e in evs)
)


# ----- properties -----


@PROPS
@given(event_lists())
def test_sums_match_naive_recomputation(events: list[Event]) -> None:
    agg = Aggregator(CFG)
    reasons = [agg.add(ev) for ev in events]
    assert reasons == naive_reasons([e.occurred_at for e in events], CFG)
    kept = [ev for ev, r in zip(events, reasons, strict=True) if r is None]
    assert agg.accepted == len(kept)
    assert agg.watermark == max((e.occurred_at for e in kept), default=-math.inf)
    drained = agg.drain()
    assert {(a.rule_id, a.tick): as_row(a) for a in drained} == naive_totals(kept, CFG)
    keys = [(a.tick, a.rule_id) for a in drained]
    assert keys == sorted(set(keys))
    assert agg.drain() == []


@PROPS
@given(windowed_events, st.lists(st.integers(0, 3), min_size=60, max_size=60))
def test_merging_any_split_gives_the_same_totals(events: list[Event], parts: list[int]) -> None:
    whole = Aggregator(LENIENT)
    for ev in events:
        assert whole.add(ev) is None
    expected = {(a.rule_id, a.tick): as_row(a) for a in whole.drain()}

    aggregators = [Aggregator(LENIENT) for _ in range(4)]
    for ev, part in zip(events, parts, strict=False):
        assert aggregators[part].add(ev) is None
    for order in (range(4), reversed(range(4))):
        merged: dict[tuple[str, int], RuleTick] = {}
        for i in order:
            for a in aggregators[i].ticks.values():
                mine = merged.setdefault((a.rule_id, a.tick), RuleTick(a.rule_id, a.tick))
                mine.merge(a)
        got = {key: as_row(a) for key, a in merged.items()}
        # Versions are a set here: their first appearance depends on the split.
        for rows in (got, expected):
            for row in rows.values():
                row["versions"] = sorted(row["versions"])
        assert got == expected


@PROPS
@given(windowed_events, st.integers(0, 60))
def test_merging_a_contiguous_split_keeps_version_order(events: list[Event], cut: int) -> None:
    whole, first, second = Aggregator(LENIENT), Aggregator(LENIENT), Aggregator(LENIENT)
    for i, ev in enumerate(events):
        whole.add(ev)
        (first if i < cut else second).add(ev)
    merged = {(a.rule_id, a.tick): a for a in first.drain()}
    for a in second.drain():
        merged.setdefault((a.rule_id, a.tick), RuleTick(a.rule_id, a.tick)).merge(a)
    assert {k: as_row(a) for k, a in merged.items()} == {
        (a.rule_id, a.tick): as_row(a) for a in whole.drain()
    }


@PROPS
@given(event_lists())
def test_rule_tick_wire_round_trip(events: list[Event]) -> None:
    agg = Aggregator(CFG)
    for ev in events:
        agg.add(ev)
    for a in agg.drain():
        assert RuleTick.from_dict(orjson.loads(orjson.dumps(a.to_dict()))) == a


# ----- tables -----


@pytest.mark.parametrize(
    ("offsets", "reasons"),
    [
        pytest.param([0.0], [None], id="first-event-anywhere"),
        pytest.param([0.0, -1e6], [None, "too_late"], id="far-past"),
        pytest.param([0.0, 600.0], [None, None], id="future-boundary-inclusive"),
        pytest.param([0.0, 600.001], [None, "future"], id="just-future"),
        pytest.param([0.0, 700.0, 650.0], [None, "future", "future"], id="future-keeps-watermark"),
        pytest.param([0.0, 500.0, 1000.0], [None, None, None], id="watermark-walks"),
        pytest.param([100.0, 95.0, 699.0], [None, None, None], id="late-keeps-watermark"),
        pytest.param([70.0, 60.0], [None, None], id="open-bucket-start"),
        pytest.param([70.0, 59.999], [None, "too_late"], id="closed-bucket-end"),
        pytest.param([69.999, 0.0], [None, None], id="bucket-closes-after-lateness"),
        pytest.param([130.0, 120.0, 119.0, 60.0], [None, None, "too_late", "too_late"], id="two"),
        pytest.param([59.0, 0.0, 65.0, 0.0], [None, None, None, None], id="within-lateness"),
        pytest.param([70.0, 5000.0, 59.0], [None, "future", "too_late"], id="future-then-late"),
    ],
)
def test_rejections(offsets: list[float], reasons: list[str | None]) -> None:
    agg = Aggregator(CFG)
    accepted = 0
    for offset, reason in zip(offsets, reasons, strict=True):
        before = {k: as_row(v) for k, v in agg.ticks.items()}
        watermark = agg.watermark
        assert agg.check(T0 + offset) == reason
        assert agg.add(event(T0 + offset)) == reason
        if reason is None:
            accepted += 1
        else:
            # A rejected event changes nothing.
            assert agg.watermark == watermark
            assert {k: as_row(v) for k, v in agg.ticks.items()} == before
    assert agg.accepted == accepted


@pytest.mark.parametrize(
    ("action", "shadow", "counts"),
    [
        ("deactivate_account", False, (1, 0, 0, 0)),
        ("suspend_account", False, (1, 0, 0, 0)),
        ("deactivate_account", True, (1, 0, 1, 0)),
        ("suspend_account", True, (1, 0, 1, 0)),
        ("reinstate_account", False, (0, 1, 0, 0)),
        ("restore_content", True, (0, 1, 0, 0)),
        ("remove_content", False, (0, 0, 0, 1)),
        ("limit_distribution", True, (0, 0, 0, 1)),
        ("warn", False, (0, 0, 0, 1)),
    ],
)
def test_counting_by_action(action: str, shadow: bool, counts: tuple[int, ...]) -> None:
    agg = Aggregator(CFG)
    ev = event(T0 + 7.5, "spam", action, shadow=shadow, age=3, strikes=0, region="EU")
    assert agg.add(ev) is None
    [a] = agg.drain()
    assert (a.rule_id, a.tick) == ("spam", int((T0 + 7.5) // 5))
    assert (a.deactivations, a.reversals, a.shadow, a.other) == counts
    # Only deactivation targets have a make-up.
    assert a.cells == ({"new|0|EU": 1.0} if counts[0] else {})


def test_versions_in_order_of_first_appearance() -> None:
    agg = Aggregator(CFG)
    for version, action in (
        ("v2", "warn"),
        (None, "warn"),
        ("v1", "warn"),
        ("v2", "reinstate_account"),
    ):
        agg.add(event(T0, action=action, version=version))
    [a] = agg.drain()
    assert a.versions == ["v2", "v1"]


@pytest.mark.parametrize(
    ("offset", "tick"),
    [(0.0, 0), (4.999, 0), (5.0, 1), (59.999, 11), (60.0, 12)],
)
def test_tick_boundaries(offset: float, tick: int) -> None:
    agg = Aggregator(CFG)
    agg.add(event(T0 + offset))
    [a] = agg.drain()
    assert a.tick == int(T0) // 5 + tick


def test_drain_orders_by_tick_then_rule_and_empties() -> None:
    agg = Aggregator(CFG)
    for offset, rule in ((12.0, "b"), (1.0, "c"), (12.0, "a"), (1.0, "a"), (6.0, "b")):
        agg.add(event(T0 + offset, rule))
    base = int(T0) // 5
    got = [(a.tick - base, a.rule_id) for a in agg.drain()]
    assert got == [(0, "a"), (0, "c"), (1, "b"), (2, "a"), (2, "b")]
    assert agg.ticks == {}
    assert agg.drain() == []
    # The watermark survives a drain: what was closed stays closed.
    assert agg.watermark == T0 + 12.0
    assert agg.add(event(T0 + 1e4)) == "future"


@pytest.mark.parametrize(
    ("offsets", "counts", "reasons"),
    [
        ([0.0, 1.0], [2.5, 1.0], [None, None]),
        ([70.0, 10.0], [1.0, 4.0], [None, "too_late"]),
        ([0.0, 900.0], [1.0, 4.0], [None, "future"]),
    ],
)
def test_add_count(offsets: list[float], counts: list[float], reasons: list[str | None]) -> None:
    agg = Aggregator(CFG)
    got = [agg.add_count("pre", T0 + o, n) for o, n in zip(offsets, counts, strict=True)]
    assert got == reasons
    drained = agg.drain()
    expected = sum(n for n, r in zip(counts, reasons, strict=True) if r is None)
    assert sum(a.deactivations for a in drained) == expected
    assert all(a.cells == {} and a.reversals == a.other == a.shadow == 0 for a in drained)
    assert agg.accepted == reasons.count(None)


def test_add_count_and_events_share_an_aggregate() -> None:
    agg = Aggregator(CFG)
    agg.add(event(T0 + 1, "r", region="EU"))
    agg.add_count("r", T0 + 2, 3.0)
    [a] = agg.drain()
    assert a.deactivations == 4.0
    assert sum(a.cells.values()) == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"rule_id": "a", "tick": 1},
        {
            "rule_id": "a",
            "tick": 1,
            "deactivations": "x",
            "reversals": 0,
            "shadow": 0,
            "other": 0,
            "cells": {},
            "versions": [],
        },
        {
            "rule_id": "a",
            "tick": 1,
            "deactivations": 0,
            "reversals": 0,
            "shadow": 0,
            "other": 0,
            "cells": [],
            "versions": [],
        },
        [],
        None,
    ],
)
def test_rule_tick_from_dict_rejects_bad_shapes(bad: Any) -> None:
    with pytest.raises(ContractError) as info:
        RuleTick.from_dict(bad)
    assert (info.value.reason, info.value.field) == ("invalid_value", "aggregate")
