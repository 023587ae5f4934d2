"""The ingest's batcher: many records per call, cut exactly where one at a time would."""

from __future__ import annotations

import orjson
import pytest

from detector.aggregate import Aggregator
from detector.config import EngineConfig
from detector.errors import ContractError
from detector.stream.batcher import PartitionBatcher, RawRecord, TimeGuards
from detector.wire.events import parse_event

T0 = 1_767_571_200.0
NOW = T0 + 60.0


def records(n: int, gap_after: int | None = None) -> list[RawRecord]:
    """Valid events, with bad ones in between: not JSON, no value, far in the future."""
    out = []
    for i in range(n):
        ev = {
            "event_id": f"e{i}",
            "occurred_at": T0 + i * 0.5 + (10_000.0 if i % 17 == 5 else 0.0),
            "rule_id": f"r{i % 3}",
            "action": "deactivate_account" if i % 4 else "warn",
            "account_id": f"a{i}",
            "account_age_days": float(i % 900),
        }
        value: bytes | None = orjson.dumps(ev)
        if i % 11 == 3:
            value = b"{not json"
        elif i % 13 == 7:
            value = None
        offset = 100 + i + (10 if gap_after is not None and i > gap_after else 0)
        out.append(RawRecord("actions", 0, offset, None, value, 1_000 + i))
    return out


def batches_one_at_a_time(recs: list[RawRecord], **kw: int) -> list[tuple[bytes, list[str]]]:
    b = PartitionBatcher(0, EngineConfig(), **kw)  # type: ignore[arg-type]
    out = []
    for rec in recs:
        b.add(rec, NOW)
        if b.must_cut():
            batch, dead = b.cut()
            out.append((batch.to_bytes(), [d.reason for d in dead]))
    batch, dead = b.cut()
    return [*out, (batch.to_bytes(), [d.reason for d in dead])]


def batches_many_at_a_time(
    recs: list[RawRecord], step: int, **kw: int
) -> list[tuple[bytes, list[str]]]:
    b = PartitionBatcher(0, EngineConfig(), **kw)  # type: ignore[arg-type]
    out = []
    i = 0
    while i < len(recs):
        i = b.add_many(recs, i, min(len(recs), i + step), NOW)
        if b.must_cut():
            batch, dead = b.cut()
            out.append((batch.to_bytes(), [d.reason for d in dead]))
    batch, dead = b.cut()
    return [*out, (batch.to_bytes(), [d.reason for d in dead])]


@pytest.mark.parametrize("step", [1, 7, 1000])
@pytest.mark.parametrize("kw", [{}, {"max_records": 10}, {"force_cut_at": 123}])
def test_many_at_a_time_cuts_where_one_at_a_time_does(step: int, kw: dict[str, int]) -> None:
    recs = records(60)
    want = batches_one_at_a_time(recs, **kw)
    assert batches_many_at_a_time(recs, step, **kw) == want
    if kw:
        assert len(want) > 1, "nothing was cut: the case proves nothing"
    reasons = {r for _, dead in want for r in dead}
    assert {"not_json", "future"} <= reasons


def test_a_full_batch_takes_no_more() -> None:
    b = PartitionBatcher(0, EngineConfig(), max_records=10)
    recs = records(25)
    assert b.add_many(recs, 0, 25, NOW) == 10
    assert b.must_cut()
    assert b.add_many(recs, 10, 25, NOW) == 10
    with pytest.raises(ValueError, match="cut it first"):
        b.add(recs[10], NOW)
    batch, _ = b.cut()
    assert (batch.lo, batch.hi) == (100, 109)
    assert b.add_many(recs, 10, 25, NOW) == 20


Summary = tuple[int | None, int | None, float | None, list[dict[str, object]], list[str]]


def reference(
    recs: list[RawRecord], max_records: int = 20_000, force_cut_at: int | None = None
) -> list[Summary]:
    """The batches, restated plainly: one record at a time through the full validator,
    cut when full, or at the first record at or past the forced boundary."""
    guards, agg = TimeGuards(), Aggregator(EngineConfig(), guard=False, hits=True)
    out: list[Summary] = []
    lo = hi = wm = None
    dead: list[str] = []
    count = 0

    def cut() -> None:
        nonlocal lo, hi, dead, count
        out.append((lo, hi, wm, [t.to_dict() for t in agg.drain()], dead))
        lo = hi = None
        dead, count = [], 0

    for rec in recs:
        lo = rec.offset if lo is None else lo
        hi, count = rec.offset, count + 1
        try:
            ev = parse_event(rec.value if rec.value is not None else b"")
        except ContractError:
            dead.append("not_json")
        else:
            reason = guards.check(ev.occurred_at, NOW)
            if reason is not None:
                dead.append(reason)
            else:
                agg.add(ev)
                wm = ev.occurred_at if wm is None else max(wm, ev.occurred_at)
        if count >= max_records or (force_cut_at is not None and hi >= force_cut_at):
            force_cut_at = None
            cut()
    cut()
    return out


def summaries(batches: list[tuple[bytes, list[str]]]) -> list[Summary]:
    from detector.wire.aggregates import IngestBatch

    out: list[Summary] = []
    for raw, dead in batches:
        b = IngestBatch.from_bytes(raw)
        ticks = [t.to_dict() for t in b.aggregates]
        out.append((b.lo, b.hi, b.watermark, ticks, dead))
    return out


@pytest.mark.parametrize("step", [1, 7, 1000])
@pytest.mark.parametrize(
    ("kw", "gap_after"),
    [
        ({}, None),
        ({"max_records": 10}, None),
        ({"force_cut_at": 123}, None),
        ({"force_cut_at": 123}, 20),  # the boundary falls in a gap of the offsets
        ({"force_cut_at": 105}, 1),
        ({"force_cut_at": 90}, None),  # the boundary is before the first record
    ],
)
def test_batches_are_what_one_record_at_a_time_through_the_full_validator_gives(
    step: int, kw: dict[str, int], gap_after: int | None
) -> None:
    recs = records(60, gap_after)
    got = summaries(batches_many_at_a_time(recs, step, **kw))
    assert got == reference(recs, **kw)
    assert sum(len(ticks) for _, _, _, ticks, _ in got) > 10
