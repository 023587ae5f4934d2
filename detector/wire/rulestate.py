"""Rule state (topic ``detector.rule-state``, compacted, key = rule id) and the
headers of every message the daemon writes.

A rule-state message is the latest state of one rule; enforcement services
follow the topic to know whether a rule may act (see ``detector.gate``)::

    {"rule_id": "bot.automation", "state": "open", "gate": "hold", "version": 3,
     "since": "2026-01-06T12:00:10Z", "reason": "surge_with_shift", "evidence": {...}}

``version`` increases with every transition of the rule: a consumer ignores a
message whose version is not above the one it holds. ``gate`` is what an
enforcement service should do with the rule's decisions: ``allow``, ``hold``
(for review) or ``shadow`` (decide, log, do not apply). Rule id ``*`` is the
global halt: while its gate is ``hold``, every automated deactivation is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from detector.engine.breaker import GATE, State
from detector.errors import ContractError
from detector.wire.jsonobj import load_object
from detector.wire.records import Record
from detector.wire.timefmt import from_rfc3339, to_rfc3339

# Headers on the daemon's output messages: where a message came from, so that a
# restarted state stage can tell which of its outputs were already published.
H_SOURCE_OFFSET: Final = "x-detector-source-offset"
H_SEQ: Final = "x-detector-seq"
# Headers on dead-letter messages.
H_REASON: Final = "x-dlq-reason"
H_FIELD: Final = "x-dlq-field"
H_ERROR: Final = "x-dlq-error"
H_TOPIC: Final = "x-dlq-source-topic"
H_PARTITION: Final = "x-dlq-source-partition"
H_OFFSET: Final = "x-dlq-source-offset"
H_TIMESTAMP: Final = "x-dlq-source-timestamp"


@dataclass(frozen=True)
class RuleStateMessage:
    """The latest state of one rule."""

    rule_id: str
    state: str
    version: int
    since: float
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def gate(self) -> str:
        """``allow``, ``hold`` or ``shadow``."""
        return GATE[State(self.state)].value

    @classmethod
    def of(cls, record: Record) -> RuleStateMessage:
        """The state a transition record leads to."""
        return cls(
            record.rule_id,
            record.to_state,
            int(record.evidence.get("state_version", 0)),
            record.at,
            record.reason,
            record.evidence,
        )

    def to_json(self) -> bytes:
        """Wire form."""
        return orjson.dumps(
            {
                "rule_id": self.rule_id,
                "state": self.state,
                "gate": self.gate,
                "version": self.version,
                "since": to_rfc3339(self.since),
                "reason": self.reason,
                "evidence": self.evidence,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> RuleStateMessage:
        """Parse the wire form; raises :class:`ContractError` naming a bad field."""
        d = load_object(raw)
        try:
            state = State(d["state"])
            return cls(
                str(d["rule_id"]),
                state.value,
                int(d["version"]),
                from_rfc3339(d["since"]),
                str(d.get("reason", "")),
                dict(d.get("evidence") or {}),
            )
        except KeyError as exc:
            raise ContractError("missing_field", str(exc.args[0]), "required field") from None
        except (TypeError, ValueError) as exc:
            raise ContractError("invalid_value", None, f"bad rule state: {exc}") from None


def output_headers(source_offset: int, seq: int) -> list[tuple[str, bytes]]:
    """Headers identifying a daemon output by the aggregates message that caused it."""
    return [(H_SOURCE_OFFSET, str(source_offset).encode()), (H_SEQ, str(seq).encode())]


def output_id(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> tuple[int, int]:
    """``(source offset, seq)`` from :func:`output_headers`, or ``(-1, -1)``."""
    found = dict(headers)
    try:
        return int(found[H_SOURCE_OFFSET]), int(found[H_SEQ])
    except (KeyError, ValueError):
        return -1, -1
