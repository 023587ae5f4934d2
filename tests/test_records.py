"""Decision records (detector.wire.records): wire form, round trips, rejections."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.engine.breaker import State
from detector.errors import ContractError
from detector.wire.events import MAX_EPOCH, MIN_EPOCH
from detector.wire.records import ALERT, TRANSITION, Record
from detector.wire.timefmt import from_rfc3339, to_rfc3339

T0 = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC).timestamp()
KEYS = ("rule_id", "at", "from", "to", "kind", "reason")


def record(**changes: Any) -> Record:
    base: dict[str, Any] = {
        "rule_id": "spam-v2",
        "at": T0,
        "kind": TRANSITION,
        "from_state": "closed",
        "to_state": "open",
        "reason": "surge_with_shift",
        "evidence": {"ratio": 3.5, "top_cells": ["new|0|EU"], "onset": "2026-03-01T11:55:00Z"},
    }
    return Record(**{**base, **changes})


WIRE: dict[str, Any] = {
    "rule_id": "spam-v2",
    "at": "2026-03-01T12:00:05Z",
    "from": "closed",
    "to": "open",
    "kind": "transition",
    "reason": "surge_with_shift",
    "evidence": {"ratio": 3.5, "top_cells": ["new|0|EU"], "onset": "2026-03-01T11:55:00Z"},
}


def test_to_dict_is_the_documented_wire_form() -> None:
    assert record().to_dict() == WIRE
    assert list(record().to_dict()) == ["rule_id", "at", "from", "to", "kind", "reason", "evidence"]
    assert orjson.loads(record().to_json()) == WIRE


def test_from_dict_of_the_wire_form() -> None:
    assert Record.from_dict(WIRE) == record()
    assert Record.from_dict(orjson.loads(orjson.dumps(WIRE))) == record()


@pytest.mark.parametrize(
    ("at", "text"),
    [
        (T0, "2026-03-01T12:00:05Z"),
        (T0 + 0.25, "2026-03-01T12:00:05.250Z"),
        (T0 + 0.001, "2026-03-01T12:00:05.001Z"),
        (T0 + 0.9999, "2026-03-01T12:00:05.999Z"),  # kept to the millisecond, truncated
        (MIN_EPOCH, "2000-01-01T00:00:00Z"),
        (MAX_EPOCH - 1, "2099-12-31T23:59:59Z"),
    ],
)
def test_time_format(at: float, text: str) -> None:
    assert record(at=at).to_dict()["at"] == text
    assert to_rfc3339(at) == text


@pytest.mark.parametrize(("kind", "is_transition"), [(TRANSITION, True), (ALERT, False)])
def test_kind(kind: str, is_transition: bool) -> None:
    assert record(kind=kind).is_transition is is_transition
    assert Record.from_dict({**WIRE, "kind": kind}).is_transition is is_transition


def test_alert_keeps_the_state() -> None:
    wire = {**WIRE, "kind": ALERT, "from": "disabled", "to": "disabled", "reason": "silent"}
    rec = Record.from_dict(wire)
    assert (rec.from_state, rec.to_state, rec.is_transition) == ("disabled", "disabled", False)


def test_evidence_defaults_to_empty() -> None:
    wire = {k: v for k, v in WIRE.items() if k != "evidence"}
    assert Record.from_dict(wire).evidence == {}
    assert Record.from_dict(wire) == record(evidence={})


def test_unknown_keys_are_ignored() -> None:
    assert Record.from_dict({**WIRE, "extra": [1, 2], "version": 9}) == record()


# ----- errors -----


@pytest.mark.parametrize(
    ("wire", "reason", "field"),
    [
        pytest.param([], "not_object", None, id="list"),
        pytest.param("{}", "not_object", None, id="text"),
        pytest.param(None, "not_object", None, id="none"),
        pytest.param(3, "not_object", None, id="number"),
        *[
            pytest.param(
                {k: v for k, v in WIRE.items() if k != key}, "invalid_type", key, id=f"no-{key}"
            )
            for key in KEYS
        ],
        *[
            pytest.param({**WIRE, key: bad}, "invalid_type", key, id=f"{key}-{type(bad).__name__}")
            for key in KEYS
            for bad in (5, None, True, ["x"])
        ],
        pytest.param({**WIRE, "at": T0}, "invalid_type", "at", id="at-epoch-number"),
        pytest.param({**WIRE, "kind": "Transition"}, "invalid_value", "kind", id="kind-case"),
        pytest.param({**WIRE, "kind": "pause"}, "invalid_value", "kind", id="kind-unknown"),
        pytest.param({**WIRE, "kind": ""}, "invalid_value", "kind", id="kind-empty"),
        pytest.param({**WIRE, "evidence": []}, "invalid_type", "evidence", id="evidence-list"),
        pytest.param({**WIRE, "evidence": "x"}, "invalid_type", "evidence", id="evidence-str"),
        pytest.param({**WIRE, "evidence": None}, "invalid_type", "evidence", id="evidence-null"),
        pytest.param({**WIRE, "at": "2026-03-01T12:00:05"}, "invalid_value", "at", id="no-offset"),
        pytest.param({**WIRE, "at": "2026-03-01"}, "invalid_value", "at", id="date-only"),
        pytest.param({**WIRE, "at": "2026-02-30T00:00:00Z"}, "invalid_value", "at", id="bad-day"),
        pytest.param({**WIRE, "at": "yesterday"}, "invalid_value", "at", id="words"),
        pytest.param({**WIRE, "at": ""}, "invalid_value", "at", id="at-empty"),
    ],
)
def test_from_dict_errors(wire: Any, reason: str, field: str | None) -> None:
    with pytest.raises(ContractError) as info:
        Record.from_dict(wire)
    err = info.value
    assert (err.reason, err.field) == (reason, field), str(err)
    if field is None:
        assert str(err).startswith("message: ")
    else:
        assert repr(field) in str(err)


# ----- round trips -----

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
states = st.sampled_from([s.value for s in State])
records = st.builds(
    Record,
    rule_id=st.text(min_size=1, max_size=40),
    # Whole milliseconds: the wire form keeps no more.
    at=st.integers(int(MIN_EPOCH) * 1000, int(MAX_EPOCH) * 1000 - 1).map(lambda ms: ms / 1000),
    kind=st.sampled_from([TRANSITION, ALERT]),
    from_state=states,
    to_state=states,
    reason=st.text(max_size=40),
    evidence=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(records)
def test_round_trip(rec: Record) -> None:
    assert Record.from_dict(rec.to_dict()) == rec
    assert Record.from_dict(orjson.loads(rec.to_json())) == rec


@settings(max_examples=300, deadline=None)
@given(st.floats(MIN_EPOCH, MAX_EPOCH - 1))
def test_time_is_truncated_to_the_millisecond(at: float) -> None:
    back = Record.from_dict(record(at=at).to_dict()).at
    # Never later, and less than a millisecond earlier (plus sub-microsecond rounding).
    assert -1e-6 <= at - back < 1e-3 + 1e-6
    assert math.isclose(back * 1000, round(back * 1000), abs_tol=1e-3)
    assert from_rfc3339(to_rfc3339(back)) == back
