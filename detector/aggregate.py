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

    def check(self, occurred_at: float) -> str | None:
        """Why an event at this time cannot be counted, or ``None`` if it can."""
        wm = self.watermark
        if wm == -math.inf:
            return None
        cfg = self.config
        if occurred_at > wm + cfg.max_future_seconds:
            return "future"
        closed_before = math.floor((wm - cfg.lateness_seconds) / cfg.bucket_seconds)
        if occurred_at < closed_before * cfg.bucket_seconds:
            return "too_late"
        return None

    def add(self, ev: Event) -> str | None:
        """Count one event; returns a rejection reason instead when it cannot be counted."""
        t = ev.occurred_at
        reason = self.check(t)
        if reason is not None:
            return reason
        if t > self.watermark:
            self.watermark = t
        tick = int(t // self.config.tick_seconds)
        key = (ev.rule_id, tick)
        agg = self.ticks.get(key)
        if agg is None:
            agg = self.ticks[key] = RuleTick(ev.rule_id, tick)
        action = ev.action
        if action in DEACTIVATIONS:
            agg.deactivations += 1
            if ev.shadow:
                agg.shadow += 1
            cell = target_cell(ev.account_age_days, ev.account_prior_strikes, ev.region)
            agg.cells[cell] = agg.cells.get(cell, 0.0) + 1
        elif action in REVERSALS:
            agg.reversals += 1
        else:
            agg.other += 1
        if ev.rule_version is not None and ev.rule_version not in agg.versions:
            agg.versions.append(ev.rule_version)
        self.accepted += 1
        return None

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
