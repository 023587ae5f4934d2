"""``detector ctl``: operate the detector through its topics.

Write commands sign one operator command each and send it to the commands topic;
read commands fold the rule-state, audit and ledger topics. Nothing here keeps a
database of its own: the topics are the truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

import orjson

from detector.control import render, topicio
from detector.control.errors import (
    BrokerUnreachableError,
    CommandRejectedError,
    ControlError,
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
    requested_ids,
    rule_history,
)
from detector.errors import ContractError
from detector.stream.settings import Settings
from detector.wire.audit import AuditRecord
from detector.wire.commands import Command, load_key
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.timefmt import to_rfc3339

HELP = "operate the detector: pause, resume, halt; status, history; reinstate a trip"
DESCRIPTION = """\
Operator commands for the detector's control plane (docs/control-plane.md).

Write commands (pause, resume, disable, enable, shadow, reset-baseline,
halt-all, resume-all) each send one command, signed with HMAC-SHA256, to the
commands topic; the detector verifies it, applies it and audits it. Read
commands (status, history, watch) read the rule-state and audit topics;
reinstate reads the affected-accounts ledger and requests the reinstatement of
every account a trip deactivated.

The broker and topic names come from the worker's DETECTOR_* variables
(DETECTOR_BROKER, DETECTOR_TOPIC_COMMANDS, ...) or --broker. The signing key
comes from --key-file, DETECTOR_COMMAND_KEY_FILE or DETECTOR_COMMAND_KEY; it is
never printed.
"""
EPILOG = """\
examples:
  detector ctl pause bot.automation --reason "INC-4711: bans of old accounts" --wait 10
  detector ctl status
  detector ctl history bot.automation --json
  detector ctl resume bot.automation --reason "fixed in deploy 812" --grace 600
  detector ctl reinstate 'bot.automation#3' --reason "INC-4711" --dry-run

exit codes: 0 done; 2 bad usage or configuration (missing key, missing topic);
3 broker did not answer in time; 4 not found (trip, rule); 5 the detector
rejected the command; 6 the detector did not answer within --wait.
"""

# subcommand -> (command kind, takes a rule, reason required, help)
WRITES: dict[str, tuple[str, bool, bool, str]] = {
    "pause": ("pause", True, True, "pause a rule: only an operator resumes it"),
    "resume": ("resume", True, True, "resume a paused or tripped rule"),
    "disable": ("disable", True, False, "turn detection off for a rule (alerts only)"),
    "enable": ("enable", True, False, "turn detection on again for a rule"),
    "shadow": ("shadow", True, False, "put a rule in shadow mode: judged, never allowed to act"),
    "reset-baseline": (
        "reset_baseline",
        True,
        False,
        "forget what was learned about a rule; it warms up again",
    ),
    "halt-all": ("halt_all", False, True, "hold every automated deactivation (global halt)"),
    "resume-all": ("resume_all", False, True, "lift the global halt"),
}


# subcommand -> its examples (shown by ``detector ctl ACTION --help``)
EXAMPLES: dict[str, str] = {
    "pause": """\
  detector ctl pause bot.automation --reason "INC-4711: bans of old accounts"
  detector ctl pause bot.automation --reason "INC-4711" --wait 10   report the outcome
  detector ctl pause bot.automation --reason "INC-4711" --key-file /etc/detector/command.key
A paused rule (forced_open) stays paused across detector restarts; the detector
never lifts it: only 'detector ctl resume' does.""",
    "resume": """\
  detector ctl resume bot.automation --reason "fixed in deploy 812"
  detector ctl resume bot.automation --reason "fixed in deploy 812" --grace 600
With --grace the detector only alerts, never pauses, on the same rule for that long
(the evidence of the incident is still in its windows).""",
    "disable": """\
  detector ctl disable bot.automation --reason "known campaign, reviewed by T&S"
The rule keeps being watched and alerted on, but the detector never pauses it.""",
    "enable": """\
  detector ctl enable bot.automation --reason "campaign over"
The detector watches the rule again and may pause it.""",
    "shadow": """\
  detector ctl shadow bot.automation-v2 --reason "new rule, watch a week first"
