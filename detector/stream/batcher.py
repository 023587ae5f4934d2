"""The ingest stage's logic, without Kafka: records of one input partition to batches.

Validates each record against the event contract (the same fast path as the
backtest), sends what breaks it to the dead-letter list with a reason, and
aggregates the rest per rule and tick. A batch covers a contiguous offset range
``lo..hi``; after a restart the batcher can be told to cut exactly where the
last (possibly unacknowledged) batch ended, so that a re-sent batch is the
same batch and the state stage can recognise it.

The wall clock is an argument (``now``): it only rejects events from the far
future or the far past. Lateness against the engine's buckets is judged by the
engine itself.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from detector.aggregate import Aggregator
from detector.config import EngineConfig
from detector.errors import ContractError
from detector.wire.aggregates import IngestBatch
from detector.wire.events import parse_event


class InputRecord(Protocol):
    """What the ingest reads of a consumed Kafka record (aiokafka's records fit)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    """An :class:`InputRecord` built by hand (tests, tools)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None


def _offset(rec: InputRecord) -> int:
    return rec.offset


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be counted, and why."""

    record: InputRecord
    reason: str
    field: str | None
    error: str


@dataclass(frozen=True)
class TimeGuards:
    """Event times the ingest refuses, relative to the wall clock."""

    max_future_seconds: float = 600.0
    max_age_seconds: float = 0.0
    """Older events are ``too_old``; 0 disables the check (replaying history)."""

    def check(self, occurred_at: float, now: float) -> str | None:
        """The rejection reason for an event at ``occurred_at``, or ``None``."""
        if occurred_at > now + self.max_future_seconds:
            return "future"
        if self.max_age_seconds and occurred_at < now - self.max_age_seconds:
            return "too_old"
        return None

    def bounds(self, now: float) -> tuple[float, float]:
        """The event times :meth:`check` accepts at ``now``, as an inclusive range."""
        oldest = now - self.max_age_seconds if self.max_age_seconds else -math.inf
        return oldest, now + self.max_future_seconds


@dataclass
class PartitionBatcher:
    """Accumulates one input partition's records until the next cut."""

    partition: int
    config: EngineConfig
    guards: TimeGuards = field(default_factory=TimeGuards)
    partitions: int = 1
    """Partitions of the input topic (told to the state stage)."""
    max_records: int = 20_000
    force_cut_at: int | None = None
    """After a restart: the offset at which the last sent batch ended."""
    watermark: float | None = None
    lo: int | None = None
    hi: int | None = None
    count: int = 0
    opened_at: float = 0.0
    newest_append_ms: int | None = None
    oldest_append_ms: int | None = None
    dead: list[DeadLetter] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._agg = Aggregator(self.config, guard=False, hits=True)

    def add(self, rec: InputRecord, now: float) -> None:
        """Validate and count one record (``now``: wall-clock seconds)."""
        if self.add_many((rec,), 0, 1, now) == 0:
            raise ValueError("the batch is full: cut it first (see must_cut)")

    def add_many(self, recs: Sequence[InputRecord], start: int, stop: int, now: float) -> int:
        """Validate and count ``recs[start:stop]``, stopping early when the batch must
        be cut (:meth:`must_cut`); returns the index after the last record added.

        The ingest's hot path: the records' framing (offsets, append times) is taken a
        slice at a time, and their values counted by one call of the aggregator's fast
        path (:meth:`~detector.aggregate.Aggregator.add_raw`); only what it declines is
        judged record by record.
        """
        if start >= stop or self.must_cut():
            return start
        end = min(stop, start + self.max_records - self.count)
        if self.force_cut_at is not None:
            # Up to the first record at or past the boundary (past it: the offsets had a gap).
            first_at = bisect.bisect_left(recs, self.force_cut_at, start, end, key=_offset)
            end = min(end, first_at + 1)
        part = recs[start:end]
        if self.count == 0:
            self.lo, self.opened_at = part[0].offset, now
        self.hi = part[-1].offset
        self.count += len(part)
        stamps = [ts for r in part if (ts := r.timestamp) is not None]
        if stamps:
            newest, oldest = max(stamps), min(stamps)
            if self.newest_append_ms is None or newest > self.newest_append_ms:
                self.newest_append_ms = newest
            if self.oldest_append_ms is None or oldest < self.oldest_append_ms:
                self.oldest_append_ms = oldest
        values = [r.value for r in part]
        agg = self._agg
        t_min, t_max = self.guards.bounds(now)
        i, n = 0, len(values)
        while i < n:
            i = agg.add_raw(values, i, n, t_min, t_max)
            if i < n:
                self._add_one(part[i], now)
                i += 1
        if agg.accepted and (self.watermark is None or agg.watermark > self.watermark):
            self.watermark = agg.watermark
        return end

    def _add_one(self, rec: InputRecord, now: float) -> None:
        """The slow path: the full validator, then the time guards; refusals to ``dead``."""
        raw = rec.value
        if raw is None:
            self.dead.append(DeadLetter(rec, "not_json", None, "message has no value"))
            return
        try:
            ev = parse_event(raw)
        except ContractError as exc:
            self.dead.append(DeadLetter(rec, exc.reason, exc.field, str(exc)))
            return
        t = ev.occurred_at
        reason = self.guards.check(t, now)
        if reason is not None:
            self.dead.append(DeadLetter(rec, reason, "occurred_at", f"event time {t} is {reason}"))
        else:
            self._agg.add(ev)

    def must_cut(self) -> bool:
        """True when the batch has to be cut now (full, or at the forced boundary)."""
        return self.count >= self.max_records or (
            self.force_cut_at is not None and self.hi is not None and self.hi >= self.force_cut_at
        )

    def due(self, now: float, interval: float) -> bool:
        """True when records have waited ``interval`` seconds (and no forced cut is pending)."""
        if self.count == 0:
            return False
        if self.force_cut_at is not None and self.hi is not None and self.hi < self.force_cut_at:
            return False
        return now - self.opened_at >= interval

    def cut(self, active: bool = True) -> tuple[IngestBatch, list[DeadLetter]]:
        """Close the batch (or make a heartbeat when empty) and start a new one."""
        batch = IngestBatch(
            self.partition,
            self.lo,
            self.hi,
            self.watermark,
            active,
            self._agg.drain(),
            len(self.dead),
            self.newest_append_ms,
            self.partitions,
            self.oldest_append_ms,
        )
        dead = self.dead
        if self.hi is not None and self.force_cut_at is not None and self.hi >= self.force_cut_at:
            self.force_cut_at = None
        self.lo = self.hi = None
        self.count = 0
        self.dead = []
        self.newest_append_ms = self.oldest_append_ms = None
        return batch, dead

    def idle_advance(self, seconds: float) -> None:
        """Move an idle partition's watermark on by wall-clock time (it holds no records)."""
        if self.watermark is not None and seconds > 0:
            self.watermark += seconds
