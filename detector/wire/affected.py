"""The affected-accounts ledger (topic ``detector.affected``, compacted).

For every trip (a rule paused by the detector), the accounts the rule deactivated
or suspended between the estimated onset of the incident and the pause, while a
half-open probe let the rule act again, and while it was paused yet still acted. The
trip of a global halt (rule ``*``) lists the deactivations of every rule, each with
its own ``rule_id``.
Two kinds of record:

An account (key ``TRIP_ID/EVENT_ID``)::

    {"kind": "account", "trip_id": "bot.automation#3", "rule_id": "bot.automation",
     "account_id": "u-829", "event_id": "e-1203", "action": "deactivate_account",
     "occurred_at": "2026-03-01T11:58:41Z", "phase": "incident"}

``phase`` is ``incident`` (between onset and pause), ``probe`` (during a
half-open probe: the rule was allowed to act again) or ``held`` (while the rule was
paused: the decision should have been held, yet it was applied — an enforcement
service that had not heard of the pause yet, or ignores it). The event id is what a
reinstatement reverses
(``reverses_event_id``). Shadow-mode decisions were never applied and are not
listed.

A trip summary (key ``TRIP_ID``), written when the trip starts and again when
it ends (compaction keeps the last)::

    {"kind": "trip", "trip_id": "bot.automation#3", "rule_id": "bot.automation",
     "onset": "2026-03-01T11:57:00Z", "paused_at": "2026-03-01T11:59:10Z",
     "reason": "surge_with_shift", "status": "open", "ended_at": null,
     "truncated_before": null}

``status`` is ``open`` while the rule is paused or probing and ``closed`` once it
is closed again (or disabled). ``truncated_before`` is set when the ledger's
bounded memory no longer held the accounts from before that time (see
``ledger_max_per_rule``): the list is complete only from there on.

A trip id is ``RULE_ID#VERSION``, the version of the rule state the trip
created (see ``detector.rule-state``). Reading the topic, keep one record per
key (the last): a record written twice after a crash has the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from detector.errors import ContractError
from detector.wire.jsonobj import load_object
from detector.wire.timefmt import from_rfc3339, to_rfc3339

PHASES: Final = ("incident", "probe", "held")


def trip_id(rule_id: str, version: int) -> str:
    """The id of the trip that took ``rule_id`` to state version ``version``."""
    return f"{rule_id}#{version}"


@dataclass(frozen=True)
class AffectedAccount:
    """One deactivation by a rule during one of its trips."""

    trip_id: str
    rule_id: str
    account_id: str
    event_id: str
    action: str
    occurred_at: float
    phase: str

    @property
    def key(self) -> bytes:
        """The record's key on the ledger topic."""
        return f"{self.trip_id}/{self.event_id}".encode()

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a plain mapping."""
        return {
            "kind": "account",
            "trip_id": self.trip_id,
            "rule_id": self.rule_id,
            "account_id": self.account_id,
            "event_id": self.event_id,
            "action": self.action,
            "occurred_at": to_rfc3339(self.occurred_at),
            "phase": self.phase,
        }

    def to_json(self) -> bytes:
        """The wire form as UTF-8 JSON."""
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True)
class TripSummary:
    """A trip's window and status."""

    trip_id: str
    rule_id: str
    onset: float
    paused_at: float
    reason: str
    status: str = "open"
    ended_at: float | None = None
    truncated_before: float | None = None

    @property
    def key(self) -> bytes:
        """The record's key on the ledger topic."""
        return self.trip_id.encode()

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a plain mapping."""
        return {
            "kind": "trip",
            "trip_id": self.trip_id,
            "rule_id": self.rule_id,
            "onset": to_rfc3339(self.onset),
            "paused_at": to_rfc3339(self.paused_at),
            "reason": self.reason,
            "status": self.status,
            "ended_at": None if self.ended_at is None else to_rfc3339(self.ended_at),
            "truncated_before": (
                None if self.truncated_before is None else to_rfc3339(self.truncated_before)
            ),
        }

    def to_json(self) -> bytes:
        """The wire form as UTF-8 JSON."""
        return orjson.dumps(self.to_dict())


def parse_ledger_record(raw: bytes) -> AffectedAccount | TripSummary:
    """Parse either kind of ledger record; raises :class:`ContractError`."""
    d = load_object(raw)
    try:
        if d["kind"] == "account":
            phase = str(d["phase"])
            if phase not in PHASES:
                raise ContractError("invalid_value", "phase", f"one of {PHASES}", phase)
            return AffectedAccount(
                str(d["trip_id"]),
                str(d["rule_id"]),
                str(d["account_id"]),
                str(d["event_id"]),
                str(d["action"]),
                from_rfc3339(d["occurred_at"]),
                phase,
            )
        if d["kind"] == "trip":
            ended, trunc = d.get("ended_at"), d.get("truncated_before")
            return TripSummary(
                str(d["trip_id"]),
                str(d["rule_id"]),
                from_rfc3339(d["onset"]),
                from_rfc3339(d["paused_at"]),
                str(d.get("reason", "")),
                str(d.get("status", "open")),
                None if ended is None else from_rfc3339(ended),
                None if trunc is None else from_rfc3339(trunc),
            )
        raise ContractError("invalid_value", "kind", "account or trip", d["kind"])
    except KeyError as exc:
        raise ContractError("missing_field", str(exc.args[0]), "required field") from None
    except (TypeError, ValueError) as exc:
        raise ContractError("invalid_value", None, f"bad ledger record: {exc}") from None
