"""What the demo leaves behind: the ledger CSV, the PNG timeline, the traffic and its
ground truth, and the summary (printed, and as JSON for scripts and tests)."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.config import EngineConfig
from detector.demo.outcome import LedgerCheck, Trip
from detector.demo.traffic import Decision, wire_lines
from detector.wire.affected import AffectedAccount
from detector.wire.records import Record
from detector.wire.timefmt import to_rfc3339

LEDGER_COLUMNS = (
    "trip_id",
    "rule_id",
    "account_id",
    "event_id",
    "action",
    "occurred_at",
    "phase",
)
PLOT_BEFORE = 20 * 60.0
PLOT_AFTER = 10 * 60.0


def write_ledger_csv(path: Path, accounts: Iterable[AffectedAccount]) -> int:
    """The accounts to reinstate, one row each (the ledger as the worker published it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(LEDGER_COLUMNS)
        for a in accounts:
            out.writerow(
                [
                    a.trip_id,
                    a.rule_id,
                    a.account_id,
                    a.event_id,
                    a.action,
                    to_rfc3339(a.occurred_at),
                    a.phase,
                ]
            )
            n += 1
    return n


def write_lines(path: Path, lines: Iterable[bytes]) -> None:
    """JSON lines, gzipped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=3) as fh:
        for line in lines:
            fh.write(line + b"\n")


def write_decisions(path: Path, decisions: Sequence[Decision]) -> None:
    """Every simulated decision with its ground truth (``wrongful``) and its fate."""
    write_lines(path, wire_lines(decisions))


def write_timeline(
    path: Path, rule_id: str, events: Iterable[bytes], records: list[Record], config: EngineConfig
) -> Path | None:
    """A PNG of the rule's deactivations against its expected band, with the worker's
    transitions marked.

    The per-minute series comes from replaying the events the worker received through
    the same engine (it decides the same way; the daemon's tests check that); the
    marks are the worker's own published decisions. ``None`` when the replay has no
    series for the rule.
    """
    from detector.backtest import Backtest
    from detector.plot import plot_rule

    result = Backtest(config, keep_series=True).events(iter(events))
    series = result.series.get(rule_id)
    if series is None or not len(series.start):
        return None
    return plot_rule(rule_id, series, records, path, before=PLOT_BEFORE, after=PLOT_AFTER)


@dataclass
class Summary:
    """The facts the demo reports at the end."""

    incident: str
    seed: int
    speed: float
    expected_pause: str | None
    incident_rules: list[str]
    true_onset: float
    paused: list[str] = field(default_factory=list)
    trip: Trip | None = None
    seconds_to_pause: float | None = None
    """Event time from the true onset to the pause decision."""
    wall_seconds_to_pause: float | None = None
    """Wall-clock time from sending the first incident events to reading the pause."""
    probes: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    resume: str = "not needed"
    ledger: LedgerCheck | None = None
    ledger_rows: int | None = None
    trip_summary_written: bool = False
    files: dict[str, str] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    wall_seconds: float = 0.0
    held: int = 0
    shadowed: int = 0
    notes: list[str] = field(default_factory=list)
    affected_before_pause: int | None = None
    """Wrongful deactivations applied from the true onset to the pause (ground truth)."""
    unlisted: int = 0
    """Wrongful deactivations applied that the ledger does not list."""

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``summary.json``)."""
        trip = self.trip
        ledger = self.ledger
        return {
            "incident": self.incident,
            "seed": self.seed,
            "speed": self.speed,
            "expected_pause": self.expected_pause,
            "incident_rules": self.incident_rules,
            "true_onset": to_rfc3339(self.true_onset),
            "paused_rules": self.paused,
            "trip": None
            if trip is None
            else {
                "trip_id": trip.trip_id,
                "rule_id": trip.rule_id,
                "onset": to_rfc3339(trip.onset),
                "paused_at": to_rfc3339(trip.paused_at),
                "reason": trip.reason,
                "evidence": trip.evidence,
            },
            "seconds_to_pause": self.seconds_to_pause,
            "wall_seconds_to_pause": self.wall_seconds_to_pause,
            "probes": self.probes,
            "alerts": self.alerts,
            "resume": self.resume,
            "ledger": None
            if ledger is None
            else {
                "rows": self.ledger_rows,
                "trip_summary_written": self.trip_summary_written,
                "expected": len(ledger.expected),
                "listed": len(ledger.listed),
                "missing": len(ledger.missing),
                "extra": len(ledger.extra),
                "matches": ledger.matches,
                "wrongful_in_window": ledger.wrongful_in_window,
                "wrongful_not_listed": self.unlisted,
            },
            "accounts_affected_before_pause": self.affected_before_pause,
            "decisions_held": self.held,
            "decisions_shadowed": self.shadowed,
            "files": self.files,
            "checks": self.checks,
            "ok": self.ok,
            "wall_seconds": round(self.wall_seconds, 1),
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        """The summary as text lines."""
        out = [
            f"Summary of the '{self.incident}' incident (seed {self.seed}, "
            f"{self.speed:g}x event time, {self.wall_seconds:.0f} s wall clock)"
        ]
        trip = self.trip
        if trip is not None:
            out.append(
                f"  paused {trip.rule_id} at {to_rfc3339(trip.paused_at)} ({trip.reason}): "
                f"{self.seconds_to_pause:.0f} s of event time after the true onset"
                + (
                    f", {self.wall_seconds_to_pause:.1f} s of wall clock after the first "
                    "incident events were sent"
                    if self.wall_seconds_to_pause is not None
                    else ""
                )
            )
        elif self.expected_pause is None:
            out.append("  no rule paused: this incident calls for an alert, not a pause")
        else:
            out.append(f"  {self.expected_pause} was NOT paused")
        others = [r for r in self.paused if trip is None or r != trip.rule_id]
        if others:
            out.append(f"  also paused: {', '.join(others)}")
        for line in self.probes:
            out.append(f"  probe: {line}")
        for line in self.alerts:
            out.append(f"  alert: {line}")
        out.append(f"  operator resume: {self.resume}")
        ledger = self.ledger
        if ledger is not None:
            out.append(
                f"  accounts affected before the pause: {self.affected_before_pause} "
                "(wrongful deactivations from the true onset, by the simulator's ground truth)"
            )
            if self.ledger_rows is None:
                out.append("  ledger: the worker published no ledger for this trip")
            else:
                out.append(
                    f"  ledger: {len(ledger.listed)} accounts listed, {len(ledger.expected)} "
                    f"expected from the traffic ({ledger.wrongful_in_window} of them wrongful); "
                    + (
                        "matches"
                        if ledger.matches
                        else f"{len(ledger.missing)} missing, {len(ledger.extra)} extra"
                    )
                )
            if self.unlisted:
                out.append(
                    f"  not in the ledger: {self.unlisted} wrongful deactivations applied "
                    "after the pause's event time, before the gate reached the enforcement "
                    "service (the detector decides once the watermark, with its allowed "
                    f"lateness, has passed; at {self.speed:g}x each wall-clock second of "
                    f"delivery is {self.speed:g} s of event time), or before the estimated "
                    "onset"
                )
        out.append(
            f"  the enforcement service held {self.held:,} decisions and ran "
            f"{self.shadowed:,} in shadow"
        )
        for label, path in self.files.items():
            out.append(f"  {label}: {path}")
        for note in self.notes:
            out.append(f"  note: {note}")
        failed = [name for name, ok in self.checks.items() if not ok]
        out.append(
            "  checks: all passed" if not failed else f"  checks FAILED: {', '.join(failed)}"
        )
        return out
