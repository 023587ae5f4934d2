"""Reinstatement requests (topic ``enforcement.reinstatements``, key = account id).

``detector ctl reinstate TRIP_ID`` writes one request per account the affected-accounts
ledger lists for a trip (one per ledger entry: an account deactivated twice in a trip
gets two requests, each reversing its own action)::

    {"request_id": "9c1f...", "trip_id": "bot.automation#3", "rule_id": "bot.automation",
     "account_id": "u-829", "reverses_event_id": "e-1203",
     "operator": "alice@example.com", "reason": "INC-4711: reinstate wrongful bans",
     "requested_at": "2026-03-01T13:05:00Z"}

The enforcement service consumes the topic, reinstates the account and reports the
reversal as a ``reinstate_account`` action whose ``reverses_event_id`` is the
request's. ``request_id`` is deterministic — the SHA-256, in lowercase hex, of the
ledger key ``TRIP_ID/EVENT_ID`` — so a request sent twice (a re-run, a retried send, two
operators at once) has the same id: the consumer must apply a request id once. The
key is the account id, so that requests for one account stay in order with each other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import orjson

from detector.errors import ContractError
from detector.wire.affected import AffectedAccount
from detector.wire.jsonobj import load_object
from detector.wire.timefmt import from_rfc3339, to_rfc3339

FIELDS: Final = (
    "request_id",
    "trip_id",
    "rule_id",
    "account_id",
    "reverses_event_id",
    "operator",
    "reason",
    "requested_at",
)


def request_id(trip_id: str, event_id: str) -> str:
    """The id of the request reversing ``event_id`` of ``trip_id``: SHA-256 of the ledger key."""
    return hashlib.sha256(f"{trip_id}/{event_id}".encode()).hexdigest()


@dataclass(frozen=True)
class ReinstatementRequest:
    """A request to reinstate one account a tripped rule deactivated."""

    request_id: str
    trip_id: str
    rule_id: str
    account_id: str
    reverses_event_id: str
    operator: str
    reason: str
    requested_at: float

    @classmethod
    def for_account(
        cls, account: AffectedAccount, operator: str, reason: str, requested_at: float
    ) -> ReinstatementRequest:
        """The request reversing one ledger entry."""
        return cls(
            request_id(account.trip_id, account.event_id),
            account.trip_id,
            account.rule_id,
            account.account_id,
            account.event_id,
            operator,
            reason,
            requested_at,
        )

    @property
    def key(self) -> bytes:
        """The message key on the reinstatements topic."""
        return self.account_id.encode()

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a plain mapping."""
        return {
            "request_id": self.request_id,
            "trip_id": self.trip_id,
            "rule_id": self.rule_id,
            "account_id": self.account_id,
            "reverses_event_id": self.reverses_event_id,
            "operator": self.operator,
            "reason": self.reason,
            "requested_at": to_rfc3339(self.requested_at),
        }

    def to_json(self) -> bytes:
        """The wire form as UTF-8 JSON."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | None) -> ReinstatementRequest:
        """Parse the wire form; raises :class:`ContractError` naming a bad field."""
        if raw is None:
            raise ContractError("missing_field", None, "empty message")
        d = load_object(raw)
        texts: dict[str, str] = {}
        for name in FIELDS:
            value = d.get(name)
            if value is None:
                raise ContractError("missing_field", name, "required field")
            if not isinstance(value, str) or not value:
                raise ContractError("invalid_type", name, "must be a non-empty string", value)
            texts[name] = value
        try:
            requested_at = from_rfc3339(texts["requested_at"])
        except ValueError as exc:
            raise ContractError(
                "invalid_value", "requested_at", str(exc), texts["requested_at"]
            ) from None
        return cls(
            texts["request_id"],
            texts["trip_id"],
            texts["rule_id"],
            texts["account_id"],
            texts["reverses_event_id"],
            texts["operator"],
            texts["reason"],
            requested_at,
        )
