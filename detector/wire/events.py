"""The enforcement-action contract: one JSON object (UTF-8) per action.

Required fields: ``event_id``, ``occurred_at`` (RFC 3339 with offset, or epoch
seconds), ``rule_id``, ``action``, ``account_id``. Optional: ``content_id``,
``rule_version``, ``account_age_days``, ``account_prior_strikes``, ``source``,
``reverses_event_id``, ``region``, and ``shadow`` (our extension: the rule ran in
shadow mode, so the action was decided but not applied). Unknown fields are
ignored; ``null`` for an optional field means absent. Anything else that breaks
the contract raises :class:`~detector.errors.ContractError` naming the field.

For a reversal (``reinstate_account``, ``restore_content``), ``rule_id`` names
the rule whose earlier action is being reversed: that is what makes a surge of
reversals evidence against the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson

from detector.errors import ContractError
from detector.wire.timefmt import from_rfc3339

DEACTIVATIONS: Final = frozenset({"deactivate_account", "suspend_account"})
REVERSALS: Final = frozenset({"reinstate_account", "restore_content"})
ACTIONS: Final = frozenset(
    DEACTIVATIONS | REVERSALS | {"remove_content", "limit_distribution", "warn"}
)
SOURCES: Final = frozenset({"automated", "manual", "appeal"})

GLOBAL_RULE_ID: Final = "*"
MAX_EVENT_BYTES: Final = 64 * 1024
MAX_ID_CHARS: Final = 256
MAX_REGION_CHARS: Final = 32
# Event times outside these bounds are certainly corrupt (2000-01-01 .. 2100-01-01).
MIN_EPOCH: Final = 946_684_800.0
MAX_EPOCH: Final = 4_102_444_800.0

_REQUIRED: Final = ("event_id", "occurred_at", "rule_id", "action", "account_id")
_OPTIONAL_STR: Final = ("content_id", "rule_version", "reverses_event_id")


@dataclass(frozen=True, slots=True)
class Event:
    """One validated enforcement action; ``occurred_at`` is epoch seconds."""

    event_id: str
    occurred_at: float
    rule_id: str
    action: str
    account_id: str
    content_id: str | None = None
    rule_version: str | None = None
    account_age_days: float | None = None
    account_prior_strikes: int | None = None
    source: str | None = None
    reverses_event_id: str | None = None
    region: str | None = None
    shadow: bool = False

    @property
    def is_deactivation(self) -> bool:
        """True for ``deactivate_account`` and ``suspend_account``."""
        return self.action in DEACTIVATIONS

    @property
    def is_reversal(self) -> bool:
        """True for ``reinstate_account`` and ``restore_content``."""
        return self.action in REVERSALS

    @property
    def cell(self) -> str:
        """The target's make-up cell (see :func:`target_cell`)."""
        return target_cell(self.account_age_days, self.account_prior_strikes, self.region)

    def to_json(self) -> bytes:
        """Encode in the contract's form (epoch seconds for ``occurred_at``)."""
        body = {k: getattr(self, k) for k in self.__slots__}
        return orjson.dumps({k: v for k, v in body.items() if v is not None and v is not False})


def target_cell(age_days: float | None, prior_strikes: int | None, region: str | None) -> str:
    """The make-up cell of a target account: tenure band, strike band and region.

    The detector compares the share of a rule's targets in each cell with the
    rule's usual share; a broken rule shows up as targets in cells it rarely hits.
    """
    if age_days is None:
        age = "?"
    elif age_days < 7:
        age = "new"
    elif age_days < 90:
        age = "young"
    elif age_days < 730:
        age = "established"
    else:
        age = "tenured"
    if prior_strikes is None:
        strikes = "?"
    elif prior_strikes == 0:
        strikes = "0"
    elif prior_strikes < 3:
        strikes = "1-2"
    else:
        strikes = "3+"
    return f"{age}|{strikes}|{region if region else '?'}"


