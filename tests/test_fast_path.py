"""The fast path (``fast_fields``, msgspec) accepts exactly what the full validator
accepts, with the same values; whatever it declines, the full validator judges."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import ContractError
from detector.wire.events import (
    ACTIONS,
    DEACTIVATIONS,
    SOURCES,
    event_from_obj,
    fast_fields,
    parse_event,
    target_cell,
)

PROPS = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

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


@PROPS
@given(events())
def test_fast_path_agrees_with_the_full_validator(ev: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(ev)
    except TypeError:
        return  # not representable as JSON (e.g. integers beyond 64 bits)
    fast = fast_fields(raw)
    try:
        full = event_from_obj(orjson.loads(raw))
    except ContractError:
        assert fast is None, f"fast path accepted what the contract rejects: {ev!r}"
        return
    if fast is None:
        # Declined: the full path must accept it (the caller falls back to it).
        assert parse_event(raw) == full
        return
    t, rule_id, action, cell, version, shadow, event_id, account_id = fast
    assert (t, rule_id, action, version, shadow, event_id, account_id) == (
        full.occurred_at,
        full.rule_id,
        full.action,
        full.rule_version,
        full.shadow,
        full.event_id,
        full.account_id,
    )
    expected_cell = (
        target_cell(full.account_age_days, full.account_prior_strikes, full.region)
        if full.action in DEACTIVATIONS
        else None
    )
    assert cell == expected_cell


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
    fields = fast_fields(raw)
    assert fields is not None
    assert fields == (
        parse_event(raw).occurred_at,
        "spam",
        "deactivate_account",
        "new|1-2|DE",
        "7",
        False,
        "e1",
        "a1",
    )
