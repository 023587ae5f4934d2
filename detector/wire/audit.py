"""Audit records (topic ``detector.audit``, append-only, key = rule id).

One record for every breaker transition, every alert and every operator command
(accepted or rejected, with why)::

    {"audit_id": "cmd:0:17", "kind": "command", "at": "2026-03-01T12:00:05Z",
     "rule_id": "bot.automation", "actor": "alice@example.com",
     "outcome": "applied", "reason": "INC-4711: bans of old accounts",
     "detail": {...}, "config_version": "3f2a9c1e"}

- ``kind``: ``transition``, ``alert`` or ``command``.
- ``at``: for transitions and alerts the event time of the decision; for commands
  the wall-clock time the detector received the command.
- ``actor``: ``detector`` for its own decisions; the operator for commands and for
  the transitions they cause.
- ``outcome``: ``applied`` (it changed something), ``unchanged`` (an accepted
  command that found the rule already so: commands are idempotent), ``rejected``
  (a command that was not applied), ``recorded`` (transitions and alerts).
- ``reason``: the transition's or alert's reason; a rejected command's rejection
  reason (``malformed``, ``unsigned``, ``bad_signature``, ``stale``,
  ``from_future``, ``replayed``); an accepted command's own reason text.
- ``detail``: the evidence of a transition or alert; for a command the command as
  received (its signature removed) and, when rejected, ``error``.
- ``audit_id`` is stable: a record written twice (after a crash) has the same id,
  and readers keep the first.

The topic is never compacted and nothing in the detector deletes from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from detector.errors import ContractError
from detector.wire.jsonobj import load_object
from detector.wire.timefmt import from_rfc3339, to_rfc3339

KINDS: Final = ("transition", "alert", "command")
OUTCOMES: Final = ("applied", "unchanged", "rejected", "recorded")
DETECTOR_ACTOR: Final = "detector"


@dataclass(frozen=True)
class AuditRecord:
    """One audit entry."""

    audit_id: str
    kind: str
    at: float
    rule_id: str
    actor: str
    outcome: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    config_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a plain mapping."""
        return {
            "audit_id": self.audit_id,
            "kind": self.kind,
            "at": to_rfc3339(self.at),
            "rule_id": self.rule_id,
            "actor": self.actor,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
            "config_version": self.config_version,
        }

    def to_json(self) -> bytes:
        """The wire form as UTF-8 JSON."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes) -> AuditRecord:
        """Parse the wire form; raises :class:`ContractError` naming a bad field."""
        d = load_object(raw)
        try:
            kind, outcome = str(d["kind"]), str(d["outcome"])
            if kind not in KINDS:
                raise ContractError("invalid_value", "kind", f"one of {KINDS}", kind)
            if outcome not in OUTCOMES:
                raise ContractError("invalid_value", "outcome", f"one of {OUTCOMES}", outcome)
            return cls(
                str(d["audit_id"]),
                kind,
                from_rfc3339(d["at"]),
                str(d["rule_id"]),
                str(d["actor"]),
                outcome,
                str(d.get("reason", "")),
                dict(d.get("detail") or {}),
                str(d.get("config_version", "")),
            )
        except KeyError as exc:
            raise ContractError("missing_field", str(exc.args[0]), "required field") from None
        except (TypeError, ValueError) as exc:
            raise ContractError("invalid_value", None, f"bad audit record: {exc}") from None
