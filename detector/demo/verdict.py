"""The demo's verdict: what the detector did against what it should have done.

:func:`judge` folds the story's facts (the traffic and its ground truth, what the
worker published, the rules the operator resumed) into a :class:`Summary` with its
checks. Pure: the caller writes the files and adds the wall-clock figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from detector.demo.outcome import (
    Outcome,
    Trip,
    check_ledger,
    merge_checks,
    narrate,
    pauses,
    wrongful_before_pause,
    wrongful_unlisted,
)
from detector.demo.report import Summary
from detector.demo.scenario import expected_pause
from detector.demo.traffic import HELD, SHADOW, Traffic
from detector.wire.affected import AffectedAccount
from detector.wire.timefmt import to_rfc3339

ALERTS_SHOWN = 5


def judge(
    traffic: Traffic, outcome: Outcome, resumed: Sequence[str], speed: float
) -> tuple[Summary, list[AffectedAccount]]:
    """The summary of a run, and the ledger's accounts of the incident's trips (in
    event-time order, for the CSV)."""
    sch, out = traffic.schedule, outcome
    want = expected_pause(traffic.kind)
    incident_rules = list(traffic.incident.rule_ids)
    s = Summary(
        incident=traffic.kind,
        seed=traffic.seed,
        speed=speed,
        expected_pause=want,
        incident_rules=incident_rules,
        true_onset=sch.onset,
        paused=out.paused_rules,
        held=traffic.fates[HELD],
        shadowed=traffic.fates[SHADOW],
    )
    trip = out.trips.get(want) if want is not None else None
    s.trip = trip
    if want is None:
        silent = [r for r in out.records if r.reason == "silent" and r.rule_id in incident_rules]
        s.checks["alerted that the rule went silent"] = bool(silent)
        s.checks["paused no rule"] = not out.paused_rules
    else:
        # A global incident may trip some of its rules on their own before the halt.
        allowed = {want} | (set(incident_rules) if want == "*" else set())
        s.checks[f"paused {want}"] = trip is not None
        s.checks["paused no other rule"] = set(out.paused_rules) <= allowed
    s.alerts = [
        narrate(r) for r in out.records if not r.is_transition and r.rule_id in incident_rules
    ][:ALERTS_SHOWN]
    accounts: list[AffectedAccount] = []
    if trip is not None:
        s.seconds_to_pause = trip.paused_at - sch.onset
        s.probes = probe_lines(out, trip.rule_id)
        accounts = _judge_ledger(s, traffic, out, trip)
    if resumed:
        applied = [r for r in resumed if out.resumed_by_operator(r)]
        verdicts = sorted({f"{a.outcome} ({a.reason})" for a in out.command_outcomes().values()})
        s.resume = (
            f"{', '.join(resumed)}: "
            + ("applied, closed again" if len(applied) == len(resumed) else "NOT applied")
            + (f"; audit: {', '.join(verdicts)}" if verdicts else "; no audit record")
        )
        s.checks["operator resume applied"] = len(applied) == len(resumed)
        again = [r for r in applied if out.state(r) != "closed"]
        if again:
            s.notes.append(f"paused again after the resume: {', '.join(again)}")
    elif want is not None:
        s.resume = "nothing was paused at the end"
    return s, accounts


def _judge_ledger(
    s: Summary, traffic: Traffic, out: Outcome, paused: Trip
) -> list[AffectedAccount]:
    """Compare the ledger of the incident's trips with the ground truth."""
    trips = out.ledger_trips(paused)
    summaries = {t.trip_id: out.trip_summary(t) for t in trips}
    accounts = sorted(
        (a for t in trips for a in out.ledger_accounts(t)),
        key=lambda a: (a.occurred_at, a.event_id),
    )
    s.trip_summary_written = all(v is not None for v in summaries.values())
    s.ledger_rows = len(accounts) if (accounts or any(summaries.values())) else None
    s.ledger = merge_checks(
        [
            check_ledger(
                traffic.decisions,
                t,
                summaries[t.trip_id],
                out.ledger_accounts(t),
                out.probes(t.rule_id),
            )
            for t in trips
        ]
    )
    s.checks["ledger matches the ground truth"] = s.ledger is not None and s.ledger.matches
    onset, rules = traffic.schedule.onset, traffic.incident.rule_ids
    s.affected_before_pause = wrongful_before_pause(
        traffic.decisions, pauses(out, paused, rules), onset
    )
    listed = s.ledger.listed if s.ledger is not None else frozenset()
    s.unlisted = wrongful_unlisted(traffic.decisions, rules, onset, listed)
    return accounts


def probe_lines(out: Outcome, rule_id: str) -> list[str]:
    """The rule's half-open probes and how each ended, one line each."""
    lines = []
    transitions = out.transitions(rule_id)
    for prev, rec in itertools.pairwise(transitions):
        if prev.to_state == "half_open":
            verdict = "passed" if rec.to_state == "closed" else f"failed ({rec.reason})"
            if rec.reason.startswith("operator"):
                verdict = f"ended by the operator ({rec.reason})"
            lines.append(f"from {to_rfc3339(prev.at)} to {to_rfc3339(rec.at)}: {verdict}")
    if transitions and transitions[-1].to_state == "half_open":
        lines.append(f"from {to_rfc3339(transitions[-1].at)}: still probing at the end")
    return lines
