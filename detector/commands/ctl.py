"""``detector ctl``: operate the detector through its topics.

Write commands sign one operator command each and send it to the commands topic;
read commands fold the rule-state, audit and ledger topics. Nothing here keeps a
database of its own: the topics are the truth. This module is the command line (help,
options, checks); :mod:`detector.commands.ctl_actions` does the actions.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

from detector.commands import ctl_actions
from detector.control.errors import ControlError
from detector.stream.settings import Settings
from detector.wire.commands import Command, load_key
from detector.wire.events import GLOBAL_RULE_ID

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


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``ctl`` subcommand and its own subcommands."""
    p = sub.add_parser(
        "ctl", help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter
    )
    ctl = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def leaf(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        epilog = f"examples:\n{EXAMPLES[name]}\n" if name in EXAMPLES else None
        parser: argparse.ArgumentParser = ctl.add_parser(
            name, formatter_class=formatter, epilog=epilog, **kwargs
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
    wa.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this long (0: until interrupted)",
    )
    wa.add_argument(
        "--stale-after",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="without an answer from the broker for this long, the gate answers 'unknown'",
    )
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
        return guarded(args, ctl_actions.status(args, settings))
    if kind == "history":
        return guarded(args, ctl_actions.history(args, settings))
    if kind == "reinstate":
        operator = operator_of(args)
        return guarded(args, ctl_actions.reinstate(args, settings, operator))
    if kind == "watch":
        return guarded(args, ctl_actions.watch(args, settings))
    key = signing_key(args, settings)
    operator = operator_of(args)
    rule = getattr(args, "rule", GLOBAL_RULE_ID)
    command = Command.new(
        kind, rule, operator, args.reason, time.time(), getattr(args, "grace", 0.0)
    ).signed(key)
    return guarded(args, ctl_actions.send_command(args, settings, command))
