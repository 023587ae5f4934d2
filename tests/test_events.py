"""The enforcement-action contract (detector.wire.events): every rejection, every
accepted form, the make-up cell, and a fuzz property that nothing but
ContractError ever escapes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import ContractError
from detector.wire.events import (
    ACTIONS,
    DEACTIVATIONS,
    GLOBAL_RULE_ID,
    MAX_EPOCH,
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MAX_REGION_CHARS,
    MIN_EPOCH,
    REVERSALS,
    SOURCES,
    Event,
    event_from_obj,
    parse_event,
    target_cell,
)

REQUIRED = ("event_id", "occurred_at", "rule_id", "action", "account_id")
OPTIONAL = (
    "content_id",
    "rule_version",
    "account_age_days",
    "account_prior_strikes",
    "source",
    "reverses_event_id",
    "region",
    "shadow",
)
REASONS = {
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "invalid_type",
    "invalid_value",
}


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, micro: int = 0) -> float:
    """Epoch seconds of a UTC wall-clock time, computed independently of the parser."""
    return datetime(y, mo, d, h, mi, s, micro, tzinfo=UTC).timestamp()


T0 = utc(2026, 3, 1, 12, 0, 5)
BASE: dict[str, Any] = {
    "event_id": "ev-1",
    "occurred_at": "2026-03-01T12:00:05Z",
    "rule_id": "spam-v2",
    "action": "deactivate_account",
    "account_id": "acct-9",
}


def with_(**changes: Any) -> dict[str, Any]:
    """The base event with some fields replaced (or added)."""
    return {**BASE, **changes}


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in BASE.items() if k != field}


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj)


def expect_error(raw: bytes | str, reason: str, field: str | None) -> ContractError:
    with pytest.raises(ContractError) as info:
        parse_event(raw)
    err = info.value
    assert (err.reason, err.field) == (reason, field), str(err)
    if field is None:
        assert str(err).startswith("message: ")
    else:
        assert repr(field) in str(err)
    return err


# ----- whole-message errors -----

# Padding that makes the base event (plus an ignored field) exactly the size limit.
_PAD = MAX_EVENT_BYTES - len(encode(with_(pad="")))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"\xff\xfe{}", "not_utf8", id="bom-utf16"),
        pytest.param(b'{"event_id": "\xc3\x28"}', "not_utf8", id="bad-utf8-inside-string"),
        pytest.param(b"\xed\xa0\x80", "not_utf8", id="utf8-encoded-surrogate"),
        pytest.param(b"", "not_json", id="empty"),
        pytest.param(b"{", "not_json", id="truncated"),
        pytest.param(b"{'event_id': 'x'}", "not_json", id="single-quotes"),
        pytest.param(b"NaN", "not_json", id="nan-literal"),
        pytest.param(b'{"occurred_at": 1e400}', "not_json", id="number-overflows-double"),
        pytest.param(b"{} {}", "not_json", id="two-objects"),
        pytest.param("{", "not_json", id="text-truncated"),
        pytest.param("\ud800", "not_json", id="text-lone-surrogate"),
        pytest.param(b"[]", "not_object", id="array"),
        pytest.param(b"[" + encode(BASE) + b"]", "not_object", id="array-of-event"),
        pytest.param(b"1", "not_object", id="number"),
        pytest.param(b'"event"', "not_object", id="string"),
        pytest.param(b"null", "not_object", id="null"),
        pytest.param(b"true", "not_object", id="bool"),
        pytest.param(b'{"pad": "' + b"x" * 1_000_000 + b'"}', "too_large", id="1MB"),
        pytest.param(encode(with_(pad="x" * (_PAD + 1))), "too_large", id="64KiB+1"),
        # 40,000 characters but 80,000 bytes: the limit is on bytes, even for text.
        pytest.param(orjson.dumps(with_(pad="é" * 40_000)).decode(), "too_large", id="text-bytes"),
    ],
)
def test_whole_message_errors(raw: bytes | str, reason: str) -> None:
    expect_error(raw, reason, None)


def test_size_limit_is_inclusive() -> None:
    raw = encode(with_(pad="x" * _PAD))
    assert len(raw) == MAX_EVENT_BYTES
    assert parse_event(raw) == parse_event(encode(BASE))
    assert parse_event(raw.decode()) == parse_event(encode(BASE))


def test_max_bytes_argument() -> None:
    raw = encode(BASE)
    assert parse_event(raw, max_bytes=len(raw)).event_id == BASE["event_id"]
    with pytest.raises(ContractError) as info:
        parse_event(raw, max_bytes=len(raw) - 1)
    assert (info.value.reason, info.value.field, info.value.value) == ("too_large", None, len(raw))


def test_too_large_is_checked_before_decoding() -> None:
    # Invalid UTF-8 and not JSON, but too large: the cheap check wins.
    expect_error(b"\xff" * (MAX_EVENT_BYTES + 1), "too_large", None)


# ----- field errors -----

FIELD_ERRORS = [
    # Missing required fields, and null for a required field.
    *[pytest.param(without(f), "missing_field", f, id=f"missing-{f}") for f in REQUIRED],
    *[pytest.param(with_(**{f: None}), "missing_field", f, id=f"null-{f}") for f in REQUIRED],
    # Ids: strings of 1..MAX_ID_CHARS characters.
    *[
        pytest.param(with_(**{f: bad}), "invalid_type", f, id=f"{f}-{label}")
        for f in ("event_id", "rule_id", "account_id", "content_id", "rule_version")
        for label, bad in (("int", 5), ("float", 1.5), ("bool", True), ("list", ["x"]), ("obj", {}))
    ],
    *[
        pytest.param(with_(**{f: bad}), "invalid_value", f, id=f"{f}-{label}")
        for f in ("event_id", "rule_id", "account_id", "content_id", "reverses_event_id")
        for label, bad in (("empty", ""), ("too-long", "x" * (MAX_ID_CHARS + 1)))
    ],
    pytest.param(
        with_(reverses_event_id=7), "invalid_type", "reverses_event_id", id="reverses-int"
    ),
    pytest.param(with_(rule_id=GLOBAL_RULE_ID), "invalid_value", "rule_id", id="rule-star"),
    # Action.
    pytest.param(with_(action="ban"), "invalid_value", "action", id="action-unknown"),
    pytest.param(with_(action="Warn"), "invalid_value", "action", id="action-case"),
    pytest.param(with_(action=""), "invalid_value", "action", id="action-empty"),
    pytest.param(with_(action=3), "invalid_type", "action", id="action-int"),
    pytest.param(with_(action=["warn"]), "invalid_type", "action", id="action-list"),
    # occurred_at: type.
    pytest.param(with_(occurred_at=True), "invalid_type", "occurred_at", id="time-bool"),
    pytest.param(with_(occurred_at=[T0]), "invalid_type", "occurred_at", id="time-list"),
    pytest.param(with_(occurred_at={"s": T0}), "invalid_type", "occurred_at", id="time-obj"),
    # occurred_at: text that is not RFC 3339 with an offset.
    *[
        pytest.param(with_(occurred_at=text), "invalid_value", "occurred_at", id=f"time-{label}")
        for label, text in (
            ("no-offset", "2026-03-01T12:00:05"),
            ("no-offset-fraction", "2026-03-01T12:00:05.123"),
            ("date-only", "2026-03-01"),
            ("date-with-z", "2026-03-01Z"),
            ("time-only", "12:00:05Z"),
            ("no-seconds", "2026-03-01T12:00Z"),
            ("no-seconds-offset", "2026-03-01T12:00+01:00"),
            ("hour-offset", "2026-03-01T12:00:05+01"),
            ("compact-offset", "2026-03-01T12:00:05+0100"),
            ("seconds-offset", "2026-03-01T12:00:05+01:00:30"),
            ("week-date", "2026-W09-7T12:00:05Z"),
            ("basic-format", "20260301T120005Z"),
            ("bad-day", "2026-02-30T12:00:05Z"),
            ("hour-24", "2026-03-01T24:00:00Z"),
            ("leap-second", "2026-03-01T23:59:60Z"),
            ("offset-24h", "2026-03-01T12:00:05+24:00"),
            ("empty-fraction", "2026-03-01T12:00:05.Z"),
            ("unicode-digits", "٢٠٢٦-03-01T12:00:05Z"),
            ("trailing-space", "2026-03-01T12:00:05Z "),
            ("epoch-as-text", str(int(T0))),
            ("words", "yesterday at noon"),
            ("empty", ""),
        )
    ],
    # occurred_at: outside 2000-01-01 .. 2100-01-01.
    *[
        pytest.param(with_(occurred_at=v), "invalid_value", "occurred_at", id=f"time-range-{label}")
        for label, v in (
            ("zero", 0),
            ("negative", -1.0),
            ("just-below", MIN_EPOCH - 0.001),
            ("max", int(MAX_EPOCH)),
            ("milliseconds", T0 * 1000),
            ("huge-int", 2**64 - 1),
            ("huge-float", 1e300),
            ("text-1999", "1999-12-31T23:59:59Z"),
            ("text-2100", "2100-01-01T00:00:00Z"),
            ("text-2099-behind-utc", "2099-12-31T23:59:59-00:01"),
        )
    ],
    # Numbers.
    pytest.param(with_(account_age_days="5"), "invalid_type", "account_age_days", id="age-str"),
    pytest.param(with_(account_age_days=True), "invalid_type", "account_age_days", id="age-bool"),
    pytest.param(with_(account_age_days=[1]), "invalid_type", "account_age_days", id="age-list"),
    pytest.param(with_(account_age_days=-1), "invalid_value", "account_age_days", id="age-neg"),
    pytest.param(with_(account_age_days=-1e-9), "invalid_value", "account_age_days", id="age-eps"),
    *[
        pytest.param(with_(account_prior_strikes=v), "invalid_type", "account_prior_strikes", id=i)
        for i, v in (
            ("strikes-float", 1.5),
            ("strikes-whole-float", 2.0),
            ("strikes-str", "2"),
            ("strikes-bool", False),
            ("strikes-list", [2]),
        )
    ],
    pytest.param(
        with_(account_prior_strikes=-1), "invalid_value", "account_prior_strikes", id="strikes-neg"
    ),
    # Source, region, shadow.
    pytest.param(with_(source="bot"), "invalid_value", "source", id="source-unknown"),
    pytest.param(with_(source="Manual"), "invalid_value", "source", id="source-case"),
    pytest.param(with_(source=1), "invalid_type", "source", id="source-int"),
    pytest.param(with_(source=["manual"]), "invalid_type", "source", id="source-list"),
    pytest.param(with_(source={"manual": 1}), "invalid_type", "source", id="source-obj"),
    pytest.param(with_(region=49), "invalid_type", "region", id="region-int"),
    pytest.param(
        with_(region="x" * (MAX_REGION_CHARS + 1)), "invalid_value", "region", id="region-long"
    ),
    pytest.param(with_(shadow="true"), "invalid_type", "shadow", id="shadow-str"),
    pytest.param(with_(shadow=1), "invalid_type", "shadow", id="shadow-one"),
    pytest.param(with_(shadow=0), "invalid_type", "shadow", id="shadow-zero"),
]


@pytest.mark.parametrize(("obj", "reason", "field"), FIELD_ERRORS)
def test_field_errors(obj: dict[str, Any], reason: str, field: str) -> None:
    err = expect_error(encode(obj), reason, field)
    # The offending value is shown too, when there is one.
    bad = obj.get(field)
    if bad is not None and field != "rule_id":
        assert err.value == bad


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("occurred_at", math.nan),
        ("occurred_at", math.inf),
        ("occurred_at", -math.inf),
        ("occurred_at", 10**400),
        ("account_age_days", math.nan),
        ("account_age_days", math.inf),
        ("account_age_days", 10**400),
    ],
)
def test_non_finite_numbers(field: str, value: float) -> None:
    # JSON cannot spell these; a caller that decoded with another library can.
    with pytest.raises(ContractError) as info:
        event_from_obj(with_(**{field: value}))
    assert (info.value.reason, info.value.field) == ("invalid_value", field)
    assert repr(field) in str(info.value)


@pytest.mark.parametrize("obj", [[], "x", 1, None, (BASE,)])
def test_event_from_obj_needs_a_mapping(obj: Any) -> None:
    with pytest.raises(ContractError) as info:
        event_from_obj(obj)
    assert (info.value.reason, info.value.field) == ("not_object", None)


def test_first_missing_field_is_reported_in_contract_order() -> None:
    expect_error(encode({"action": "warn"}), "missing_field", "event_id")
    expect_error(encode({"event_id": "e", "action": "warn"}), "missing_field", "occurred_at")


# ----- accepted forms -----


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("2026-03-01T12:00:05Z", T0),
        ("2026-03-01t12:00:05z", T0),
        ("2026-03-01 12:00:05Z", T0),
        ("2026-03-01T12:00:05+00:00", T0),
        ("2026-03-01T12:00:05-00:00", T0),
        ("2026-03-01T13:30:05+01:30", T0),
        ("2026-03-01T06:00:05-06:00", T0),
        ("2026-03-02T11:59:05+23:59", T0),
        ("2026-02-28T23:00:05-13:00", T0),
        ("2026-03-01T12:00:05.250Z", T0 + 0.25),
        ("2026-03-01T12:00:05.5+01:00", T0 - 3600 + 0.5),
        ("2026-03-01T12:00:05.123456789Z", utc(2026, 3, 1, 12, 0, 5, micro=123456)),
        ("2000-01-01T00:00:00Z", MIN_EPOCH),
        ("2099-12-31T23:59:59.999Z", MAX_EPOCH - 0.001),
        ("2000-01-01T01:00:00+01:00", MIN_EPOCH),
        (int(T0), T0),
        (T0 + 0.5, T0 + 0.5),
        (int(MIN_EPOCH), MIN_EPOCH),
        (MAX_EPOCH - 0.001, MAX_EPOCH - 0.001),
    ],
)
def test_valid_times(occurred_at: str | float, expected: float) -> None:
    ev = parse_event(encode(with_(occurred_at=occurred_at)))
    assert isinstance(ev.occurred_at, float)
    assert ev.occurred_at == pytest.approx(expected, abs=1e-6)


def test_utc_helper_agrees_with_timedelta_arithmetic() -> None:
    # The expected values above come from ``utc``; check it against plain arithmetic.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert utc(2026, 3, 1, 12, 0, 5) == (datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC) - epoch) / (
        timedelta(seconds=1)
    )
    assert utc(2000, 1, 1) == MIN_EPOCH
    assert utc(2100, 1, 1) == MAX_EPOCH


def test_full_event() -> None:
    obj = with_(
        occurred_at="2026-03-01T13:00:05+01:00",
        content_id="post-1",
        rule_version="7",
        account_age_days=12,
        account_prior_strikes=2,
        source="appeal",
        reverses_event_id="ev-0",
        region="EU",
        shadow=True,
    )
    expected = Event(
        "ev-1", T0, "spam-v2", "deactivate_account", "acct-9",
        "post-1", "7", 12.0, 2, "appeal", "ev-0", "EU", True,
    )  # fmt: skip
    got = parse_event(encode(obj))
    assert got == expected
    assert isinstance(got.account_age_days, float)
    assert parse_event(encode(obj).decode()) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "x" * MAX_ID_CHARS),
        ("event_id", "é" * MAX_ID_CHARS),
        ("rule_id", "**"),
        ("account_id", " "),
        ("region", "x" * MAX_REGION_CHARS),
        ("region", ""),
        ("account_age_days", 0),
        ("account_prior_strikes", 0),
        *[("source", s) for s in sorted(SOURCES)],
        *[("action", a) for a in sorted(ACTIONS)],
    ],
)
def test_boundary_values_accepted(field: str, value: Any) -> None:
    ev = parse_event(encode(with_(**{field: value})))
    assert getattr(ev, field) == value


@pytest.mark.parametrize("field", OPTIONAL)
def test_null_optional_field_is_absent(field: str) -> None:
    assert parse_event(encode(with_(**{field: None}))) == parse_event(encode(BASE))


def test_optional_fields_default() -> None:
    ev = parse_event(encode(BASE))
    assert all(getattr(ev, f) is None for f in OPTIONAL if f != "shadow")
    assert ev.shadow is False


def test_unknown_fields_are_ignored() -> None:
    obj = with_(
        extra=1,
        nested={"occurred_at": "garbage", "rule_id": "*"},
        Event_ID=5,
        tags=["a", None],
        **{"": None},
    )
    assert parse_event(encode(obj)) == parse_event(encode(BASE))


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_action_kind(action: str) -> None:
    ev = parse_event(encode(with_(action=action)))
    assert ev.is_deactivation == (action in {"deactivate_account", "suspend_account"})
    assert ev.is_reversal == (action in {"reinstate_account", "restore_content"})


def test_action_sets_are_disjoint_and_known() -> None:
    assert not DEACTIVATIONS & REVERSALS
    assert DEACTIVATIONS | REVERSALS < ACTIONS


# ----- make-up cells -----


@pytest.mark.parametrize(
    ("age", "strikes", "region", "cell"),
    [
        (None, None, None, "?|?|?"),
        (None, None, "", "?|?|?"),
        (0, 0, "EU", "new|0|EU"),
        (6.999, 1, "EU", "new|1-2|EU"),
        (7, 2, "US", "young|1-2|US"),
        (89.99, 3, None, "young|3+|?"),
        (90, 100, None, "established|3+|?"),
        (729.99, None, "BR", "established|?|BR"),
        (730, 0, "BR", "tenured|0|BR"),
        (1e6, 0, "x" * 32, "tenured|0|" + "x" * 32),
    ],
)
def test_target_cell(age: float | None, strikes: int | None, region: str | None, cell: str) -> None:
    assert target_cell(age, strikes, region) == cell
    obj = with_(account_age_days=age, account_prior_strikes=strikes, region=region)
    assert parse_event(encode(obj)).cell == cell


# ----- round trip -----

ids = st.text(min_size=1, max_size=MAX_ID_CHARS)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


valid_events = st.builds(
    Event,
    event_id=ids,
    occurred_at=st.floats(MIN_EPOCH, MAX_EPOCH, exclude_max=True)
    | st.integers(int(MIN_EPOCH), int(MAX_EPOCH) - 1).map(float),
    rule_id=ids.filter(lambda s: s != GLOBAL_RULE_ID),
    action=st.sampled_from(sorted(ACTIONS)),
    account_id=ids,
    content_id=optional(ids),
    rule_version=optional(ids),
    account_age_days=optional(st.floats(0, 1e9) | st.integers(0, 10**6).map(float)),
    account_prior_strikes=optional(st.integers(0, 2**63 - 1)),
    source=optional(st.sampled_from(sorted(SOURCES))),
    reverses_event_id=optional(ids),
    region=optional(st.text(max_size=MAX_REGION_CHARS)),
    shadow=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(valid_events)
def test_to_json_round_trip(ev: Event) -> None:
    raw = ev.to_json()
    assert parse_event(raw) == ev
    assert parse_event(raw.decode()) == ev
    # Absent optional fields are left out rather than sent as null.
    assert None not in orjson.loads(raw).values()


# ----- fuzz: nothing but ContractError escapes -----

FIELDS = (*REQUIRED, *OPTIONAL)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            "*",
            "2026-03-01T12:00:05Z",
            "2026-03-01T12:00:05",
            "2026-03-01",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
            *sorted(ACTIONS),
            *sorted(SOURCES),
        ]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
contract_shaped = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(FIELDS, json_values) | {"extra": json_values}
)


valid_objects = valid_events.map(lambda e: orjson.loads(e.to_json()))


@st.composite
def field_mutations(draw: st.DrawFn) -> bytes:
    """A valid event with one to three fields replaced by arbitrary JSON, or dropped."""
    obj = dict(draw(valid_objects))
    for f in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            obj.pop(f, None)
        else:
            obj[f] = draw(json_values)
    return orjson.dumps(obj)


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    """A valid event's bytes with one to three bytes flipped, inserted or deleted."""
    raw = bytearray(orjson.dumps(draw(valid_objects)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert":
            raw.insert(i, draw(st.integers(0, 255)))
        elif op == "flip":
            raw[i] = draw(st.integers(0, 255))
        else:
            del raw[i]
    return bytes(raw)


def parses_or_contract_error(raw: bytes | str) -> None:
    err: ContractError | None = None
    try:
        ev = parse_event(raw)
    except ContractError as exc:
        err = exc
    if err is not None:
        assert err.reason in REASONS
        assert err.field is None or err.field in FIELDS
        assert err.field is None or repr(err.field) in str(err)
        return
    assert isinstance(ev, Event)
    # Whatever is accepted satisfies the contract's invariants.
    assert MIN_EPOCH <= ev.occurred_at < MAX_EPOCH
    assert ev.action in ACTIONS
    assert ev.rule_id != GLOBAL_RULE_ID
    assert ev.account_prior_strikes is None or ev.account_prior_strikes >= 0
    assert ev.account_age_days is None or 0 <= ev.account_age_days < math.inf


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Structured inputs cost more to generate; fewer of them still reach every branch.
FUZZ_STRUCTURED = settings(FUZZ, max_examples=800)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_bytes(raw: bytes) -> None:
    parses_or_contract_error(raw)


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_text(raw: str) -> None:
    parses_or_contract_error(raw)


@FUZZ_STRUCTURED
@given(json_values | contract_shaped)
def test_fuzz_json_values(obj: Any) -> None:
    parses_or_contract_error(orjson.dumps(obj))


@FUZZ_STRUCTURED
@given(field_mutations())
def test_fuzz_field_mutations(raw: bytes) -> None:
    parses_or_contract_error(raw)


@FUZZ_STRUCTURED
@given(byte_mutations())
def test_fuzz_byte_mutations(raw: bytes) -> None:
    parses_or_contract_error(raw)
