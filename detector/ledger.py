"""The affected-accounts ledger: who a rule deactivated while it was misbehaving.

Every rule's recent deactivations (event time, event id, account id, action) are
kept in a bounded ring — at most ``ledger_max_per_rule`` entries, none older than
``ledger_horizon_seconds`` behind the watermark. When the detector trips a rule,
the ledger lists the ring's deactivations since the incident's estimated onset,
up to the pause; when a half-open probe ends, every deactivation during the probe
(the rule was allowed to act again); when a held stretch ends (the rule paused,
until its probe or the end of the trip), every deactivation that was applied
nonetheless — an enforcement service that had not yet heard of the pause, or that
ignores it; and afterwards, any late arrival inside those windows. The trip ends
when the rule is closed (or disabled) again; its windows stay open for late events
for the engine's lateness, then the trip is forgotten. A global halt (rule ``*``) is
a trip whose windows take the deactivations of every rule.
Each deactivation is listed once, whatever order the events and the decisions
arrive in (the backtest hands over events in large slices, the daemon in small
ones: both list the same accounts).

A ring holds each aggregate's hits as one chunk, as they came (the state stage
leaves them undecoded: :class:`detector.wire.aggregates.Hits`); only the chunks of a
rule in a trip are ever read. Chunks leave the ring whole when they pass the
horizon, and the oldest hits one by one when a rule passes its bound.

Like the engine, the ledger is pure: no clock, no I/O. Its rings are not part
of its snapshot (they can be large); the snapshot records the aggregates offset
from which they can be rebuilt (:attr:`Ledger.rebuild_from`), and the state
stage re-reads that stretch of the aggregates topic after a restart.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from detector.config import EngineConfig
from detector.wire.affected import AffectedAccount, TripSummary, trip_id
from detector.wire.aggregates import RuleTick
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import Record
from detector.wire.timefmt import from_rfc3339

Hit = tuple[float, str, str, str]
"""One deactivation: (event time, event id, account id, action)."""


class Chunk(NamedTuple):
    """The hits of one rule from one aggregate, kept together."""

    lo: float
    """No hit is earlier than this (event time)."""
    hi: float
    """No hit is later than this."""
    hits: Sequence[Hit]
    offset: int
    """The aggregates offset that brought them."""
    n: int
    """How many."""


_ENDS_TRIP = ("closed", "disabled")


@dataclass
class Trip:
    """A rule's current (or just ended) incident."""

    trip_id: str
    rule_id: str
    onset: float
    paused_at: float
    reason: str
    probes: list[list[float]] = field(default_factory=list)
    """Half-open windows ``[start, end]`` (``end`` is ``inf`` while probing)."""
    held: list[list[float]] = field(default_factory=list)
    """Paused windows ``[start, end]``: the rule's deactivations should have been held."""
    ended_at: float | None = None
    truncated_before: float | None = None

    def phase(self, t: float) -> str | None:
        """Which closed part of the trip an event at ``t`` falls in, if any (a probe
        still under way is listed when it ends)."""
        if self.onset <= t < self.paused_at:
            return "incident"
        for windows, phase in ((self.probes, "probe"), (self.held, "held")):
            for start, end in windows:
                if start <= t < end and not math.isinf(end):
                    return phase
        return None

    def summary(self) -> TripSummary:
        """The trip's ledger summary record."""
        return TripSummary(
            self.trip_id,
            self.rule_id,
            self.onset,
            self.paused_at,
            self.reason,
            "open" if self.ended_at is None else "closed",
            self.ended_at,
            self.truncated_before,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (``inf`` as ``None``)."""
        return {
            "trip_id": self.trip_id,
            "rule_id": self.rule_id,
            "onset": self.onset,
            "paused_at": self.paused_at,
            "reason": self.reason,
            "probes": [[a, None if math.isinf(b) else b] for a, b in self.probes],
            "held": [[a, None if math.isinf(b) else b] for a, b in self.held],
            "ended_at": self.ended_at,
            "truncated_before": self.truncated_before,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trip:
        """Inverse of :meth:`to_dict`."""
        return cls(
            str(d["trip_id"]),
            str(d["rule_id"]),
            float(d["onset"]),
            float(d["paused_at"]),
            str(d["reason"]),
            [[float(a), math.inf if b is None else float(b)] for a, b in d["probes"]],
            [[float(a), math.inf if b is None else float(b)] for a, b in d.get("held", ())],
            None if d["ended_at"] is None else float(d["ended_at"]),
            None if d["truncated_before"] is None else float(d["truncated_before"]),
        )


class Ledger:
    """Recent deactivations per rule, and the ledger records of trips."""

    def __init__(self, config: EngineConfig) -> None:
        self.horizon = config.ledger_horizon_seconds
        self.max_per_rule = config.ledger_max_per_rule
        self.lateness = config.lateness_seconds
        self.tick_seconds = float(config.tick_seconds)
        self.rings: dict[str, deque[Chunk]] = {}
        self.counts: dict[str, int] = {}
        """Per rule: the hits its ring holds."""
        self.lost_until: dict[str, float] = {}
        """Per rule: the latest event time of an entry the ring had to drop."""
        self.trips: dict[str, Trip] = {}
        self.position = -1
        """Aggregates offset of the last message fed (rings) — see :attr:`rebuild_from`."""
        self.rebuilt_from = 0
        """After :meth:`restore`: where the rings' rebuild starts."""

    # ----- input -----
    def add(
        self,
        rule_id: str,
        hits: Sequence[Hit],
        offset: int,
        emit: bool = True,
        span: tuple[float, float] | None = None,
        n: int | None = None,
    ) -> list[AffectedAccount]:
        """Remember a rule's deactivations (from the aggregates message at ``offset``);
        returns ledger records for those inside a current trip's window (a rebuild
        passes ``emit=False``). ``span`` bounds their event times and ``n`` counts them
        (both are worked out from ``hits`` when not given, which reads them)."""
        self.position = max(self.position, offset)
        own = self.trips.get(rule_id) if emit else None
        everyone = self.trips.get(GLOBAL_RULE_ID) if emit else None
        if span is None or n is None:
            listed = list(hits)
            if not listed:
                return []
            hits, n = listed, len(listed)
            if span is None:
                span = (min(h[0] for h in listed), max(h[0] for h in listed))
        ring = self.rings.get(rule_id)
        if ring is None:
            ring = self.rings[rule_id] = deque()
        ring.append(Chunk(span[0], span[1], hits, offset, n))
        self.counts[rule_id] = self.counts.get(rule_id, 0) + n
        if self.counts[rule_id] > self.max_per_rule:
            self._bound(rule_id, ring)
        if own is None and everyone is None:
            return []
        trips = [trip for trip in (own, everyone) if trip is not None]
        if len(trips) > 1:
            hits = list(hits)  # read (decoded) once
        out: list[AffectedAccount] = []
        for trip in trips:
            for t, event_id, account_id, action in hits:
                phase = trip.phase(t)
                if phase is not None:
                    out.append(
                        AffectedAccount(
                            trip.trip_id, rule_id, account_id, event_id, action, t, phase
                        )
                    )
        return out

    def add_tick(self, agg: RuleTick, offset: int, emit: bool = True) -> list[AffectedAccount]:
        """:meth:`add` for an aggregate's hits, without reading them: they lie in its
        tick, and there is one for each deactivation not decided in shadow."""
        start = agg.tick * self.tick_seconds
        n = max(0, round(agg.deactivations - agg.shadow))
        return self.add(agg.rule_id, agg.hits, offset, emit, (start, start + self.tick_seconds), n)

    def _bound(self, rule_id: str, ring: deque[Chunk]) -> None:
        """Drop the rule's oldest hits until it holds at most ``max_per_rule``."""
        excess = self.counts[rule_id] - self.max_per_rule
        while excess > 0 and ring:
            first = ring[0]
            if first.n <= excess:
                ring.popleft()
                self._lose(rule_id, first.hi)
                excess -= first.n
                self.counts[rule_id] -= first.n
                continue
            hits = list(first.hits)
            dropped, kept = hits[:excess], hits[excess:]
            self._lose(rule_id, max(h[0] for h in dropped))
            ring[0] = Chunk(min(h[0] for h in kept), first.hi, kept, first.offset, len(kept))
            self.counts[rule_id] -= excess
            excess = 0

    def _listed(self, trip: Trip, start: float, end: float) -> list[tuple[str, Hit]]:
        """The hits of the trip's rule (of every rule, for a global trip) in
        ``[start, end)`` with their rule, reading only the chunks that may hold some."""
        if trip.rule_id == GLOBAL_RULE_ID:
            rules: Sequence[str] = sorted(self.rings)
        else:
            rules = (trip.rule_id,)
        out = []
        for rule_id in rules:
            for chunk in self.rings.get(rule_id, ()):
                if chunk.hi < start or chunk.lo >= end:
                    continue
                out += [(rule_id, h) for h in chunk.hits if start <= h[0] < end]
        return out

    def _accounts(
        self, trip: Trip, start: float, end: float, phase: str
    ) -> list[AffectedAccount | TripSummary]:
        """Ledger records of the trip's hits in ``[start, end)``."""
        return [
            AffectedAccount(trip.trip_id, rule_id, account_id, event_id, action, t, phase)
            for rule_id, (t, event_id, account_id, action) in self._listed(trip, start, end)
        ]

    def on_records(self, records: list[Record]) -> list[AffectedAccount | TripSummary]:
        """Follow the breaker transitions: trips start, probe, and end."""
        out: list[AffectedAccount | TripSummary] = []
        for rec in records:
            if not rec.is_transition:
                continue
            rule_id, to = rec.rule_id, rec.to_state
            trip = self.trips.get(rule_id)
            if rec.evidence.get("trigger") == "trip" and (
                trip is None or trip.ended_at is not None
            ):
                out += self._start(rec)
            elif trip is None or trip.ended_at is not None:
                continue
            elif to == "half_open":
                out += self._end_windows(trip, trip.held, rec.at, "held")
                trip.probes.append([rec.at, math.inf])
            elif to in _ENDS_TRIP:
                out += self._end_windows(trip, trip.probes, rec.at, "probe")
                out += self._end_windows(trip, trip.held, rec.at, "held")
                trip.ended_at = rec.at
                out.append(trip.summary())
            elif rec.from_state == "half_open":  # the probe failed: paused again
                out += self._end_windows(trip, trip.probes, rec.at, "probe")
                trip.held.append([rec.at, math.inf])
        return out

    def _start(self, rec: Record) -> list[AffectedAccount | TripSummary]:
        rule_id = rec.rule_id
        onset = self._onset(rec)
        version = int(rec.evidence.get("state_version", 0))
        trip = Trip(trip_id(rule_id, version), rule_id, onset, rec.at, rec.reason)
        trip.held.append([rec.at, math.inf])
        if rule_id == GLOBAL_RULE_ID:
            lost = max(self.lost_until.values(), default=None)
        else:
            lost = self.lost_until.get(rule_id)
        if lost is not None and lost >= onset:
            trip.truncated_before = lost
        self.trips[rule_id] = trip
        return [trip.summary(), *self._accounts(trip, onset, rec.at, "incident")]

    def _onset(self, rec: Record) -> float:
        """When a trip's incident began: the evidence's onset; for a global halt on many
        rules tripping, the earliest onset of their trips (the halt's own evidence
        names none)."""
        onsets = [rec.at]
        with contextlib.suppress(KeyError, ValueError):
            onsets.append(from_rfc3339(str(rec.evidence["onset"])))
        if rec.rule_id == GLOBAL_RULE_ID:
            rules = rec.evidence.get("rules")
            for rule_id in rules if isinstance(rules, list) else ():
                trip = self.trips.get(str(rule_id))
                if trip is not None:
                    onsets.append(trip.onset)
        return min(onsets)

    def _end_windows(
        self, trip: Trip, windows: list[list[float]], at: float, phase: str
    ) -> list[AffectedAccount | TripSummary]:
        """Close the window still open in ``windows`` at ``at`` and list its entries."""
        out: list[AffectedAccount | TripSummary] = []
        for window in windows:
            if math.isinf(window[1]):
                window[1] = at
                out += self._accounts(trip, window[0], at, phase)
        return out

    def finish(self, at: float) -> list[AffectedAccount | TripSummary]:
        """End of the input (backtest): list the probes still under way at ``at``."""
        out: list[AffectedAccount | TripSummary] = []
        for trip in self.trips.values():
            if trip.ended_at is None:
                out += self._end_windows(trip, trip.probes, at, "probe")
                out += self._end_windows(trip, trip.held, at, "held")
        return out

    # ----- bounds -----
    def prune(self, watermark: float) -> None:
        """Forget what is older than the horizon, and trips past their late events."""
        cutoff = watermark - self.horizon
        for rule_id, ring in self.rings.items():
            while ring and ring[0].hi < cutoff:
                first = ring.popleft()
                self.counts[rule_id] -= first.n
                self._lose(rule_id, first.hi)
        done = [
            r
            for r, trip in self.trips.items()
            if trip.ended_at is not None and watermark > trip.ended_at + self.lateness
        ]
        for r in done:
            del self.trips[r]

    def _lose(self, rule_id: str, t: float) -> None:
        if t > self.lost_until.get(rule_id, -math.inf):
            self.lost_until[rule_id] = t

    @property
    def rebuild_from(self) -> int:
        """The aggregates offset from which re-feeding rebuilds the rings exactly."""
        oldest = [ring[0].offset for ring in self.rings.values() if ring]
        return min(oldest) if oldest else self.position + 1

    @property
    def size(self) -> int:
        """Hits held, over all rules."""
        return sum(self.counts.values())

    # ----- persistence -----
    def snapshot(self) -> dict[str, Any]:
        """Trips and bookkeeping (not the rings: see :attr:`rebuild_from`)."""
        return {
            "rebuild_from": self.rebuild_from,
            "position": self.position,
            "lost_until": dict(self.lost_until),
            "trips": [trip.to_dict() for trip in self.trips.values()],
        }

    @classmethod
    def restore(cls, data: dict[str, Any], config: EngineConfig) -> Ledger:
        """A ledger with :meth:`snapshot`'s trips and empty rings. To rebuild the rings,
        feed it the aggregates from :attr:`rebuilt_from` up to the snapshot's position
        with ``emit=False``, then :meth:`prune` at the snapshot's watermark: the rings
        are then exactly what they were (the snapshot is taken after a prune at that
        watermark, and pruning only ever removes the oldest entries)."""
        ledger = cls(config)
        ledger.rebuilt_from = int(data.get("rebuild_from", 0))
        ledger.position = int(data.get("position", -1))
        ledger.lost_until = {str(k): float(v) for k, v in data.get("lost_until", {}).items()}
        for d in data.get("trips", []):
            trip = Trip.from_dict(d)
            ledger.trips[trip.rule_id] = trip
        return ledger
