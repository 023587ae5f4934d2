"""What ``detector ctl`` does once its arguments are checked: one coroutine per action.

Each reads or writes the detector's topics through :mod:`detector.control.topicio`,
prints for people (or JSON with ``--json``) and returns the exit code; a failure is a
:class:`~detector.control.errors.ControlError`, which ``ctl.guarded`` reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

import orjson

from detector.control import render, topicio
from detector.control.errors import (
    BrokerUnreachableError,
    CommandRejectedError,
    NoAnswerError,
    NotFoundError,
    TopicMissingError,
)
from detector.control.states import RuleStates
from detector.control.views import (
    Ledger,
    command_outcome,
    parse_audit,
    plan_reinstatements,
    requested_events,
    rule_history,
)
from detector.errors import ContractError
from detector.stream.settings import Settings
from detector.wire.audit import AuditRecord
from detector.wire.commands import Command
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.timefmt import to_rfc3339


# --- write commands ---------------------------------------------------------------
async def send_command(args: argparse.Namespace, settings: Settings, command: Command) -> int:
    """Send one signed command; with ``--wait``, report what the detector made of it."""
    items = [(command.rule_id.encode(), command.to_json())]

    async def send() -> topicio.Sent:
        [sent] = await topicio.send_all(
            settings, settings.topic_commands, "DETECTOR_TOPIC_COMMANDS", items, args.timeout
        )
        return sent

    outcome: AuditRecord | None = None
    if args.wait > 0:
        # Following the audit topic from before the send: the answer cannot be missed.
        async with topicio.follow(
            settings, settings.topic_audit, "DETECTOR_TOPIC_AUDIT", args.timeout
        ) as audit:
            sent = await send()

            def answers(msg: topicio.Message) -> bool:
                records, _ = parse_audit([msg.value])
                return command_outcome(records, command.command_id) is not None

            found = await audit.first(answers, args.wait)
            if found is not None:
                outcome = AuditRecord.from_json(found.value or b"")
    else:
        sent = await send()
    if args.json:
        render.print_json(
            {
                "command": command.to_dict(),
                "topic": sent.topic,
                "partition": sent.partition,
                "offset": sent.offset,
                "outcome": outcome.to_dict() if outcome is not None else None,
            }
        )
    else:
        target = "every rule" if command.rule_id == GLOBAL_RULE_ID else command.rule_id
        print(
            f"sent {command.kind} of {target} as {command.operator} "
            f"(command {command.command_id}) to {sent.topic}[{sent.partition}]@{sent.offset}"
        )
        if outcome is not None:
            print(f"the detector: {outcome.outcome} ({outcome.reason}) at {to_rfc3339(outcome.at)}")
        elif args.wait <= 0:
            print(f"see 'detector ctl history {command.rule_id}' for what the detector made of it")
    if args.wait > 0:
        if outcome is None:
            raise NoAnswerError(
                f"command {command.command_id} was sent, but the detector did not audit it "
                f"within {args.wait:g} s (is the worker running?)"
            )
        if outcome.outcome == "rejected":
            error = outcome.detail.get("error", "")
            raise CommandRejectedError(
                f"the detector rejected command {command.command_id}: {outcome.reason}"
                + (f" ({error})" if error else "")
            )
    return 0


# --- read commands ----------------------------------------------------------------
async def status(args: argparse.Namespace, settings: Settings) -> int:
    """Print every rule's state, or one rule's."""
    topic = settings.topic_rule_state
    messages = await topicio.read_all(settings, topic, "DETECTOR_TOPIC_RULE_STATE", args.timeout)
    states = RuleStates()
    skipped = 0
    for m in messages:
        try:
            states.apply(m.key, m.value)
        except ContractError:
            skipped += 1
    if skipped:
        print(f"warning: skipped {skipped} messages that are not rule states", file=sys.stderr)
    ledger = await ledger_or_empty(args, settings)
    trips = ledger.latest_trips()
    now = time.time()
    glob = states.messages.get(GLOBAL_RULE_ID)
    if args.rule is None:
        if args.json:
            rules = sorted(states.messages.values(), key=lambda m: m.rule_id)
            render.print_json(
                {
                    "global": render.state_dict(glob) if glob is not None else None,
                    "rules": [render.state_dict(m) for m in rules],
                    "trips": {r: t.to_dict() for r, t in sorted(trips.items())},
                    "skipped": skipped,
                }
            )
        else:
            render.print_status(states.messages.values(), now, topic, trips)
        return 0
    msg = states.messages.get(args.rule)
    if msg is None:
        raise NotFoundError(
            f"no state for rule {args.rule!r} in {topic} ({len(states)} rules have one): "
            "the detector never changed its state, so its decisions are allowed"
            + (f" (but the global halt is {glob.state})" if glob is not None else "")
        )
    decision = states.decide(args.rule).value
    trip = trips.get(args.rule)
    affected = len(ledger.accounts.get(trip.trip_id, {})) if trip is not None else 0
    if args.json:
        render.print_json(
            {
                "rule": render.state_dict(msg),
                "decision": decision,
                "global": render.state_dict(glob) if glob is not None else None,
                "trip": trip.to_dict() if trip is not None else None,
                "affected": affected,
            }
        )
    else:
        render.print_rule(msg, decision, glob, now, trip, affected)
    return 0


async def ledger_or_empty(args: argparse.Namespace, settings: Settings) -> Ledger:
    """The affected-accounts ledger, to name a rule's trip (empty if there is no topic)."""
    try:
        messages = await topicio.read_all(
            settings, settings.topic_affected, "DETECTOR_TOPIC_AFFECTED", args.timeout
        )
    except TopicMissingError:
        return Ledger()
    return Ledger.fold((m.key, m.value) for m in messages)


