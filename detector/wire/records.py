"""Decision records: one per breaker transition and one per alert.

Wire form (one JSON object, also one line of ``backtest --transitions``)::

    {"rule_id": "spam-v2", "at": "2026-03-01T12:00:05Z", "from": "closed",
     "to": "open", "kind": "transition", "reason": "surge_with_shift",
     "evidence": {...}}

For an alert, ``from`` and ``to`` are both the rule's current state. The global
view uses rule id ``*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from detector.errors import ContractError
from detector.wire.timefmt import from_rfc3339, to_rfc3339

TRANSITION: Final = "transition"
ALERT: Final = "alert"


@dataclass(frozen=True)
class Record:
    """A transition or an alert, with the evidence behind it."""

    rule_id: str
    at: float
    kind: str
    from_state: str
    to_state: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def is_transition(self) -> bool:
        """True for a breaker transition (as opposed to an alert)."""
        return self.kind == TRANSITION

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a plain mapping."""
        return {
            "rule_id": self.rule_id,
            "at": to_rfc3339(self.at),
            "from": self.from_state,
            "to": self.to_state,
            "kind": self.kind,
            "reason": self.reason,
            "evidence": self.evidence,
        }

    def to_json(self) -> bytes:
        """The wire form as UTF-8 JSON."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> Record:
        """Parse the wire form; raises :class:`ContractError` naming a bad field."""
        if not isinstance(d, dict):
            raise ContractError("not_object", None, "expected a JSON object", type(d).__name__)
        for key in ("rule_id", "at", "from", "to", "kind", "reason"):
            if not isinstance(d.get(key), str):
                raise ContractError("invalid_type", key, "expected a string", d.get(key))
        if d["kind"] not in (TRANSITION, ALERT):
            raise ContractError("invalid_value", "kind", "expected transition or alert", d["kind"])
        evidence = d.get("evidence", {})
        if not isinstance(evidence, dict):
            raise ContractError("invalid_type", "evidence", "expected an object", evidence)
        try:
            at = from_rfc3339(d["at"])
        except ValueError as exc:
            raise ContractError("invalid_value", "at", str(exc), d["at"]) from None
        return cls(d["rule_id"], at, d["kind"], d["from"], d["to"], d["reason"], evidence)
