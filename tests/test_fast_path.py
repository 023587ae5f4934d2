"""The fast path (``Aggregator.add_raw``, msgspec) accepts only what the full validator
accepts, and counts it exactly as the full path (``parse_event`` then ``Aggregator.add``)
would; whatever it declines, the full validator judges."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.aggregate import Aggregator
from detector.config import EngineConfig
from detector.errors import ContractError
from detector.wire.events import ACTIONS, SOURCES, event_from_obj, parse_event
from detector.wire.timefmt import to_rfc3339

CONFIG = EngineConfig()
T0 = 1_772_366_400.0  # 2026-03-01T12:00:00Z

PROPS = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A stream holds up to 30 events: 300 streams check about as many events as PROPS does
# one at a time (3000 streams took 220 s of the suite's 13 minutes).
STREAM_PROPS = settings(PROPS, max_examples=300)

ids = st.one_of(
    st.text(min_size=0, max_size=5),
    st.text(min_size=255, max_size=258),
    st.integers(),
    st.none(),
    st.booleans(),
)
times = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from(
        [
            "2026-03-01T12:00:05Z",
            "2026-03-01T12:00:05.123Z",
            "2026-03-01T12:00:05",
            "2026-03-01T12:00:60Z",
            "2026-03-01T24:00:05Z",
            "2026-13-01T12:00:05Z",
            "2026-03-01T12:00:05+01:00",
            "2026-03-01 12:00:05Z",
            "2026-03-01",
            "2026-03-01T12:00:5Z",
            "2026-03-01T12:00:05.1234Z",
            "2026-03-01T12:00:05z",
            "1999-12-31T23:59:59Z",
            "2100-01-01T00:00:00Z",
            "２０２６-03-01T12:00:05Z",
        ]
    ),
    st.booleans(),
    st.none(),
    st.text(max_size=25),
)
numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(),
    st.booleans(),
    st.text(max_size=3),
)


@st.composite
def events(draw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": draw(st.one_of(st.text(min_size=1, max_size=8), ids)),
        "occurred_at": draw(times),
        "rule_id": draw(st.one_of(st.sampled_from(["r", "*", "rule.x"]), ids)),
        "action": draw(
            st.one_of(st.sampled_from(sorted(ACTIONS)), st.text(max_size=5), st.integers())
        ),
        "account_id": draw(st.one_of(st.text(min_size=1, max_size=8), ids)),
    }
    for key in list(ev):
        if draw(st.integers(0, 12)) == 0:
            del ev[key]
    optional: dict[str, Any] = {
        "content_id": ids,
        "rule_version": ids,
        "reverses_event_id": ids,
        "account_age_days": numbers,
        "account_prior_strikes": numbers,
        "source": st.one_of(st.sampled_from(sorted(SOURCES)), st.text(max_size=4), st.none()),
        "region": st.one_of(st.text(max_size=34), st.none(), st.integers()),
        "shadow": st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
        "extra": st.integers(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            ev[key] = draw(strategy)
    return ev


def counted(agg: Aggregator) -> tuple[Any, ...]:
    """Everything an aggregator has counted (its ticks drained)."""
    ticks = [t.to_dict() for t in agg.drain()]
    return ticks, agg.watermark, agg.first, agg.accepted


@PROPS
@given(events())
def test_fast_path_agrees_with_the_full_validator(ev: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(ev)
    except TypeError:
        return  # not representable as JSON (e.g. integers beyond 64 bits)
    fast = Aggregator(CONFIG, hits=True)
    taken = fast.add_raw([raw], 0, 1)
    try:
        full = event_from_obj(orjson.loads(raw))
    except ContractError:
        assert taken == 0, f"fast path accepted what the contract rejects: {ev!r}"
        return
    if taken == 0:
        # Declined: the full path must accept it (the caller falls back to it).
        assert parse_event(raw) == full
        return
    slow = Aggregator(CONFIG, hits=True)
    assert slow.add(full) is None
    assert counted(fast) == counted(slow)


# Offsets from T0 around the watermark's limits: tick (5 s) and bucket (60 s) edges,
# the lateness (10 s) and the future horizon (600 s).
NEAR = [0.0, 0.5, 4.99, 5.0, 7.0, 59.99, 60.0, 61.0, 599.0, 601.0, 1200.0, 3000.0, 9e5]
BACK = [0.0, 0.0, 9.99, 10.0, 11.0, 60.0, 200.0, 900.0]


@st.composite
def plain_events(draw: Any) -> dict[str, Any]:
    """Valid events close in time, as floats or RFC 3339 text, of a few rules."""
    t = T0 + draw(st.sampled_from(NEAR)) - draw(st.sampled_from(BACK))
    ev: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=4)),
        "occurred_at": draw(st.sampled_from([t, to_rfc3339(t)])),
        "rule_id": draw(st.sampled_from(["r", "rule.x"])),
        "action": draw(st.sampled_from(sorted(ACTIONS))),
        "account_id": draw(st.text(min_size=1, max_size=4)),
    }
    if draw(st.booleans()):
        ev["account_age_days"] = draw(st.sampled_from([0.5, 40.0, 800.0]))
        ev["account_prior_strikes"] = draw(st.integers(0, 3))
        ev["region"] = draw(st.sampled_from(["DE", "US"]))
    if draw(st.integers(0, 5)) == 0:
        ev["shadow"] = True
    return ev


@st.composite
def streams(draw: Any) -> list[bytes]:
    """Mostly valid events close in time (some late, some too far ahead), some of any
    shape (mostly malformed), some blank."""
    out = []
    for _ in range(draw(st.integers(1, 30))):
        ev = draw(plain_events()) if draw(st.integers(0, 4)) else draw(events())
        try:
            out.append(orjson.dumps(ev))
        except TypeError:
            out.append(b"")
    return out


def fast_then_full(agg: Aggregator, values: list[bytes]) -> list[str | None]:
    """What the drivers do: bulk through the fast path, one by one where it stops."""
    reasons: list[str | None] = []
    i, n = 0, len(values)
    while i < n:
        j = agg.add_raw(values, i, n)
        reasons += [None] * (j - i)
        if j < n:
            reasons.append(full_one(agg, values[j]))
        i = j + 1
    return reasons


def full_one(agg: Aggregator, raw: bytes) -> str | None:
    try:
        return agg.add(parse_event(raw))
    except ContractError as exc:
        return exc.reason


@STREAM_PROPS
@given(streams())
def test_a_stream_counts_the_same_through_either_path(values: list[bytes]) -> None:
    fast, slow = Aggregator(CONFIG, hits=True), Aggregator(CONFIG, hits=True)
    assert fast_then_full(fast, values) == [full_one(slow, v) for v in values]
    assert counted(fast) == counted(slow)


def test_fast_path_takes_the_common_shape() -> None:
    raw = orjson.dumps(
        {
            "event_id": "e1",
            "occurred_at": "2026-03-01T12:00:05.120Z",
            "rule_id": "spam",
            "action": "deactivate_account",
            "account_id": "a1",
            "account_age_days": 3.5,
            "account_prior_strikes": 2,
            "region": "DE",
            "rule_version": "7",
            "unknown": [1, 2],
        }
    )
    agg = Aggregator(CONFIG, hits=True)
    assert agg.add_raw([raw, raw], 0, 2) == 2
    (tick,) = agg.drain()
    assert tick.rule_id == "spam" and tick.deactivations == 2
    assert tick.cells == {"new|1-2|DE": 2}
    assert tick.versions == ["7"]
    assert tick.hits == [(T0 + 5.12, "e1", "a1", "deactivate_account")] * 2


def test_fast_path_stops_at_what_it_cannot_judge() -> None:
    good = orjson.dumps(
        {"event_id": "e", "occurred_at": T0, "rule_id": "r", "action": "warn", "account_id": "a"}
    )
    offset = good.replace(b"%.1f" % T0, b'"2026-03-01T13:00:00+01:00"')
    agg = Aggregator(CONFIG)
    assert agg.add_raw([good, offset, good], 0, 3) == 1
    assert agg.add_raw([good, b"not json", good], 1, 3) == 1
    assert agg.add_raw([good, None, good], 1, 3) == 1
    assert agg.add_raw([good, good, good], 1, 3, t_max=T0 - 1) == 1
    assert agg.accepted == 1
