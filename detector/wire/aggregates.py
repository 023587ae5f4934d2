"""Per-rule, per-tick aggregates: what the ingest stage sends to the engine.

An aggregate summarises one rule's actions in one evaluation tick (event time
``[tick * tick_seconds, (tick + 1) * tick_seconds)``). Aggregates of the same
rule and tick from several sources are merged by addition, which is what makes
pre-aggregation in the ingest stage invisible to the engine's decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detector.errors import ContractError


@dataclass(slots=True)
class RuleTick:
    """One rule's activity in one tick."""

    rule_id: str
    tick: int
    deactivations: float = 0.0
    """Deactivations and suspensions, including those decided in shadow mode."""
    reversals: float = 0.0
    """Reinstatements and restorations of this rule's earlier actions."""
    shadow: float = 0.0
    """Of ``deactivations``, those decided in shadow mode (not applied)."""
    other: float = 0.0
    """Other actions (content removal, limited distribution, warnings)."""
    cells: dict[str, float] = field(default_factory=dict)
    """Deactivation targets per make-up cell."""
    versions: list[str] = field(default_factory=list)
    """Rule versions seen in the tick, in order of first appearance."""

    def merge(self, other: RuleTick) -> None:
        """Add another aggregate of the same rule and tick into this one."""
        self.deactivations += other.deactivations
        self.reversals += other.reversals
        self.shadow += other.shadow
        self.other += other.other
        cells = self.cells
        for cell, n in other.cells.items():
            cells[cell] = cells.get(cell, 0.0) + n
        for v in other.versions:
            if v not in self.versions:
                self.versions.append(v)

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-able form (the daemon's aggregate message body)."""
        return {
            "r": self.rule_id,
            "t": self.tick,
            "d": self.deactivations,
            "v": self.reversals,
            "s": self.shadow,
            "o": self.other,
            "c": self.cells,
            "n": self.versions,
        }

    @classmethod
    def from_dict(cls, d: Any) -> RuleTick:
        """Inverse of :meth:`to_dict`; raises :class:`ContractError` on a bad shape."""
        try:
            return cls(
                str(d["r"]),
                int(d["t"]),
                float(d["d"]),
                float(d["v"]),
                float(d["s"]),
                float(d["o"]),
                {str(k): float(v) for k, v in d["c"].items()},
                [str(v) for v in d["n"]],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ContractError("invalid_value", "aggregate", f"bad aggregate: {exc}") from None
