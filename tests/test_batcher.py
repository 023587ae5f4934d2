"""The ingest's batcher: many records per call, cut exactly where one at a time would."""

from __future__ import annotations

import orjson
import pytest

from detector.config import EngineConfig
from detector.stream.batcher import PartitionBatcher, RawRecord

T0 = 1_767_571_200.0
NOW = T0 + 60.0


def records(n: int) -> list[RawRecord]:
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
        out.append(RawRecord("actions", 0, 100 + i, None, value, 1_000 + i))
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
