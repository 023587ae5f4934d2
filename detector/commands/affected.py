"""``detector affected TRIP_ID``: the accounts a tripped rule deactivated, from the ledger."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import orjson

from detector.commands.ctl import common_options, guarded, load_settings
from detector.commands.ctl_actions import unknown_trip
from detector.control import render, topicio
from detector.control.views import Ledger
from detector.stream.settings import Settings
from detector.wire.affected import AffectedAccount
from detector.wire.timefmt import to_rfc3339

HELP = "list the accounts a trip deactivated (from the affected-accounts ledger)"
DESCRIPTION = """\
Reads the affected-accounts ledger (DETECTOR_TOPIC_AFFECTED, compacted; the
last record of each key counts) and lists the deactivations of TRIP_ID: the
accounts the rule deactivated between the incident's estimated onset and the
pause, during half-open probes, and while it was paused yet still acted. A trip
id is RULE#VERSION; 'detector ctl status RULE' shows a rule's last trip.

Without --format the list is a table for people; --format csv or jsonl writes
one row per deactivation (to --output, or standard output), and --json one JSON
document with the trip's summary. To request the reinstatements, use
'detector ctl reinstate TRIP_ID'.

"""
EPILOG = """\
examples:
  detector affected 'bot.automation#3'                       a table for people
  detector affected 'bot.automation#3' --format csv > bot-3.csv
  detector affected 'bot.automation#3' --format jsonl --output bot-3.jsonl
  detector affected 'bot.automation#3' --json | jq '.count'
  detector affected 'bot.automation#99'    unknown trip: exit 4, names the known ones
  detector affected '*#1' --format csv   a global halt: every rule's deactivations

CSV columns: trip_id, rule_id, account_id, event_id, action, occurred_at, phase
(incident: between onset and pause; probe: during a half-open probe; held: while
the rule was paused, yet the enforcement service applied the decision).

exit codes: 0 done; 2 bad usage or configuration; 3 broker did not answer in
time; 4 unknown trip.
"""
COLUMNS = ("trip_id", "rule_id", "account_id", "event_id", "action", "occurred_at", "phase")


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``affected`` subcommand."""
    p = sub.add_parser(
        "affected",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[common_options()],
    )
    p.add_argument("trip", metavar="TRIP_ID", help="the trip, RULE#VERSION")
    p.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        default=None,
        help="one row per deactivation (default: a table, or csv with --output)",
    )
    p.add_argument("--output", type=Path, metavar="FILE", help="write the rows here")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """List the trip's accounts."""
    return guarded(args, listing(args, load_settings(args)))


async def listing(args: argparse.Namespace, settings: Settings) -> int:
    """Read the ledger and print (or write) the trip's accounts."""
    messages = await topicio.read_all(
        settings, settings.topic_affected, "DETECTOR_TOPIC_AFFECTED", args.timeout
    )
    ledger = Ledger.fold((m.key, m.value) for m in messages)
    if not ledger.knows(args.trip):
        raise unknown_trip(args.trip, ledger, settings.topic_affected)
    summary = ledger.trip(args.trip)
    accounts = ledger.accounts_of(args.trip)
    if summary is not None and summary.truncated_before is not None:
        print(
            f"warning: the ledger is complete only from {to_rfc3339(summary.truncated_before)}",
            file=sys.stderr,
        )
    fmt = args.format or ("csv" if args.output else None)
    if fmt is None:
        if args.json:
            render.print_json(
                {
                    "trip": summary.to_dict() if summary is not None else None,
                    "count": len(accounts),
                    "accounts": [a.to_dict() for a in accounts],
                }
            )
        else:
            render.print_accounts(args.trip, summary, accounts)
        return 0
    text = rows(accounts, fmt)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(
        f"wrote {len(accounts)} accounts of {args.trip} to {args.output} ({fmt})", file=sys.stderr
    )
    return 0


def rows(accounts: list[AffectedAccount], fmt: str) -> str:
    """The accounts as CSV (with a header) or JSON Lines."""
    if fmt == "jsonl":
        return "".join(orjson.dumps(a.to_dict()).decode() + "\n" for a in accounts)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for a in accounts:
        d = a.to_dict()
        writer.writerow([d[c] for c in COLUMNS])
    return out.getvalue()
