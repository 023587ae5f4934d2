"""The offline driver: replay history through the same engine, in event time.

Input is either enforcement actions (JSON Lines, the event contract; ``.gz``
is read transparently) or pre-aggregated counts (CSV ``timestamp,rule_id,count``).
Bad lines are never dropped silently: each is counted by reason, the first few
are reported with their line numbers, and ``rejects`` receives all of them.
"""

from __future__ import annotations

import csv
import gc
import gzip
import io
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any, cast

import orjson

from detector.aggregate import Aggregator
from detector.config import EngineConfig
from detector.engine.core import BucketScore, Engine
from detector.errors import ContractError, DetectorError
from detector.ledger import Ledger
from detector.wire.affected import AffectedAccount, TripSummary
from detector.wire.events import parse_event
from detector.wire.records import Record
from detector.wire.timefmt import from_rfc3339, to_rfc3339

FLUSH_EVERY = 50_000
"""Lines between hand-overs from the aggregator to the engine."""
MAX_REPORTED_ERRORS = 10

Progress = Callable[[int], None]
"""Called with the number of input bytes consumed so far."""


@dataclass
class Series:
    """Per-bucket history of one rule, kept for plots."""

    start: array[float] = field(default_factory=lambda: array("d"))
    count: array[float] = field(default_factory=lambda: array("d"))
    expected: array[float] = field(default_factory=lambda: array("d"))
    dispersion: array[float] = field(default_factory=lambda: array("d"))
    score: array[float] = field(default_factory=lambda: array("d"))