async def history(args: argparse.Namespace, settings: Settings) -> int:
    """Print a rule's audit trail."""
    topic = settings.topic_audit
    messages = await topicio.read_all(settings, topic, "DETECTOR_TOPIC_AUDIT", args.timeout)
    records, skipped = parse_audit(m.value for m in messages)
    if skipped:
        print(f"warning: skipped {skipped} messages that are not audit records", file=sys.stderr)
    found = rule_history(records, args.rule)
    if not found:
        raise NotFoundError(f"no audit records for rule {args.rule!r} in {topic}")
    shown = found[-args.limit :] if args.limit > 0 else found
    if args.json:
        render.print_json(
            {"rule_id": args.rule, "total": len(found), "records": [r.to_dict() for r in shown]}
        )
    else:
        render.print_history(args.rule, shown, len(found), topic)
    return 0


async def reinstate(args: argparse.Namespace, settings: Settings, operator: str) -> int:
    """Request the reinstatement of a trip's accounts, once each."""
    ledger_msgs = await topicio.read_all(
        settings, settings.topic_affected, "DETECTOR_TOPIC_AFFECTED", args.timeout
    )
    ledger = Ledger.fold((m.key, m.value) for m in ledger_msgs)
    trip = args.trip
    if not ledger.knows(trip):
        raise unknown_trip(trip, ledger, settings.topic_affected)
    summary = ledger.trip(trip)
    existing = await topicio.read_all(
        settings, settings.topic_reinstatements, "DETECTOR_TOPIC_REINSTATEMENTS", args.timeout
    )
    already, _ = requested_events(m.value for m in existing)
    plan = plan_reinstatements(
        trip, ledger.accounts_of(trip), already, operator, args.reason, time.time()
    )
    sent = 0
    if plan.to_send and not args.dry_run:
        items = [(req.key, req.to_json()) for req in plan.to_send]
        sent = len(
            await topicio.send_all(
                settings,
                settings.topic_reinstatements,
                "DETECTOR_TOPIC_REINSTATEMENTS",
                items,
                args.timeout,
            )
        )
    still_open = summary is not None and summary.status == "open"
    if args.json:
        render.print_json(
            {
                "trip_id": trip,
                "rule_id": summary.rule_id if summary is not None else None,
                "status": summary.status if summary is not None else None,
                "entries": plan.entries,
                "accounts": plan.accounts,
                "already_requested": plan.already_requested,
                "to_send": len(plan.to_send),
                "sent": sent,
                "dry_run": args.dry_run,
                "topic": settings.topic_reinstatements,
            }
        )
    else:
        print(render.trip_line(trip, summary))
        verb = "would send" if args.dry_run else "sent"
        count = len(plan.to_send) if args.dry_run else sent
        print(
            f"  {plan.entries} deactivations of {plan.accounts} accounts in the ledger; "
            f"{plan.already_requested} already requested; {verb} {count} "
            f"reinstatement requests to {settings.topic_reinstatements}"
        )
    if summary is not None and summary.truncated_before is not None:
        print(
            f"warning: the ledger is complete only from {to_rfc3339(summary.truncated_before)}: "
            "earlier deactivations of this trip are not listed",
            file=sys.stderr,
        )
    if still_open:
        print(
            "note: the trip is still open (the rule is paused or probing); accounts may "
            "still be added: run this again once it has closed",
            file=sys.stderr,
        )
    return 0


