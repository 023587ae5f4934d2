"""Tables for people, JSON for scripts: how the operator tooling prints."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from detector.engine.breaker import Gate
from detector.wire.affected import AffectedAccount, TripSummary
from detector.wire.audit import AuditRecord
from detector.wire.rulestate import RuleStateMessage
from detector.wire.timefmt import to_rfc3339

_PIPE_WIDTH = 200
_GATE_STYLE = {Gate.ALLOW.value: "green", Gate.SHADOW.value: "yellow", Gate.HOLD.value: "bold red"}


def console() -> Console:
    """Standard output; wide when it is not a terminal, so that piped rows stay whole."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)


def print_json(obj: Any) -> None:
    """One JSON document on standard output."""
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def ago(seconds: float) -> str:
    """``42 s ago``, ``3 min ago``, ``5.2 h ago``, ``2.0 d ago`` (``in ...`` for the future)."""
    future = seconds < 0
    s = abs(seconds)
    if s < 90:
        text = f"{s:.0f} s"
    elif s < 90 * 60:
        text = f"{s / 60:.0f} min"
    elif s < 36 * 3600:
        text = f"{s / 3600:.1f} h"
    else:
        text = f"{s / 86400:.1f} d"
    return f"in {text}" if future else f"{text} ago"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def highlights(evidence: Mapping[str, Any]) -> str:
    """The few evidence fields an operator reads first, in one line."""
    parts: list[str] = []
    obs, exp = evidence.get("observed"), evidence.get("expected")
    if isinstance(obs, int | float) and isinstance(exp, int | float):
        ratio = evidence.get("ratio")
        if not isinstance(ratio, int | float) and exp > 0:
            ratio = obs / exp
        shown = f"{_num(obs)} / {exp:.3g} expected"
        parts.append(f"{shown} ({ratio:.1f}x)" if isinstance(ratio, int | float) else shown)
    share = evidence.get("outside_share")
    if isinstance(share, int | float):
        usual = evidence.get("usual_outside_share")
        usual_text = f" (usual {usual:.0%})" if isinstance(usual, int | float) else ""
        parts.append(f"{share:.0%} outside usual population{usual_text}")
    for key, label in (
        ("test", "test"),
        ("onset", "onset"),
        ("operator", "by"),
        ("command_id", "command"),
        ("error", "error"),
    ):
        if evidence.get(key) not in (None, ""):
            parts.append(f"{label} {evidence[key]}")
    rules = evidence.get("rules")
    if isinstance(rules, list) and rules:
        shown_rules = ", ".join(map(str, rules[:5])) + (" ..." if len(rules) > 5 else "")
        parts.append(f"rules {shown_rules}")
    if evidence.get("would_pause"):
        parts.append("would pause")
    return "; ".join(parts)


def state_dict(msg: RuleStateMessage) -> dict[str, Any]:
    """A rule state as JSON (its wire form)."""
    return dict(orjson.loads(msg.to_json()))


def _gate(gate: str) -> str:
    return f"[{_GATE_STYLE.get(gate, '')}]{gate}[/]"


def print_status(
    states: Iterable[RuleStateMessage],
    now: float,
    topic: str,
    trips: Mapping[str, TripSummary] | None = None,
) -> None:
    """All rules' states, the global halt first, then held, shadowed and allowed rules."""
    order = {Gate.HOLD.value: 0, Gate.SHADOW.value: 1, Gate.ALLOW.value: 2}
    rows = sorted(states, key=lambda m: (m.rule_id != "*", order.get(m.gate, 3), m.rule_id))
    con = console()
    glob = next((m for m in rows if m.rule_id == "*"), None)
    if glob is not None and glob.gate == Gate.HOLD.value:
        con.print(
            f"[bold red]GLOBAL HALT[/] since {to_rfc3339(glob.since)} ({ago(now - glob.since)}): "
            f"every automated deactivation is held ({escape(glob.reason)})"
        )
    table = Table(title=f"Rule states ({len(rows)}) from {escape(topic)}", title_justify="left")
    for col in ("rule", "state", "gate", "since", "version", "reason", "last trip", "evidence"):
        table.add_column(col, overflow="fold")
    for m in rows:
        trip = (trips or {}).get(m.rule_id)
        table.add_row(
            escape(m.rule_id),
            m.state,
            _gate(m.gate),
            f"{to_rfc3339(m.since)} ({ago(now - m.since)})",
            str(m.version),
            escape(m.reason),
            escape(f"{trip.trip_id} ({trip.status})") if trip is not None else "",
            escape(highlights(m.evidence)),
        )
    con.print(table)
    con.print("Rules without a state are allowed.")


