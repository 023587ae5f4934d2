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
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from detector.config import EngineConfig
from detector.wire.aggregates import RuleTick
from detector.wire.events import (
    DEACTIVATIONS,
    GLOBAL_RULE_ID,
    MAX_EPOCH,
    MAX_EVENT_BYTES,
    MIN_EPOCH,
    PLAIN_DECODER,
    REVERSALS,
    Event,
    plain_time,
    target_cell,
)


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
        self._forget_tick()

    def _forget_tick(self) -> None:
        """Empty the fast path's cache: the last event's tick ``[lo, hi)`` and that tick's
        aggregates by rule (entries of ``ticks``, found without building a key)."""
        self._tick, self._tick_lo, self._tick_hi = 0, 0.0, 0.0
        self._tick_rules: dict[str, RuleTick] = {}

    def check(self, occurred_at: float) -> str | None:
        """Why an event at this time cannot be counted, or ``None`` if it can."""
        wm = self.watermark
        if wm == -math.inf or not self.guard:
            return None
        if occurred_at > wm + self._max_future:
            return "future"
        if occurred_at < self._closed_before(wm):
            return "too_late"
        return None

    def add_raw(
        self,
        values: Sequence[bytes | None],
        start: int,
        stop: int,
        t_min: float = -math.inf,
        t_max: float = math.inf,
    ) -> int:
        """Count encoded events ``values[start:stop]`` for as long as each is plainly valid
        (the fast path of :mod:`detector.wire.events`), has its time in ``[t_min, t_max]``
        and is accepted by this aggregator. Returns the index of the first value not
        taken (``stop`` when all were): the caller judges that one with the full
        validator (:func:`~detector.wire.events.parse_event`, then :meth:`add`, which
        gives the reason if it is refused) and goes on from the next, so events are
        counted in their order whichever path takes them.

        This is the innermost loop of both drivers: one call for many events, flat.
        """
        decode = PLAIN_DECODER.decode
        ticks, tick_s, max_future = self.ticks, self._tick_s, self._max_future
        list_hits, guard = self.hits, self.guard
        wm, first, accepted = self.watermark, self.first, self.accepted
        tick, lo, hi, rules = self._tick, self._tick_lo, self._tick_hi, self._tick_rules
        i = start
        while i < stop:
            raw = values[i]
            if raw is None or len(raw) > MAX_EVENT_BYTES:
                break
            try:
                ev = decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError):
                break
            ts = ev.occurred_at
            if type(ts) is float and MIN_EPOCH <= ts < MAX_EPOCH:
                t = ts
            else:
                maybe = plain_time(ts)
                if maybe is None:
                    break
                t = maybe
            if t < t_min or t > t_max or ev.rule_id == GLOBAL_RULE_ID:
                break
            if t > wm:
                if t > wm + max_future and wm != -math.inf:
                    break  # future
                wm = t
            elif t < wm and guard and t < self._closed_before(wm):
                break  # too late (ties with the watermark never are: no call for them)
            if not lo <= t < hi:  # another tick than the last event's
                tick = int(t // tick_s)
                lo, hi, rules = tick * tick_s, (tick + 1) * tick_s, {}
            rule_id = ev.rule_id
            agg = rules.get(rule_id)
            if agg is None:
                agg = ticks.get((rule_id, tick))
                if agg is None:
                    agg = ticks[rule_id, tick] = RuleTick(rule_id, tick)
                rules[rule_id] = agg
            action = ev.action
            if action in DEACTIVATIONS:
                agg.deactivations += 1
                cells = agg.cells
                cell = target_cell(ev.account_age_days, ev.account_prior_strikes, ev.region)
                cells[cell] = cells.get(cell, 0.0) + 1
                if ev.shadow:
                    agg.shadow += 1
                elif list_hits:
                    agg.hits.append((t, ev.event_id, ev.account_id, action))  # type: ignore[attr-defined]
            elif action in REVERSALS:
                agg.reversals += 1
            else:
                agg.other += 1
            version = ev.rule_version
            if version is not None and version not in agg.versions:
                agg.versions.append(version)
            accepted += 1
            if t < first:
                first = t
            i += 1
        self.watermark, self.first, self.accepted = wm, first, accepted
        self._tick, self._tick_lo, self._tick_hi, self._tick_rules = tick, lo, hi, rules
        return i

    def add(self, ev: Event) -> str | None:
        """Count one validated event; returns a rejection reason instead when it cannot be
        counted. The slow path, for events :meth:`add_raw` declined in their original
        form (it takes any valid event in the form :meth:`Event.to_json` writes)."""
        reason = self.check(ev.occurred_at)
        if reason is not None:
            return reason
        if self.add_raw((ev.to_json(),), 0, 1) != 1:
            raise ValueError(f"not a valid event: {ev!r}")
        return None

    def _closed_before(self, wm: float) -> float:
        """Event times before this belong to buckets the engine has closed, when the
        watermark is ``wm``."""
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
        self._forget_tick()
        return out