Enforcement services log the rule's decisions without applying them ('detector ctl
enable' ends the shadow period).""",
    "reset-baseline": """\
  detector ctl reset-baseline bot.automation --reason "policy change 2026-03: stricter"
After an intended change of a rule's rate: the detector forgets what it learned and
warms up again.""",
    "halt-all": """\
  detector ctl halt-all --reason "INC-4712: enforcement pipeline misbehaving" --wait 10
Every automated deactivation is held, whatever each rule's own state.""",
    "resume-all": """\
  detector ctl resume-all --reason "INC-4712 resolved"
Lifts only the global halt: rules paused on their own stay paused.""",
    "status": """\
  detector ctl status                      every rule with a state, held ones first
  detector ctl status bot.automation       one rule, with its full evidence
  detector ctl status '*'                  the global halt
  detector ctl status --json | jq '.rules[] | select(.gate == "hold")'
Rules the detector never changed have no state: their decisions are allowed.""",
    "history": """\
  detector ctl history bot.automation
  detector ctl history bot.automation --limit 20
  detector ctl history '*' --json          the global halt's audit trail""",
    "reinstate": """\
  detector ctl reinstate 'bot.automation#3' --reason "INC-4711" --dry-run   only count
  detector ctl reinstate 'bot.automation#3' --reason "INC-4711: wrongful bans"
Run it again safely: requests already in the topic are not sent twice, and each
request id is the SHA-256 of TRIP_ID/EVENT_ID, so consumers can deduplicate.
'detector affected TRIP_ID' lists the accounts first.""",
    "watch": """\
  detector ctl watch                       every change of every rule, as it is seen
  detector ctl watch bot.automation --json --for 60
Each line shows how long after the rule-state message was written the gate saw it.""",
}


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' layout; shows a default only when there is one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and "%(default)" not in text
            and action.default not in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``ctl`` subcommand and its own subcommands."""
    p = sub.add_parser(
        "ctl", help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter
    )
    ctl = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def leaf(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        epilog = f"examples:\n{EXAMPLES[name]}\n" if name in EXAMPLES else None
        parser: argparse.ArgumentParser = ctl.add_parser(
            name, formatter_class=Formatter, epilog=epilog, **kwargs
        )
        return parser

    common = common_options()
    writer = argparse.ArgumentParser(add_help=False)
    writer.add_argument(
        "--operator",
        help="who is acting (recorded in the command and the audit); default $USER",
    )
    writer.add_argument(
        "--key-file",
        metavar="PATH",
        help="file holding the signing key (default DETECTOR_COMMAND_KEY_FILE, "
        "then DETECTOR_COMMAND_KEY)",
    )
    writer.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for the detector to audit the command and report the "
        "outcome (0: only send it)",
    )
    for name, (kind, per_rule, needs_reason, text) in WRITES.items():
        w = leaf(
            name, help=text, description=f"{text[0].upper()}{text[1:]}.", parents=[common, writer]
        )
        if per_rule:
            w.add_argument("rule", metavar="RULE", help="the rule id")
        w.add_argument(
            "--reason",
            required=needs_reason,
            default=None if needs_reason else f"{name} via detector ctl",
            help="why (an incident id, a ticket): recorded in the audit",
        )
        if kind == "resume":
            w.add_argument(
                "--grace",
                type=float,
                default=0.0,
                metavar="SECONDS",
                help="for this long after the resume the detector alerts instead of pausing",
            )
        w.set_defaults(handler=run, kind=kind)

    s = leaf(
        "status",
        parents=[common],
        help="the state of every rule (or one), with since when, why and the evidence",
        description="Reads the rule-state topic: each rule's breaker state, its gate "
        "(allow/hold/shadow), since when, why, and the highlights of the evidence. "
        "With RULE, that rule's state and full evidence.",
    )
    s.add_argument("rule", nargs="?", metavar="RULE", help="only this rule ('*': the global halt)")
    s.set_defaults(handler=run, kind="status")

    h = leaf(
        "history",
        parents=[common],
        help="a rule's audit trail: transitions, alerts and commands, as written",
        description="Reads the audit topic: every transition, alert and operator command "
        "(accepted or rejected) of RULE, each audit id once, in the order the detector "
        "wrote them (transitions carry event time, commands the time they were received).",
    )
    h.add_argument("rule", metavar="RULE", help="the rule id ('*': the global halt)")
    h.add_argument("--limit", type=int, default=0, help="only the last N records (0: all)")
    h.set_defaults(handler=run, kind="history")

    r = leaf(
        "reinstate",
        parents=[common],
        help="request the reinstatement of every account a trip deactivated",
        description="Reads the affected-accounts ledger for TRIP_ID and writes one "
        "reinstatement request per deactivation to the reinstatements topic. Idempotent: "
        "request ids are derived from the trip and event ids, and requests already in the "
        "topic are not sent again, so running it twice (or again after a trip's probe "
        "added accounts) sends each request once.",
    )
    r.add_argument("trip", metavar="TRIP_ID", help="the trip, RULE#VERSION (see ctl status)")
    r.add_argument("--reason", required=True, help="why: recorded in every request")
    r.add_argument("--operator", help="who is acting; default $USER")
    r.add_argument("--dry-run", action="store_true", help="only count what would be sent")
    r.set_defaults(handler=run, kind="reinstate")

    wa = leaf(
        "watch",
        parents=[common],
        help="follow the rule-state topic as an enforcement service's gate does",
        description="Runs a RuleGate (docs/gate.md) and prints every change of a rule's "
        "gate as it is seen, with the time it was seen and the message's timestamp, until "
        "interrupted (or --for SECONDS).",
    )
    wa.add_argument("rules", nargs="*", metavar="RULE", help="only these rules (default: all)")
    wa.add_argument("--for", dest="duration", type=float, default=0.0, metavar="SECONDS")
    wa.add_argument("--stale-after", type=float, default=15.0, metavar="SECONDS")
    wa.set_defaults(handler=run, kind="watch")


def common_options() -> argparse.ArgumentParser:
    """Options every control command takes (also ``detector affected``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--broker",
        help="Kafka bootstrap servers, host:port[;host:port] (default DETECTOR_BROKER)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the broker to answer",
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def load_settings(args: argparse.Namespace) -> Settings:
    """The worker's settings from the environment, with ``--broker`` applied."""
    overrides: dict[str, Any] = {}
    if args.broker:
        broker = args.broker
        overrides["broker"] = broker if "://" in broker else f"kafka://{broker}"
    return Settings.from_env(**overrides)


def operator_of(args: argparse.Namespace) -> str:
    """``--operator``, else the login name."""
    who = args.operator or os.environ.get("USER") or os.environ.get("LOGNAME")
    if not who:
        raise ControlError("no operator: pass --operator (or set $USER)")
    return str(who)


def signing_key(args: argparse.Namespace, settings: Settings) -> bytes:
    """The command key from ``--key-file`` or the settings; errors never show it."""
    if args.key_file:
        try:
            return load_key(path=args.key_file)
        except ValueError as exc:
            raise ControlError(f"--key-file: {exc}") from None
    key = settings.command_signing_key()
    if key is None:
        raise ControlError(
            "no command key: pass --key-file or set DETECTOR_COMMAND_KEY_FILE "
            "(or DETECTOR_COMMAND_KEY)"
        )
    return key


def guarded(args: argparse.Namespace, action: Any) -> int:
    """Run ``action``; a :class:`ControlError` is printed and becomes its exit code."""
    # aiokafka logs each failed connection attempt; the error below says it in one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        result: int = asyncio.run(action)
    except ControlError as exc:
        print(f"detector {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return result


def run(args: argparse.Namespace) -> int:
    """Dispatch to the action."""
    settings = load_settings(args)
    kind = args.kind
    if kind == "status":
        return guarded(args, status(args, settings))
    if kind == "history":
        return guarded(args, history(args, settings))
    if kind == "reinstate":
        operator = operator_of(args)
        return guarded(args, reinstate(args, settings, operator))
    if kind == "watch":
        return guarded(args, watch(args, settings))
    key = signing_key(args, settings)
    operator = operator_of(args)
    rule = getattr(args, "rule", GLOBAL_RULE_ID)
    command = Command.new(
        kind, rule, operator, args.reason, time.time(), getattr(args, "grace", 0.0)
    ).signed(key)
    return guarded(args, send_command(args, settings, command))


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
    already, _ = requested_ids((m.value for m in existing), trip)
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