def print_rule(
    msg: RuleStateMessage,
    decision: str,
    glob: RuleStateMessage | None,
    now: float,
    trip: TripSummary | None = None,
    affected: int = 0,
) -> None:
    """One rule's state in full."""
    con = console()
    con.print(
        f"[bold]{escape(msg.rule_id)}[/]: {msg.state} (gate {_gate(msg.gate)}), "
        f"version {msg.version}"
    )
    con.print(f"  since   {to_rfc3339(msg.since)} ({ago(now - msg.since)})")
    con.print(f"  reason  {msg.reason}", markup=False)
    if decision != msg.gate and glob is not None:
        con.print(
            f"  decision {_gate(decision)}: the global rule '*' is {glob.state} "
            f"since {to_rfc3339(glob.since)}"
        )
    if trip is not None:
        con.print(
            f"  trip    {trip.trip_id} ({trip.status}): {affected} deactivations in the "
            f"ledger; 'detector affected {trip.trip_id}' lists them",
            markup=False,
        )
    if msg.evidence:
        con.print(f"  summary {highlights(msg.evidence)}", markup=False)
        con.print("  evidence")
        for key in sorted(msg.evidence):
            con.print(f"    {key}: {orjson.dumps(msg.evidence[key]).decode()}", markup=False)


def _audit_detail(rec: AuditRecord) -> str:
    d = rec.detail
    parts = []
    if rec.kind == "command":
        command = d.get("command")
        kind = command.get("kind") if isinstance(command, dict) else None
        if kind:
            assert isinstance(command, dict)
            grace = command.get("grace_seconds")
            cid = command.get("command_id")
            parts.append(f"{kind}" + (f" (grace {_num(grace)} s)" if grace else ""))
            if cid:
                parts.append(f"command {cid}")
        if d.get("error"):
            parts.append(f"error {d['error']}")
    else:
        # A transition's detail is its evidence: the trigger and the state version it led to.
        if d.get("trigger"):
            version = d.get("state_version")
            text = f"{d['trigger']}" + (f" -> v{version}" if version is not None else "")
            if d["trigger"] == "trip" and version is not None:
                text += f" (trip {rec.rule_id}#{version})"
            parts.append(text)
        text = highlights(d)
        if text:
            parts.append(text)
    return "; ".join(parts)


def print_history(rule_id: str, records: list[AuditRecord], total: int, topic: str) -> None:
    """A rule's audit trail, in the order it was written."""
    shown = f"last {len(records)} of {total}" if len(records) < total else str(total)
    table = Table(
        title=f"History of {escape(rule_id)} ({shown}) from {escape(topic)}", title_justify="left"
    )
    for col in ("at", "kind", "actor", "outcome", "reason", "detail"):
        table.add_column(col, overflow="fold")
    for rec in records:
        outcome = f"[bold red]{rec.outcome}[/]" if rec.outcome == "rejected" else rec.outcome
        table.add_row(
            to_rfc3339(rec.at),
            rec.kind,
            escape(rec.actor),
            outcome,
            escape(rec.reason),
            escape(_audit_detail(rec)),
        )
    console().print(table)


def trip_line(trip_id: str, summary: TripSummary | None) -> str:
    """One line about a trip, from its summary if the ledger has one."""
    if summary is None:
        return f"trip {trip_id} (no summary record)"
    ended = f", ended {to_rfc3339(summary.ended_at)}" if summary.ended_at is not None else ""
    return (
        f"trip {trip_id}: rule {summary.rule_id}, {summary.reason}, onset "
        f"{to_rfc3339(summary.onset)}, paused {to_rfc3339(summary.paused_at)}, "
        f"status {summary.status}{ended}"
    )


def print_accounts(
    trip_id: str, summary: TripSummary | None, accounts: list[AffectedAccount]
) -> None:
    """The ledger's accounts of a trip."""
    con = console()
    con.print(trip_line(trip_id, summary), markup=False)
    table = Table(title=f"Affected accounts ({len(accounts)})", title_justify="left")
    for col in ("account", "event", "action", "occurred at", "phase"):
        table.add_column(col, overflow="fold")
    for a in accounts:
        table.add_row(
            *map(escape, (a.account_id, a.event_id, a.action, to_rfc3339(a.occurred_at), a.phase))
        )
    con.print(table)
