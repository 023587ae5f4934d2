"""Who a rule usually hits, and whether the current targets are different.

Targets are described by a *cell* (tenure band | strike band | region, see
:func:`detector.wire.events.target_cell`). A rule's usual population is the
smallest set of its most-hit cells that covers ``coverage`` of its (exponentially
decayed) targets; every other cell, including never-seen ones, is *outside*.
A spam wave makes a spam rule hit more of its usual cells; a broken rule starts
hitting outside cells, which the shift test in :mod:`detector.engine.stats`
measures against the usual outside share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Decayed counts are kept in growing units (weight 2^(age/half-life)) so that a
# bucket's update touches only its own cells; they are rescaled when this large.
_RESCALE_AT = 2.0**40
_PRUNE_SHARE = 1e-5
_MIN_OUTSIDE_SHARE = 0.01
MAX_CELLS = 256
"""Bound on the cells remembered per rule; targets in further cells count as ``OVERFLOW``."""
OVERFLOW = "*"


@dataclass
class Makeup:
    """Decayed target counts per cell and the derived usual population."""

    counts: dict[str, float] = field(default_factory=dict)
    ref_bucket: int = 0
    total: float = 0.0
    usual: frozenset[str] = frozenset()
    outside_share: float = 1.0
    refreshed_bucket: int = -(10**9)

    def weight(self, bucket: int, half_life: float) -> float:
        """Weight of a target seen in ``bucket`` relative to ``ref_bucket``."""
        return float(2.0 ** ((bucket - self.ref_bucket) / half_life))

    def decayed_total(self, bucket: int, half_life: float) -> float:
        """Number of targets seen, decayed to ``bucket``."""
        return self.total / self.weight(bucket, half_life)

    def learn(self, cells: dict[str, float], bucket: int, half_life: float) -> None:
        """Add one bucket's targets per cell."""
        if not cells:
            return
        if not self.counts:
            self.ref_bucket = bucket
        w = self.weight(bucket, half_life)
        if w > _RESCALE_AT:
            self._rescale(w, bucket)
            w = 1.0
        counts = self.counts
        for cell, n in cells.items():
            if cell not in counts and len(counts) >= MAX_CELLS:
                cell = OVERFLOW
            counts[cell] = counts.get(cell, 0.0) + n * w
            self.total += n * w

    def _rescale(self, w: float, bucket: int) -> None:
        """Make ``bucket`` the reference (weight 1) and drop negligible cells."""
        floor = self.total / w * _PRUNE_SHARE
        self.counts = {c: v / w for c, v in self.counts.items() if v / w > floor}
        self.total = sum(self.counts.values())
        self.ref_bucket = bucket

    def refresh(
        self, bucket: int, coverage: float, min_events: float = 0.0, half_life: float = math.inf
    ) -> None:
        """Recompute the usual population from the counts.

        With fewer than ``min_events`` (decayed) targets the population stays
        unknown: a usual set drawn from a handful of targets would call much of
        the rule's normal traffic "outside".
        """
        self.refreshed_bucket = bucket
        if self.total <= 0 or self.decayed_total(bucket, half_life) < min_events:
            self.usual, self.outside_share = frozenset(), 1.0
            return
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        usual: list[str] = []
        covered = 0.0
        for cell, n in ranked:
            if covered >= coverage * self.total:
                break
            usual.append(cell)
            covered += n
        self.usual = frozenset(usual)
        self.outside_share = max(1.0 - covered / self.total, _MIN_OUTSIDE_SHARE)

    def outside(self, cells: dict[str, float]) -> float:
        """How many of these targets are outside the usual population."""
        usual = self.usual
        return sum(n for c, n in cells.items() if c not in usual)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "counts": dict(self.counts),
            "ref_bucket": self.ref_bucket,
            "total": self.total,
            "usual": sorted(self.usual),
            "outside_share": self.outside_share,
            "refreshed_bucket": self.refreshed_bucket,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Makeup:
        """Inverse of :meth:`to_dict`."""
        return cls(
            counts={str(k): float(v) for k, v in d["counts"].items()},
            ref_bucket=int(d["ref_bucket"]),
            total=float(d["total"]),
            usual=frozenset(d["usual"]),
            outside_share=float(d["outside_share"]),
            refreshed_bucket=int(d["refreshed_bucket"]),
        )
