"""Per-rule, per-tick aggregates: what the ingest stage sends to the engine.

An aggregate summarises one rule's actions in one evaluation tick (event time
``[tick * tick_seconds, (tick + 1) * tick_seconds)``). Aggregates of the same
rule and tick from several sources are merged by addition, which is what makes
pre-aggregation in the ingest stage invisible to the engine's decisions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import msgspec

from detector.errors import ContractError

Hit = tuple[float, str, str, str]
"""One applied deactivation: (event time, event id, account id, action)."""


_NO_HITS = b"\x90"
"""An empty MessagePack array."""


class Hits(Sequence[Hit]):
    """A tick's hits as they came on the wire, decoded only when read.

    The state stage keeps every rule's recent hits for the affected-accounts ledger but
    reads them only for a rule in a trip: decoding them all on arrival would cost the
    hot path more than everything else it does with them.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def decode(self) -> list[Hit]:
        """The hits, as a list."""
        hits: list[Hit] = _HITS_DECODER.decode(self.raw)
        return hits

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.decode())

    def __len__(self) -> int:
        return len(self.decode())

    @overload
    def __getitem__(self, i: int) -> Hit: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Hit]: ...
    def __getitem__(self, i: int | slice) -> Hit | Sequence[Hit]:
        return self.decode()[i]

    def __bool__(self) -> bool:
        return self.raw != _NO_HITS

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Hits):
            return self.raw == other.raw
        if isinstance(other, list):
            return self.decode() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Hits({self.raw[:60]!r}...)"


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
    hits: Sequence[Hit] = field(default_factory=list)
    """Applied deactivations ``(event time, event id, account id, action)``, when the
    ingest lists them (for the affected-accounts ledger; the engine ignores them). A
    list where they are collected; :class:`Hits` where they were read off the wire."""

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
        if other.hits:
            self.hits = [*self.hits, *other.hits]

    def copy(self) -> RuleTick:
        """An independent copy (containers included)."""
        return RuleTick(
            self.rule_id,
            self.tick,
            self.deactivations,
            self.reversals,
            self.shadow,
            self.other,
            dict(self.cells),
            list(self.versions),
            list(self.hits),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, keyed by field name (orjson writes the dataclass itself the
        same way, which the ingest uses for speed); shares nothing."""
        return {
            "rule_id": self.rule_id,
            "tick": self.tick,
            "deactivations": self.deactivations,
            "reversals": self.reversals,
            "shadow": self.shadow,
            "other": self.other,
            "cells": dict(self.cells),
            "versions": list(self.versions),
            "hits": [list(h) for h in self.hits],
        }

    @classmethod
    def from_dict(cls, d: Any) -> RuleTick:
        """Inverse of :meth:`to_dict`; raises :class:`ContractError` on a bad shape."""
        try:
            return cls(
                str(d["rule_id"]),
                int(d["tick"]),
                float(d["deactivations"]),
                float(d["reversals"]),
                float(d["shadow"]),
                float(d["other"]),
                {str(k): float(v) for k, v in d["cells"].items()},
                [str(v) for v in d["versions"]],
                [(float(t), str(e), str(a), str(x)) for t, e, a, x in d.get("hits", ())],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ContractError("invalid_value", "aggregate", f"bad aggregate: {exc}") from None


@dataclass(slots=True)
class IngestBatch:
    """One ingest flush of one input partition: the state stage's input message.

    ``lo..hi`` is the contiguous range of input offsets the batch covers (both
    ``None`` for a heartbeat that only moves time on). The state stage applies
    each range once, which is what makes counting exactly-once although Kafka
    delivers at least once. ``watermark`` is the largest event time seen on the
    partition; ``active`` says whether the partition delivered records recently
    (idle partitions do not hold time back).
    """

    partition: int
    lo: int | None
    hi: int | None
    watermark: float | None
    active: bool
    aggregates: list[RuleTick] = field(default_factory=list)
    rejected: int = 0
    """Records of the range sent to the dead-letter topic instead."""
    newest_append_ms: int | None = None
    """Kafka timestamp of the batch's newest record (for latency measurement)."""
    partitions: int = 1
    """Partitions of the input topic: time waits until every one has reported."""
    oldest_append_ms: int | None = None
    """Kafka timestamp of the batch's oldest record (its events waited longest)."""

    def to_bytes(self) -> bytes:
        """Wire form: MessagePack, a map keyed by field name (msgspec writes it from the
        dataclasses). Not JSON: this internal message carries every deactivation's ids,
        and MessagePack writes them twice as fast."""
        return _BATCH_ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> IngestBatch:
        """Inverse of :meth:`to_bytes` (typed decoding in C; the hits are left undecoded,
        see :class:`Hits`); raises :class:`ContractError`."""
        try:
            w: _BatchWire = _BATCH_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ContractError("invalid_value", "batch", f"bad ingest batch: {exc}") from None
        return cls(
            w.partition,
            w.lo,
            w.hi,
            w.watermark,
            w.active,
            [
                RuleTick(
                    a.rule_id,
                    a.tick,
                    a.deactivations,
                    a.reversals,
                    a.shadow,
                    a.other,
                    a.cells,
                    a.versions,
                    Hits(bytes(a.hits)),
                )
                for a in w.aggregates
            ],
            w.rejected,
            w.newest_append_ms,
            w.partitions,
            w.oldest_append_ms,
        )


COMMANDS_KEY = b"commands"
"""Key of :class:`CommandBatch` messages on the aggregates topic (ingest batches are
keyed by their input partition)."""


@dataclass(slots=True)
class ReceivedCommand:
    """An operator command the relay verified (signature, age), on its way to the engine."""

    partition: int
    offset: int
    """Where it is on the commands topic: the state stage applies each offset once."""
    received_at: float
    """Wall-clock time the relay read it (the audit's time)."""
    command: dict[str, Any]
    """The command as sent, without its signature."""


@dataclass(slots=True)
class CommandBatch:
    """Verified commands, in commands-topic order (a message of the aggregates topic)."""

    commands: list[ReceivedCommand]

    def to_json(self) -> bytes:
        """Wire form: JSON, keyed by field name."""
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, raw: bytes) -> CommandBatch:
        """Inverse of :meth:`to_json`; raises :class:`ContractError`."""
        try:
            batch: CommandBatch = _COMMANDS_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ContractError("invalid_value", "batch", f"bad command batch: {exc}") from None
        return batch


class _TickWire(msgspec.Struct):
    """:class:`RuleTick` as decoded: the hits kept as raw JSON."""

    rule_id: str
    tick: int
    deactivations: float = 0.0
    reversals: float = 0.0
    shadow: float = 0.0
    other: float = 0.0
    cells: dict[str, float] = {}
    versions: list[str] = []
    hits: msgspec.Raw = msgspec.Raw(b"\x90")  # MessagePack's empty array


class _BatchWire(msgspec.Struct):
    """:class:`IngestBatch` as decoded."""

    partition: int
    lo: int | None
    hi: int | None
    watermark: float | None
    active: bool
    aggregates: list[_TickWire] = []
    rejected: int = 0
    newest_append_ms: int | None = None
    partitions: int = 1
    oldest_append_ms: int | None = None


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, Hits):
        return msgspec.Raw(obj.raw)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENCODER = msgspec.json.Encoder()
_BATCH_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_hook)
_BATCH_DECODER = msgspec.msgpack.Decoder(_BatchWire)
_HITS_DECODER = msgspec.msgpack.Decoder(list[tuple[float, str, str, str]])
_COMMANDS_DECODER = msgspec.json.Decoder(CommandBatch)
