"""What the detector published during the demo, folded into the facts of the story.

The demo follows four of the worker's output topics: decisions (``detector.alerts``),
rule states (``detector.rule-state``), the audit log (``detector.audit``) and the
affected-accounts ledger (``detector.affected``). :class:`Outcome` keeps them and
answers the questions the story asks: was the rule paused, when, on what
evidence; did the probe run; did the operator's resume apply; what does the
ledger list. :func:`check_ledger` compares the ledger with the ground truth of
the traffic. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from detector.demo.traffic import APPLIED, Decision
from detector.wire.affected import AffectedAccount, TripSummary, trip_id
from detector.wire.audit import AuditRecord
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.records import Record
from detector.wire.rulestate import RuleStateMessage
from detector.wire.timefmt import from_rfc3339, to_rfc3339

PAUSED_STATES = ("open", "forced_open", "half_open")
"""States in which a rule has not been given back to its owners."""


@dataclass(frozen=True)
class Trip:
    """A rule paused by the detector: the first transition to ``open`` from ``closed``."""

    rule_id: str
    version: int
    paused_at: float
    onset: float
    reason: str
    evidence: dict[str, Any]

    @property
    def trip_id(self) -> str:
        """``RULE_ID#VERSION``, as on the ledger topic."""
        return trip_id(self.rule_id, self.version)

    @classmethod
    def of(cls, rec: Record) -> Trip:
        """The trip a transition record starts."""
        ev = rec.evidence
        try:
            onset = min(from_rfc3339(str(ev["onset"])), rec.at)
        except (KeyError, ValueError):
            onset = rec.at
        return cls(rec.rule_id, int(ev.get("state_version", 0)), rec.at, onset, rec.reason, ev)


@dataclass
class Outcome:
    """Everything the worker published that the demo has read so far."""

    records: list[Record] = field(default_factory=list)
    states: dict[str, RuleStateMessage] = field(default_factory=dict)
    audit: list[AuditRecord] = field(default_factory=list)
    ledger: dict[bytes, AffectedAccount | TripSummary] = field(default_factory=dict)
    trips: dict[str, Trip] = field(default_factory=dict)
    """The first trip of each rule (the demo injects one incident)."""

    def add_record(self, rec: Record) -> None:
        """A decision from the alerts topic."""
        self.records.append(rec)
        if (
            rec.is_transition
            and rec.to_state == "open"
            and rec.from_state == "closed"
            and rec.rule_id not in self.trips
        ):
            self.trips[rec.rule_id] = Trip.of(rec)

    def add_state(self, msg: RuleStateMessage) -> bool:
        """A rule-state message; ``False`` when it is older than the one held."""
        held = self.states.get(msg.rule_id)
        if held is not None and held.version >= msg.version:
            return False
        self.states[msg.rule_id] = msg
        return True

    def add_ledger(self, key: bytes, rec: AffectedAccount | TripSummary) -> None:
        """A ledger record (the last one per key wins, as on a compacted topic)."""
        self.ledger[key] = rec

    # ----- questions -----
    def state(self, rule_id: str) -> str:
        """The rule's latest published state (``closed`` if none was published)."""
        msg = self.states.get(rule_id)
        return msg.state if msg is not None else "closed"

    @property
    def paused_rules(self) -> list[str]:
        """Rules the detector paused at least once, in the order it did."""
        return list(self.trips)

    def still_paused(self) -> list[str]:
        """Rules whose latest state holds or shadows their decisions."""
        return sorted(r for r, msg in self.states.items() if msg.state in PAUSED_STATES)

    def transitions(self, rule_id: str) -> list[Record]:
        """The rule's transitions, in order."""
        return [r for r in self.records if r.is_transition and r.rule_id == rule_id]

    def probes(self, rule_id: str) -> list[tuple[float, float]]:
        """Half-open windows ``(start, end)`` of the rule (``end`` is ``inf`` while probing)."""
        out: list[tuple[float, float]] = []
        start: float | None = None
        for rec in self.transitions(rule_id):
            if rec.to_state == "half_open":
                start = rec.at
            elif start is not None:
                out.append((start, rec.at))
                start = None
        if start is not None:
            out.append((start, math.inf))
        return out

    def trip_summary(self, trip: Trip) -> TripSummary | None:
        """The ledger's summary record of ``trip``, if the worker wrote one."""
        rec = self.ledger.get(trip.trip_id.encode())
        return rec if isinstance(rec, TripSummary) else None

    def ledger_accounts(self, trip: Trip) -> list[AffectedAccount]:
        """The ledger's accounts of ``trip``, in event-time order."""
        found = [
            r
            for r in self.ledger.values()
            if isinstance(r, AffectedAccount) and r.trip_id == trip.trip_id
        ]
        return sorted(found, key=lambda r: (r.occurred_at, r.event_id))

    def resumed_by_operator(self, rule_id: str) -> bool:
        """True when an operator's command closed the rule (whatever it did next)."""
        return any(
            r.to_state == "closed" and r.reason.startswith("operator")
            for r in self.transitions(rule_id)
        )

    def ledger_trips(self, paused: Trip) -> list[Trip]:
        """The trips whose ledgers list the accounts of an incident that ended in
        ``paused``: that trip itself, and for a global halt (rule ``*``, whose trip lists
        every rule's deactivations) the trips of the individual rules too."""
        if paused.rule_id != GLOBAL_RULE_ID:
            return [paused]
        return [paused, *(t for r, t in self.trips.items() if r != GLOBAL_RULE_ID)]

    def command_outcomes(self) -> dict[str, AuditRecord]:
        """Audit records of operator commands, by command id (the first one kept)."""
        out: dict[str, AuditRecord] = {}
        for rec in self.audit:
            if rec.kind == "command":
                command = rec.detail.get("command")
                command_id = (
                    command.get("command_id") if isinstance(command, dict) else None
                ) or rec.detail.get("command_id")
                if isinstance(command_id, str):
                    out.setdefault(command_id, rec)
        return out


