"""Events to per-rule, per-tick aggregates: the shared first stage of every driver.

The backtest and the daemon's ingest stage both use :class:`Aggregator`, so the
engine sees the same aggregates whichever driver read the events. Besides
summing, it keeps the event-time watermark (the largest event time seen) and
rejects, with a reason, the events that cannot be counted any more (``too_late``:
their bucket is already closed) or that would drag time forward absurdly
(``future``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from detector.config import EngineConfig
from detector.wire.aggregates import RuleTick
from detector.wire.events import DEACTIVATIONS, REVERSALS, Event, target_cell


@dataclass
class Aggregator:
    """Sums events into :class:`RuleTick` aggregates and tracks the watermark."""

    config: EngineConfig
    watermark: float = -math.inf
    ticks: dict[tuple[str, int], RuleTick] = field(default_factory=dict)
    accepted: int = 0
    first: float = math.inf
    """Earliest accepted event time."""
    guard: bool = True
    """Reject ``future`` and ``too_late`` events. The daemon's ingest turns this off:
    there the engine judges lateness, and the wall clock judges the future."""
    hits: bool = False
    """Also list each applied deactivation (for the affected-accounts ledger)."""

    def __post_init__(self) -> None:
        self._tick_s = self.config.tick_seconds
        self._max_future = self.config.max_future_seconds if self.guard else math.inf

    def check(self, occurred_at: float) -> str | None:
        """Why an event at this time cannot be counted, or ``None`` if it can."""
        wm = self.watermark
        if wm == -math.inf or not self.guard:
            return None
        if occurred_at > wm + self._max_future:
            return "future"
        if occurred_at < self._closed_before():
            return "too_late"
        return None

    def add(self, ev: Event) -> str | None:
        """Count one event; returns a rejection reason instead when it cannot be counted."""
        cell = (
            target_cell(ev.account_age_days, ev.account_prior_strikes, ev.region)
            if ev.action in DEACTIVATIONS
            else None
        )
        return self.add_fields(
            ev.occurred_at,
            ev.rule_id,
            ev.action,
            cell,
            ev.rule_version,
            ev.shadow,
            ev.event_id,
            ev.account_id,
        )

    def add_fields(
        self,
        t: float,
        rule_id: str,
        action: str,
        cell: str | None,
        version: str | None,
        shadow: bool,
        event_id: str = "",
        account_id: str = "",
    ) -> str | None:
        """:meth:`add` for the fields of :func:`~detector.wire.events.fast_fields`
        (``cell`` is ``None`` for actions that are not deactivations).

        This is the replay's innermost loop: keep it flat.
        """
        wm = self.watermark
        if t > wm:
            if t > wm + self._max_future and wm != -math.inf:
                return "future"
            self.watermark = t
        elif t < wm and self.guard and t < self._closed_before():
            # (Ties with the watermark are common and never late: no call for them.)
            return "too_late"
        key = (rule_id, int(t // self._tick_s))
        agg = self.ticks.get(key)
        if agg is None:
            agg = self.ticks[key] = RuleTick(rule_id, key[1])
        if cell is not None:
            agg.deactivations += 1
            cells = agg.cells
            cells[cell] = cells.get(cell, 0.0) + 1
            if shadow:
                agg.shadow += 1
            elif self.hits:
                # A list while aggregating (Hits only where read off the wire).
                agg.hits.append((t, event_id, account_id, action))  # type: ignore[attr-defined]
        elif action in REVERSALS:
            agg.reversals += 1
        else:
            agg.other += 1
        if version is not None and version not in agg.versions:
            agg.versions.append(version)
        self.accepted += 1
        if t < self.first:
            self.first = t
        return None

    def _closed_before(self) -> float:
        """Event times before this belong to buckets the engine has closed."""
        wm = self.watermark
        if wm == -math.inf or not self.guard:
            return -math.inf
        cfg = self.config
        return math.floor((wm - cfg.lateness_seconds) / cfg.bucket_seconds) * cfg.bucket_seconds

    def add_count(self, rule_id: str, t: float, count: float) -> str | None:
        """Count pre-aggregated deactivations (no make-up information)."""
        reason = self.check(t)
        if reason is not None:
            return reason
        if t > self.watermark:
            self.watermark = t
        tick = int(t // self.config.tick_seconds)
        key = (rule_id, tick)
        agg = self.ticks.get(key)
        if agg is None:
            agg = self.ticks[key] = RuleTick(rule_id, tick)
        agg.deactivations += count
        self.accepted += 1
        return None

    def drain(self) -> list[RuleTick]:
        """Hand over everything aggregated so far (in tick, then rule order)."""
        out = [self.ticks[k] for k in sorted(self.ticks, key=lambda k: (k[1], k[0]))]
        self.ticks = {}
        return out