def parse_event(raw: bytes | str, *, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode and validate one enforcement action.

    Raises :class:`ContractError` with reason ``too_large``, ``not_utf8``,
    ``not_json``, ``not_object``, ``missing_field``, ``invalid_type`` or
    ``invalid_value``.
    """
    # The limit is on encoded bytes, also when the caller hands over text.
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ContractError("too_large", None, f"event is larger than {max_bytes} bytes", size)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if isinstance(raw, bytes):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise ContractError(
                    "not_utf8", None, f"not valid UTF-8 at byte {bad.start}"
                ) from None
        raise ContractError("not_json", None, f"not valid JSON: {exc}") from None
    return event_from_obj(obj)


def _time(value: Any) -> float:
    epoch: float | None
    if isinstance(value, str):
        try:
            epoch = from_rfc3339(value)
        except ValueError as exc:
            raise ContractError("invalid_value", "occurred_at", str(exc), value) from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        epoch = _finite(value)
        if epoch is None:
            raise ContractError("invalid_value", "occurred_at", "not a finite number", value)
    else:
        raise ContractError(
            "invalid_type", "occurred_at", "expected RFC 3339 text or epoch seconds", value
        )
    if not MIN_EPOCH <= epoch < MAX_EPOCH:
        raise ContractError("invalid_value", "occurred_at", "outside 2000-01-01..2100-01-01", value)
    return epoch


def _finite(value: int | float) -> float | None:
    """``value`` as a float, or ``None`` if it is infinite, NaN or too large for a float."""
    try:
        out = float(value)
    except OverflowError:  # an int beyond the float range (only from event_from_obj)
        return None
    return out if math.isfinite(out) else None


def _required_id(obj: dict[str, Any], field: str) -> str:
    value = _id(obj, field)
    if value is None:
        raise ContractError("missing_field", field, "required field is missing")
    return value


def _id(obj: dict[str, Any], field: str) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContractError("invalid_type", field, "expected a string", value)
    if not value or len(value) > MAX_ID_CHARS:
        raise ContractError("invalid_value", field, f"expected 1..{MAX_ID_CHARS} characters", value)
    return value


def event_from_obj(obj: Any) -> Event:
    """Validate an already-decoded JSON value as an enforcement action."""
    if not isinstance(obj, dict):
        raise ContractError("not_object", None, "expected a JSON object", type(obj).__name__)
    for field in _REQUIRED:
        if obj.get(field) is None:
            raise ContractError("missing_field", field, "required field is missing")
    occurred_at = _time(obj["occurred_at"])
    event_id = _required_id(obj, "event_id")
    rule_id = _required_id(obj, "rule_id")
    account_id = _required_id(obj, "account_id")
    if rule_id == GLOBAL_RULE_ID:
        raise ContractError("invalid_value", "rule_id", "'*' is reserved for the global view")
    action = obj["action"]
    if not isinstance(action, str):
        raise ContractError("invalid_type", "action", "expected a string", action)
    if action not in ACTIONS:
        raise ContractError("invalid_value", "action", f"expected one of {sorted(ACTIONS)}", action)
    content_id, rule_version, reverses = (_id(obj, f) for f in _OPTIONAL_STR)

    age = obj.get("account_age_days")
    if age is not None:
        if not isinstance(age, int | float) or isinstance(age, bool):
            raise ContractError("invalid_type", "account_age_days", "expected a number", age)
        finite = _finite(age)
        if finite is None or finite < 0:
            raise ContractError("invalid_value", "account_age_days", "expected >= 0", age)
        age = finite
    strikes = obj.get("account_prior_strikes")
    if strikes is not None:
        if not isinstance(strikes, int) or isinstance(strikes, bool):
            raise ContractError(
                "invalid_type", "account_prior_strikes", "expected an integer", strikes
            )
        if strikes < 0:
            raise ContractError("invalid_value", "account_prior_strikes", "expected >= 0", strikes)
    source = obj.get("source")
    if source is not None:
        if not isinstance(source, str):
            raise ContractError("invalid_type", "source", "expected a string", source)
        if source not in SOURCES:
            raise ContractError(
                "invalid_value", "source", f"expected one of {sorted(SOURCES)}", source
            )
    region = obj.get("region")
    if region is not None:
        if not isinstance(region, str):
            raise ContractError("invalid_type", "region", "expected a string", region)
        if len(region) > MAX_REGION_CHARS:
            raise ContractError(
                "invalid_value", "region", f"expected at most {MAX_REGION_CHARS} characters", region
            )
    shadow = obj.get("shadow", False)
    if shadow is None:
        shadow = False
    elif not isinstance(shadow, bool):
        raise ContractError("invalid_type", "shadow", "expected true or false", shadow)
    return Event(
        event_id,
        occurred_at,
        rule_id,
        action,
        account_id,
        content_id,
        rule_version,
        age,
        strikes,
        source,
        reverses,
        region,
        shadow,
    )


# ----- the fast path ---------------------------------------------------------------------------
# Replaying history (~300,000 events per second per core) and ingesting a large platform's
# stream cannot afford building an ``Event`` with the checks above, several microseconds per
# event. The fast path (:meth:`detector.aggregate.Aggregator.add_raw`) decodes and type-checks
# in C (msgspec, against :class:`PlainEvent`, which states the same contract), then checks the
# rest (:func:`plain_time`); anything it does not take is handed to
# :func:`parse_event`, which accepts it or says what is wrong. So errors always come from the
# full validator, and tests/test_fast_path.py checks that both paths count the same events
# the same way.

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Action = Literal[
    "deactivate_account",
    "suspend_account",
    "remove_content",
    "limit_distribution",
    "warn",
    "reinstate_account",
    "restore_content",
]


class PlainEvent(msgspec.Struct, gc=False):
    """The contract as a msgspec type (unknown fields ignored, ``null`` = absent).

    Decoding checks types and lengths; the time's format and bounds, and the reserved
    rule id ``*``, are left to the fast path's caller."""

    event_id: _Id
    occurred_at: str | float
    rule_id: _Id
    action: _Action
    account_id: _Id
    content_id: _Id | None = None
    rule_version: _Id | None = None
    account_age_days: Annotated[float, msgspec.Meta(ge=0)] | None = None
    account_prior_strikes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    source: Literal["automated", "manual", "appeal"] | None = None
    reverses_event_id: _Id | None = None
    region: Annotated[str, msgspec.Meta(max_length=MAX_REGION_CHARS)] | None = None
    shadow: bool | None = None


PLAIN_DECODER: Final = msgspec.json.Decoder(PlainEvent)
"""Decodes JSON into :class:`PlainEvent`; raises ``msgspec.ValidationError`` or
``msgspec.DecodeError`` for anything else (then ask :func:`parse_event`)."""
_MINUTES: dict[str, int] = {}
_MAX_MINUTES = 4096
_SECONDS: Final = {f"{i:02d}": i for i in range(60)}
_MILLIS: Final = {f"{i:03d}": i for i in range(1000)}
"""Two and three ASCII digits to their value: checked and parsed by one lookup."""


def _minute(prefix: str) -> int | None:
    """Epoch of ``YYYY-MM-DDTHH:MM`` (UTC), validated once and cached."""
    try:
        base = int(from_rfc3339(prefix + ":00Z"))
    except ValueError:
        return None
    if len(_MINUTES) >= _MAX_MINUTES:
        _MINUTES.clear()
    _MINUTES[prefix] = base
    return base


def plain_time(ts: str | float) -> float | None:
    """``occurred_at`` of a :class:`PlainEvent` as epoch seconds, when it is a number or
    RFC 3339 UTC text (``...Z``, whole seconds or milliseconds) within the accepted years;
    ``None`` for anything else (:func:`parse_event` then decides)."""
    if type(ts) is float:
        t = ts
    elif type(ts) is str:
        n = len(ts)
        if (n != 20 and n != 24) or ts[n - 1] != "Z" or ts[10] != "T" or ts[16] != ":":
            return None
        prefix = ts[:16]
        base = _MINUTES.get(prefix)
        if base is None:
            base = _minute(prefix)
        sec = _SECONDS.get(ts[17:19])
        if base is None or sec is None:
            return None
        if n == 24:
            ms = _MILLIS.get(ts[20:23])
            if ms is None or ts[19] != ".":
                return None
            t = ((base + sec) * 1000 + ms) / 1000
        else:
            t = float(base + sec)
    else:
        return None
    return t if MIN_EPOCH <= t < MAX_EPOCH else None