@dataclass(frozen=True)
class LedgerCheck:
    """The ledger of an incident's trips against the traffic's ground truth."""

    expected: frozenset[str]
    """Event ids the ledger should list: each trip's rule's applied deactivations
    from the trip's onset to its pause, during its half-open probes, and while it was
    paused (applied before the enforcement service heard of the pause)."""
    listed: frozenset[str]
    wrongful_in_window: int
    """Of ``expected``, those the incident caused (the simulator's ground truth)."""

    @property
    def missing(self) -> frozenset[str]:
        """Expected but not listed."""
        return self.expected - self.listed

    @property
    def extra(self) -> frozenset[str]:
        """Listed but not expected."""
        return self.listed - self.expected

    @property
    def matches(self) -> bool:
        """True when the ledger lists exactly the expected deactivations."""
        return bool(self.listed) and self.listed == self.expected


def expected_ledger(
    decisions: Iterable[Decision],
    rule_id: str,
    onset: float,
    paused_at: float,
    probes: Iterable[tuple[float, float]] = (),
    ended_at: float | None = None,
) -> list[Decision]:
    """What the ledger contract says a trip lists (``detector.wire.affected``): the
    rule's (for the global rule ``*``, every rule's) applied deactivations from
    ``onset`` to the end of the trip (``ended_at``), whether before the pause, in a
    probe or while paused; for a trip not ended, up to the end of its last probe (the
    stretch after it is listed when it ends)."""
    end = ended_at if ended_at is not None else max([paused_at, *(b for _, b in probes)])
    windows = [(onset, end)]
    return [
        d
        for d in decisions
        if (rule_id == GLOBAL_RULE_ID or d.rule_id == rule_id)
        and d.deactivation
        and d.fate == APPLIED
        and any(a <= d.occurred_at < b for a, b in windows)
    ]