@dataclass
class BacktestResult:
    """What a backtest saw and decided."""

    lines: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    first_errors: list[tuple[int, str, str]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    rules: int = 0
    first_event: float | None = None
    last_event: float | None = None
    elapsed: float = 0.0
    series: dict[str, Series] = field(default_factory=dict)
    ledger: list[AffectedAccount | TripSummary] = field(default_factory=list)
    """With ``ledger=True``: the affected-accounts ledger's records, in order."""

    @property
    def transitions(self) -> list[Record]:
        """Breaker transitions, in order."""
        return [r for r in self.records if r.is_transition]

    @property
    def alerts(self) -> list[Record]:
        """Alerts, in order."""
        return [r for r in self.records if not r.is_transition]


class Backtest:
    """One replay: owns the engine, the aggregator and the output sinks."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        transitions: IO[bytes] | None = None,
        scores: IO[str] | None = None,
        rejects: IO[bytes] | None = None,
        keep_series: bool = False,
        strict: bool = False,
        ledger: bool = False,
    ) -> None:
        self.config = config or EngineConfig()
        self.result = BacktestResult()
        self._transitions = transitions
        self._scores = csv.writer(scores) if scores is not None else None
        if self._scores is not None:
            self._scores.writerow(["timestamp", "rule_id", "count", "expected", "score"])
        self._rejects = rejects
        self._keep_series = keep_series
        self._strict = strict
        self.engine = Engine(self.config, on_bucket=self._on_bucket)
        self.agg = Aggregator(self.config, hits=ledger)
        self.ledger = Ledger(self.config) if ledger else None

    def _on_bucket(self, b: BucketScore) -> None:
        if self._scores is not None:
            self._scores.writerow(
                [
                    to_rfc3339(b.start),
                    b.rule_id,
                    f"{b.observed:g}",
                    f"{b.expected:.4f}",
                    f"{b.score:.4f}",
                ]
            )
        if self._keep_series:
            s = self.result.series.get(b.rule_id)
            if s is None:
                s = self.result.series[b.rule_id] = Series()
            s.start.append(b.start)
            s.count.append(b.observed)
            s.expected.append(b.expected)
            s.dispersion.append(b.dispersion)
            s.score.append(b.score)

    def _reject(self, line_no: int, reason: str, message: str, raw: bytes) -> None:
        res = self.result
        res.rejected[reason] += 1
        if len(res.first_errors) < MAX_REPORTED_ERRORS:
            res.first_errors.append((line_no, reason, message))
        if self._rejects is not None:
            self._rejects.write(
                orjson.dumps(
                    {
                        "line": line_no,
                        "reason": reason,
                        "error": message,
                        "raw": raw[:2000].decode("utf-8", "replace"),
                    }
                )
                + b"\n"
            )
        if self._strict:
            raise DetectorError(f"line {line_no}: {reason}: {message}")

    def _flush(self) -> None:
        engine, ledger = self.engine, self.ledger
        for agg in self.agg.drain():
            if ledger is not None and agg.hits:
                self.result.ledger += ledger.add_tick(agg, 0)
                agg.hits = []
            engine.add(agg)
        self._emit(engine.advance(self.agg.watermark))
        if ledger is not None:
            ledger.prune(self.agg.watermark)

    def _emit(self, records: list[Record]) -> None:
        self.result.records += records
        if self.ledger is not None:
            self.result.ledger += self.ledger.on_records(records)
        if self._transitions is not None:
            for r in records:
                self._transitions.write(r.to_json() + b"\n")

    def events(self, lines: Iterator[bytes], progress: Progress | None = None) -> BacktestResult:
        """Replay JSON Lines of enforcement actions."""
        with _no_cyclic_gc():
            return self._events(lines, progress)

    def _events(self, lines: Iterator[bytes], progress: Progress | None) -> BacktestResult:
        started = time.perf_counter()
        res = self.result
        agg = self.agg
        line_no = consumed = 0
        while chunk := list(islice(lines, FLUSH_EVERY)):
            consumed += sum(map(len, chunk))
            # Hot path: the aggregator takes plainly valid lines in bulk; it stops at any
            # other, which the full validator judges (its error names the field).
            i, n = 0, len(chunk)
            while i < n:
                i = agg.add_raw(chunk, i, n)
                if i < n:
                    self._add_one(line_no + i + 1, chunk[i])
                    i += 1
            line_no += n
            self._flush()
            if progress is not None:
                progress(consumed)
        res.lines = line_no
        if agg.accepted:
            res.first_event, res.last_event = agg.first, agg.watermark
        return self._finish(started)

    def _add_one(self, line_no: int, raw: bytes) -> None:
        """The slow path for one line the fast path declined."""
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            return
        try:
            ev = parse_event(line)
        except ContractError as exc:
            self._reject(line_no, exc.reason, str(exc), line)
            return
        reason = self.agg.add(ev)
        if reason is not None:
            t = to_rfc3339(ev.occurred_at)
            self._reject(line_no, reason, f"event time {t} is {reason}", raw)

    def counts(self, rows: Iterator[str], progress: Progress | None = None) -> BacktestResult:
        """Replay CSV rows ``timestamp,rule_id,count`` (with that header)."""
        started = time.perf_counter()
        res = self.result
        reader = csv.reader(rows)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:3]] != [
            "timestamp",
            "rule_id",
            "count",
        ]:
            raise DetectorError(
                f"counts CSV must start with the header 'timestamp,rule_id,count', got {header!r}"
            )
        consumed = 0
        first = last = None
        line_no = 1
        for line_no, row in enumerate(reader, 2):
            consumed += sum(len(c) for c in row) + len(row)
            raw = ",".join(row).encode()
            try:
                t, rule_id, count = _count_row(row)
            except ContractError as exc:
                self._reject(line_no, exc.reason, str(exc), raw)
                continue
            reason = self.agg.add_count(rule_id, t, count)
            if reason is not None:
                self._reject(line_no, reason, f"timestamp is {reason}", raw)
                continue
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
            if line_no % FLUSH_EVERY == 0:
                self._flush()
                if progress is not None:
                    progress(consumed)
        res.lines = line_no - 1
        res.first_event, res.last_event = first, last
        return self._finish(started)

    def _finish(self, started: float) -> BacktestResult:
        self._flush()
        self._emit(self.engine.finish())
        res = self.result
        if self.ledger is not None and self.engine.tick is not None:
            res.ledger += self.ledger.finish(self.engine.now)
        res.accepted = self.agg.accepted
        res.rules = len(self.engine.rules)
        res.elapsed = time.perf_counter() - started
        return res


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: a replay allocates millions of short-lived
    dicts that reference counting frees, and the collector's scans of them cost
    about a fifth of the replay's time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _count_row(row: list[str]) -> tuple[float, str, float]:
    if len(row) < 3:
        raise ContractError("invalid_value", None, f"expected 3 columns, got {len(row)}")
    ts, rule_id, count = (c.strip() for c in row[:3])
    try:
        t = float(ts)
    except ValueError:
        try:
            t = from_rfc3339(ts)
        except ValueError:
            raise ContractError(
                "invalid_value", "timestamp", "expected RFC 3339 or epoch seconds", ts
            ) from None
    if not rule_id or rule_id == "*":
        raise ContractError("invalid_value", "rule_id", "expected a rule id", rule_id)
    try:
        n = float(count)
    except ValueError:
        raise ContractError("invalid_value", "count", "expected a number", count) from None
    if not n >= 0 or n == float("inf"):
        raise ContractError("invalid_value", "count", "expected a finite number >= 0", count)
    return t, rule_id, n


def open_lines(path: Path) -> tuple[IO[bytes], int]:
    """Open a (possibly gzipped) file for reading lines; returns it and its size on disk."""
    size = path.stat().st_size
    raw = path.open("rb")
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw)), size
    return raw, size


def compressed_position(fh: IO[bytes]) -> Callable[[int], int]:
    """Map "bytes consumed" to a position in the file on disk (for progress on .gz)."""
    if isinstance(fh, gzip.GzipFile):
        inner: Any = fh.fileobj
        return lambda _n: int(inner.tell())
    return lambda n: n


def text_lines(fh: IO[bytes]) -> Iterator[str]:
    """Decode a byte stream as UTF-8 text lines (for the counts CSV)."""
    return iter(io.TextIOWrapper(fh, encoding="utf-8", newline=""))
