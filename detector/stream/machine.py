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
from typing import Any, Final

from detector.config import EngineConfig
from detector.engine.breaker import Trigger
from detector.engine.core import BucketHook, Engine
from detector.errors import ContractError, StateError, TransitionError
from detector.ledger import Ledger
from detector.wire.affected import AffectedAccount, TripSummary
from detector.wire.aggregates import CommandBatch, IngestBatch, ReceivedCommand, RuleTick
from detector.wire.audit import DETECTOR_ACTOR, AuditRecord
from detector.wire.commands import Command
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import Record

SNAPSHOT_FORMAT = 1
COMMAND_MEMORY_SECONDS: Final = 86_400.0
"""Command ids are remembered (to reject replays) for this long after receipt; the
relay rejects commands older than ``COMMAND_MAX_AGE``, which must be shorter."""
TRIGGERS: Final = {
    "pause": Trigger.OPERATOR_PAUSE,
    "resume": Trigger.OPERATOR_RESUME,
    "disable": Trigger.OPERATOR_DISABLE,
    "enable": Trigger.OPERATOR_ENABLE,
    "shadow": Trigger.OPERATOR_SHADOW,
    "halt_all": Trigger.OPERATOR_PAUSE,
    "resume_all": Trigger.OPERATOR_RESUME,
}


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
    audits: list[AuditRecord] = field(default_factory=list)
    """One per record, and one per command."""
    ledger: list[AffectedAccount | TripSummary] = field(default_factory=list)


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
        self.ledger = Ledger(self.config)
        self.command_marks: dict[int, int] = {}
        """Per commands-topic partition: the last offset applied."""
        self.seen_commands: dict[str, float] = {}
        """Ids of accepted commands and when they were received (replays are rejected)."""
        self.deferred: list[ReceivedCommand] = []
        """Commands received before the engine's time started (applied when it does)."""

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
                engine, ledger = self.engine, self.ledger
                for agg in batch.aggregates:
                    if agg.hits:
                        out.ledger += ledger.add_tick(agg, offset)
                        agg.hits = []  # the engine keeps aggregates a while: not these
                    if not engine.add(agg):
                        out.late.append(agg)
        if batch.watermark is not None and (
            mark.watermark is None or batch.watermark > mark.watermark
        ):
            mark.watermark = batch.watermark
        mark.active = batch.active
        wm = self.watermark()
        if wm is not None:
            self._decided(out, self.engine.advance(wm), offset)
            self.ledger.prune(wm)
        if self.deferred and self.engine.tick is not None:
            deferred, self.deferred = self.deferred, []
            for rc in deferred:
                self._execute(rc, out, offset)
        return out

    def apply_commands(self, batch: CommandBatch, offset: int) -> Applied:
        """Apply the verified operator commands of the aggregates message at ``offset``."""
        out = Applied()
        if offset <= self.position:
            out.duplicate = True
            return out
        self.position = offset
        for rc in batch.commands:
            if rc.offset <= self.command_marks.get(rc.partition, -1):
                continue  # re-sent by the relay after a crash: applied already
            self.command_marks[rc.partition] = rc.offset
            self._forget_commands(rc.received_at)
            try:
                cmd = Command.from_dict(rc.command)
            except ContractError as exc:  # the relay checked it: a bug or a different version
                out.audits.append(_command_audit(rc, None, "rejected", "malformed", str(exc)))
                continue
            if cmd.command_id in self.seen_commands:
                out.audits.append(_command_audit(rc, cmd, "rejected", "replayed"))
                continue
            self.seen_commands[cmd.command_id] = rc.received_at
            if self.engine.tick is None:
                self.deferred.append(rc)  # no event time yet to apply it at
                continue
            self._execute(rc, out, offset)
        return out

    def _execute(self, rc: ReceivedCommand, out: Applied, offset: int) -> None:
        cmd = Command.from_dict(rc.command)
        evidence = {
            "command_id": cmd.command_id,
            "operator": cmd.operator,
            "command_reason": cmd.reason,
        }
        engine = self.engine
        try:
            if cmd.kind == "reset_baseline":
                records = engine.reset_baseline(cmd.rule_id, cmd.issued_at, evidence)
            else:
                records = engine.command(
                    cmd.rule_id, TRIGGERS[cmd.kind], cmd.issued_at, evidence, cmd.grace_seconds
                )
        except (StateError, TransitionError) as exc:
            out.audits.append(_command_audit(rc, cmd, "rejected", "not_applicable", str(exc)))
            return
        outcome = "applied" if records else "unchanged"
        out.audits.append(_command_audit(rc, cmd, outcome, cmd.reason))
        self._decided(out, records, offset)

    def _decided(self, out: Applied, records: list[Record], offset: int) -> None:
        """Take the engine's records: audit them and let the ledger follow the trips."""
        base = len(out.records)
        out.records += records
        for seq, rec in enumerate(records, base):
            out.audits.append(
                AuditRecord(
                    f"rec:{offset}:{seq}",
                    rec.kind,
                    rec.at,
                    rec.rule_id,
                    str(rec.evidence.get("operator", DETECTOR_ACTOR)),
                    "recorded",
                    rec.reason,
                    rec.evidence,
                    str(rec.evidence.get("config_version", "")),
                )
            )
        out.ledger += self.ledger.on_records(records)

    def _forget_commands(self, now: float) -> None:
        old = [c for c, at in self.seen_commands.items() if at < now - COMMAND_MEMORY_SECONDS]
        for c in old:
            del self.seen_commands[c]

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
            "ledger": self.ledger.snapshot(),
            "commands": {
                "marks": {str(p): o for p, o in sorted(self.command_marks.items())},
                "seen": dict(self.seen_commands),
                "deferred": [
                    {
                        "partition": rc.partition,
                        "offset": rc.offset,
                        "received_at": rc.received_at,
                        "command": rc.command,
                    }
                    for rc in self.deferred
                ],
            },
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
            machine.ledger = Ledger.restore(data.get("ledger", {}), cfg)
            commands = data.get("commands", {})
            machine.command_marks = {int(p): int(o) for p, o in commands.get("marks", {}).items()}
            machine.seen_commands = {str(c): float(t) for c, t in commands.get("seen", {}).items()}
            machine.deferred = [
                ReceivedCommand(
                    int(d["partition"]), int(d["offset"]), float(d["received_at"]), d["command"]
                )
                for d in commands.get("deferred", [])
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"state-machine snapshot is malformed: {exc!r}") from None
        return machine


def _command_audit(
    rc: ReceivedCommand, cmd: Command | None, outcome: str, reason: str, error: str = ""
) -> AuditRecord:
    detail: dict[str, Any] = {"command": rc.command}
    if error:
        detail["error"] = error
    return AuditRecord(
        f"cmd:{rc.partition}:{rc.offset}",
        "command",
        rc.received_at,
        cmd.rule_id if cmd else str(rc.command.get("rule_id", GLOBAL_RULE_ID)),
        cmd.operator if cmd else str(rc.command.get("operator", "")),
        outcome,
        reason,
        detail,
    )