def unknown_trip(trip: str, ledger: Ledger, topic: str) -> NotFoundError:
    """The error for a trip the ledger does not know, with trips it does know."""
    similar = ledger.similar(trip)
    hint = f"; known trips: {', '.join(similar)}" if similar else "; the ledger is empty"
    return NotFoundError(f"unknown trip {trip!r}: no records in {topic}{hint}")


async def watch(args: argparse.Namespace, settings: Settings) -> int:
    """Follow the rule-state topic with a gate and print each change as it is seen."""
    from detector.gate import Change, RuleGate

    only = set(args.rules)

    def show(change: Change, msg: topicio.Message) -> None:
        if only and change.rule_id not in only:
            return
        seen = time.time()
        state = change.message
        row = {
            "event": "change",
            "rule_id": change.rule_id,
            "before": change.before.value if change.before else None,
            "after": change.after.value if change.after else None,
            "decision": gate.held_decision(change.rule_id).value,
            "answer": gate.decide(change.rule_id).value,  # fails safe until caught up
            "state": state.state if state else None,
            "version": state.version if state else None,
            "reason": state.reason if state else None,
            "observed_at": seen,
            "message_timestamp": msg.timestamp,
            "lag_seconds": round(seen - msg.timestamp, 4),
            "replay": not gate.caught_up,
        }
        emit(row)

    def emit(row: dict[str, Any]) -> None:
        if args.json:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        elif row["event"] == "change":
            when = (
                "(replayed from the topic)"
                if row["replay"]
                else f"seen {row['lag_seconds']:.3f} s after it was written"
            )
            print(
                f"{to_rfc3339(row['observed_at'])}  {row['rule_id']}  "
                f"{row['before'] or '-'} -> {row['after'] or '-'}  (decision {row['decision']}; "
                f"{row['state']} v{row['version']}, {row['reason']})  {when}"
            )
        else:
            print(f"{to_rfc3339(row['observed_at'])}  {row['event']}: {row.get('detail', '')}")
        sys.stdout.flush()

    # A gate waits for a missing topic (a service may start before the detector);
    # the command line says so at once instead.
    await topicio.check_topic(
        settings, settings.topic_rule_state, "DETECTOR_TOPIC_RULE_STATE", args.timeout
    )
    gate = RuleGate.from_settings(settings, stale_after=args.stale_after, on_change=show)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with gate:
        if not await gate.wait_caught_up(args.timeout):
            raise BrokerUnreachableError(
                f"could not read {settings.topic_rule_state} to its end within "
                f"{args.timeout:g} s from {settings.broker}"
            )
        health = gate.health()
        emit(
            {
                "event": "caught_up",
                "observed_at": time.time(),
                "rules": health.rules,
                "detail": f"{health.rules} rules, global gate {health.global_gate}",
            }
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration or None)
    return 0
