"""The state stage's logic, without Kafka: apply ingest batches to the engine once.

Kafka delivers at least once, and an ingest worker that crashes between sending
a batch and committing its input offsets sends it again (the ingest re-cuts the
very same range, see :mod:`detector.stream.ingest`). The machine keeps, per
input partition, the last input offset it applied, and skips any batch whose
range it has seen: every event is counted exactly once. Its whole state —
engine included — is one plain value (:meth:`StateMachine.snapshot`), which
the daemon checkpoints; replaying the aggregates topic from a checkpoint gives
exactly the same engine and the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detector.config import EngineConfig
from detector.engine.core import BucketHook, Engine
from detector.errors import StateError
from detector.wire.aggregates import IngestBatch, RuleTick
from detector.wire.records import Record

SNAPSHOT_FORMAT = 1


@dataclass
class Applied:
    """What applying one message did."""

    records: list[Record] = field(default_factory=list)
    late: list[RuleTick] = field(default_factory=list)
    """Aggregates that arrived after their bucket was closed (counted nowhere else)."""
    duplicate: bool = False
    """The batch's input range was already applied: nothing was counted."""
    gap: bool = False
    """The batch does not continue the partition's last applied range (data was lost
    upstream, or the partition was reset); it was applied anyway."""


@dataclass
class Mark:
    """What the state stage knows of one input partition."""

    applied: int = -1
    """Last input offset applied."""
    watermark: float | None = None
    active: bool = True


class StateMachine:
    """Engine plus exactly-once bookkeeping; event time only, no I/O."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        engine: Engine | None = None,
        on_bucket: BucketHook | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.engine = engine or Engine(self.config, on_bucket=on_bucket)
        self.marks: dict[int, Mark] = {}
        self.partitions = 0
        """Partitions of the input topic (from the batches)."""
        self.position = -1
        """Offset of the last aggregates message applied."""

    def apply(self, batch: IngestBatch, offset: int) -> Applied:
        """Apply the message at ``offset`` of the aggregates topic."""
        out = Applied()
        if offset <= self.position:
            out.duplicate = True
            return out
        self.position = offset
        self.partitions = max(self.partitions, batch.partitions)
        mark = self.marks.setdefault(batch.partition, Mark())
        if batch.hi is not None and batch.lo is not None:
            if batch.hi <= mark.applied:
                out.duplicate = True
            else:
                out.gap = mark.applied >= 0 and batch.lo != mark.applied + 1
                mark.applied = batch.hi
                engine = self.engine
                out.late = [agg for agg in batch.aggregates if not engine.add(agg)]
        if batch.watermark is not None and (
            mark.watermark is None or batch.watermark > mark.watermark
        ):
            mark.watermark = batch.watermark
        mark.active = batch.active
        wm = self.watermark()
        if wm is not None:
            out.records = self.engine.advance(wm)
        return out

    def watermark(self) -> float | None:
        """Event time the engine may advance to: the slowest active partition's.

        Time stands still until every input partition has reported once, and while an
        active partition has no events yet (either may hold older events). Idle
        partitions (no records and no lag for a while) do not hold time back; when every
        partition is idle, the most advanced one sets the time (the ingest moves idle
        watermarks on with the wall clock). Idleness is a real-time notion: a partition
        that was idle and then receives a backlog of old events can find their buckets
        closed (they go to the dead-letter topic as ``too_late``).
        """
        if any(p not in self.marks for p in range(self.partitions)):
            return None
        active = [m.watermark for m in self.marks.values() if m.active]
        if active:
            # An active partition without events yet may be about to deliver old ones.
            return None if None in active else min(w for w in active if w is not None)
        known = [m.watermark for m in self.marks.values() if m.watermark is not None]
        return max(known) if known else None

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain JSON-able data."""
        return {
            "format": SNAPSHOT_FORMAT,
            "position": self.position,
            "partitions": self.partitions,
            "marks": {
                str(p): {"applied": m.applied, "watermark": m.watermark, "active": m.active}
                for p, m in sorted(self.marks.items())
            },
            "engine": self.engine.snapshot(),
        }

    @classmethod
    def restore(
        cls,
        data: dict[str, Any],
        config: EngineConfig | None = None,
        on_bucket: BucketHook | None = None,
    ) -> StateMachine:
        """Rebuild from :meth:`snapshot` output."""
        if data.get("format") != SNAPSHOT_FORMAT:
            raise StateError(f"unknown state-machine snapshot format {data.get('format')!r}")
        cfg = config or EngineConfig()
        try:
            machine = cls(cfg, Engine.restore(data["engine"], cfg, on_bucket=on_bucket))
            machine.position = int(data["position"])
            machine.partitions = int(data["partitions"])
            for p, m in data["marks"].items():
                wm = m["watermark"]
                machine.marks[int(p)] = Mark(
                    int(m["applied"]), None if wm is None else float(wm), bool(m["active"])
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"state-machine snapshot is malformed: {exc!r}") from None
        return machine
