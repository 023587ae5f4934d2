"""What the operator tooling shows, computed from the control topics' messages (pure).

Each function takes messages in topic order (by partition, then offset) and
returns plain values; reading the topics is :mod:`detector.control.topicio`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from detector.errors import ContractError
from detector.wire.affected import AffectedAccount, TripSummary, parse_ledger_record
from detector.wire.audit import AuditRecord
from detector.wire.reinstate import ReinstatementRequest

KeyValue = tuple[bytes | None, bytes | None]


# --- audit ------------------------------------------------------------------------
def parse_audit(values: Iterable[bytes | None]) -> tuple[list[AuditRecord], int]:
    """The audit records among ``values``, and how many were not audit records."""
    out: list[AuditRecord] = []
    bad = 0
    for value in values:
        if value is None:
            bad += 1
            continue
        try:
            out.append(AuditRecord.from_json(value))
        except ContractError:
            bad += 1
    return out, bad


def rule_history(records: Iterable[AuditRecord], rule_id: str) -> list[AuditRecord]:
    """``rule_id``'s audit records in topic order, each ``audit_id`` once (the first written).

    Topic order is the order the detector wrote them (the audit topic has one
    partition). It is not sorted by ``at``: transitions and alerts carry event time,
    commands the wall-clock time they were received, and the two need not agree.
    """
    seen: set[str] = set()
    out: list[AuditRecord] = []
    for rec in records:
        if rec.rule_id != rule_id or rec.audit_id in seen:
            continue
        seen.add(rec.audit_id)
        out.append(rec)
    return out


def command_outcome(records: Iterable[AuditRecord], command_id: str) -> AuditRecord | None:
    """The audit record of the command ``command_id`` (its ``detail`` is the command)."""
    for rec in records:
        if rec.kind != "command":
            continue
        command = rec.detail.get("command")
        if isinstance(command, dict) and command.get("command_id") == command_id:
            return rec
    return None


# --- the affected-accounts ledger --------------------------------------------------
@dataclass
class Ledger:
    """The ledger topic folded: the last record of every key, by trip."""

    trips: dict[str, TripSummary] = field(default_factory=dict)
    accounts: dict[str, dict[str, AffectedAccount]] = field(default_factory=dict)
    """Trip id -> event id -> account."""
    skipped: int = 0
    """Messages that were not ledger records."""

    @classmethod
    def fold(cls, messages: Iterable[KeyValue]) -> Ledger:
        """Keep the last message of every key (a tombstone deletes it), then parse."""
        last: dict[bytes, bytes] = {}
        ledger = cls()
        for key, value in messages:
            if key is None:
                # Not how the detector writes, but the record names its own key.
                if value is None:
                    ledger.skipped += 1
                    continue
                try:
                    key = parse_ledger_record(value).key
                except ContractError:
                    ledger.skipped += 1
                    continue
            if value is None:
                last.pop(key, None)
            else:
                last[key] = value
        for value in last.values():
            try:
                rec = parse_ledger_record(value)
            except ContractError:
                ledger.skipped += 1
                continue
            if isinstance(rec, TripSummary):
                ledger.trips[rec.trip_id] = rec
            else:
                ledger.accounts.setdefault(rec.trip_id, {})[rec.event_id] = rec
        return ledger

    def knows(self, trip_id: str) -> bool:
        """True when the ledger has a summary or accounts for the trip."""
        return trip_id in self.trips or trip_id in self.accounts

    def trip(self, trip_id: str) -> TripSummary | None:
        """The trip's summary, if written."""
        return self.trips.get(trip_id)

    def accounts_of(self, trip_id: str) -> list[AffectedAccount]:
        """The trip's accounts, oldest deactivation first."""
        found = self.accounts.get(trip_id, {}).values()
        return sorted(found, key=lambda a: (a.occurred_at, a.event_id))

    def latest_trips(self) -> dict[str, TripSummary]:
        """Every rule's latest trip (by pause time), from the summaries."""
        out: dict[str, TripSummary] = {}
        for summary in self.trips.values():
            held = out.get(summary.rule_id)
            if held is None or summary.paused_at > held.paused_at:
                out[summary.rule_id] = summary
        return out

    def similar(self, trip_id: str, limit: int = 5) -> list[str]:
        """Known trip ids to suggest for an unknown one: the same rule's first, newest first."""
        rule = trip_id.rpartition("#")[0] or trip_id
        ids = set(self.trips) | set(self.accounts)

        def newest(t: str) -> float:
            summary = self.trips.get(t)
            return summary.paused_at if summary is not None else 0.0

        same = sorted((t for t in ids if t.rpartition("#")[0] == rule), key=newest, reverse=True)
        others = sorted((t for t in ids if t not in same), key=newest, reverse=True)
        return [*same, *others][:limit]


# --- reinstatements ----------------------------------------------------------------
@dataclass(frozen=True)
class ReinstatementPlan:
    """What ``detector ctl reinstate`` sends for one trip."""

    trip_id: str
    entries: int
    """Ledger entries (deactivations) of the trip."""
    accounts: int
    """Distinct accounts among them."""
    already_requested: int
    """Entries whose deactivation is already requested in the reinstatements topic."""
    to_send: list[ReinstatementRequest]


def requested_events(values: Iterable[bytes | None]) -> tuple[set[str], int]:
    """Event ids whose reinstatement is already requested in the reinstatements topic,
    under any trip (a deactivation a global halt and its own rule's trip both list is
    reinstated once), and the number of unreadable messages."""
    events: set[str] = set()
    bad = 0
    for value in values:
        try:
            req = ReinstatementRequest.from_json(value)
        except ContractError:
            bad += 1
            continue
        events.add(req.reverses_event_id)
    return events, bad


def plan_reinstatements(
    trip_id: str,
    accounts: list[AffectedAccount],
    already: set[str],
    operator: str,
    reason: str,
    requested_at: float,
) -> ReinstatementPlan:
    """One request per ledger entry of the trip, minus the deactivations (event ids)
    already requested."""
    to_send = []
    done = 0
    for account in accounts:
        if account.event_id in already:
            done += 1
        else:
            to_send.append(
                ReinstatementRequest.for_account(account, operator, reason, requested_at)
            )
    return ReinstatementPlan(
        trip_id, len(accounts), len({a.account_id for a in accounts}), done, to_send
    )