def check_ledger(
    decisions: list[Decision],
    trip: Trip,
    summary: TripSummary | None,
    listed: Iterable[AffectedAccount],
    probes: Iterable[tuple[float, float]],
) -> LedgerCheck:
    """Compare a trip's ledger with the traffic. The window comes from the ledger's
    trip summary when the worker wrote one, else from the trip's transition."""
    onset = summary.onset if summary is not None else trip.onset
    paused_at = summary.paused_at if summary is not None else trip.paused_at
    ended_at = summary.ended_at if summary is not None else None
    want = expected_ledger(decisions, trip.rule_id, onset, paused_at, probes, ended_at)
    return LedgerCheck(
        expected=frozenset(d.event_id for d in want),
        listed=frozenset(a.event_id for a in listed),
        wrongful_in_window=sum(d.wrongful for d in want),
    )


def merge_checks(checks: Sequence[LedgerCheck]) -> LedgerCheck | None:
    """Several trips' checks as one (a global incident pauses several rules)."""
    if not checks:
        return None
    return LedgerCheck(
        expected=frozenset().union(*(c.expected for c in checks)),
        listed=frozenset().union(*(c.listed for c in checks)),
        wrongful_in_window=sum(c.wrongful_in_window for c in checks),
    )


def pauses(outcome: Outcome, paused: Trip, rule_ids: Iterable[str]) -> dict[str, float]:
    """When each incident rule stopped acting: its own trip, or a global halt if earlier."""
    halt = paused.paused_at if paused.rule_id == GLOBAL_RULE_ID else math.inf
    out = {}
    for rule_id in rule_ids:
        own = outcome.trips.get(rule_id)
        out[rule_id] = min(halt, own.paused_at if own is not None else math.inf)
    return out


def wrongful_before_pause(
    decisions: Iterable[Decision], paused_at: Mapping[str, float], start: float
) -> int:
    """The accounts affected before the pause: wrongful deactivations applied from
    ``start`` (the true onset) to each rule's pause."""
    return sum(
        d.wrongful
        and d.deactivation
        and d.fate == APPLIED
        and start <= d.occurred_at < paused_at.get(d.rule_id, -math.inf)
        for d in decisions
    )


def wrongful_unlisted(
    decisions: Iterable[Decision], rule_ids: Collection[str], start: float, listed: Set[str]
) -> int:
    """Wrongful deactivations by ``rule_ids`` applied from ``start`` that the ledger does
    not list (applied after a pause decision but before the gate reached the
    enforcement service, or before the estimated onset of the incident)."""
    return sum(
        d.wrongful
        and d.deactivation
        and d.fate == APPLIED
        and d.rule_id in rule_ids
        and d.occurred_at >= start
        and d.event_id not in listed
        for d in decisions
    )


def narrate(rec: Record) -> str:
    """One line of the event log for a decision."""
    ev = rec.evidence
    at = to_rfc3339(rec.at)
    if rec.is_transition:
        head = f"{at}  {rec.rule_id}: {rec.from_state} -> {rec.to_state} ({rec.reason})"
    else:
        head = f"{at}  {rec.rule_id}: alert {rec.reason} (state {rec.to_state})"
    detail = []
    obs, exp = ev.get("observed"), ev.get("expected")
    if isinstance(obs, int | float) and isinstance(exp, int | float):
        window = ev.get("window_seconds")
        span = f" in {window:g} s" if isinstance(window, int | float) else ""
        detail.append(f"observed {obs:g} vs expected {exp:.3g}{span}")
    share, usual = ev.get("outside_share"), ev.get("usual_outside_share")
    if isinstance(share, int | float) and isinstance(usual, int | float):
        detail.append(f"{share:.0%} outside its usual targets (usually {usual:.0%})")
    if "test" in ev:
        detail.append(f"test {ev['test']}")
    if "cooldown_seconds" in ev:
        detail.append(f"after a {ev['cooldown_seconds']:g} s cool-down; running in shadow")
    return head + (": " + ", ".join(detail) if detail else "")
