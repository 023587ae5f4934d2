"""``detector demo``: the whole product on one machine, in one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detector.sim.scenarios import INCIDENTS

HELP = "run the embedded demo: broker, worker, traffic, an incident, the pause and the resume"
DESCRIPTION = """\
Starts the embedded broker (tansu), a 'detector worker' and a simulated
enforcement service with thirty rules (realistic volumes, seasonality and
noise, in compressed event time). It backfills three hours of history so that
every rule has a baseline, then goes live and injects an incident into
'bot.automation'. A live terminal view shows the top rules' rates against
their expected band, the breaker states and the event log: the incident, the
pause with its evidence, the half-open probe, the fix, and the signed operator
resume the demo sends at the end.

The worker's /metrics address is printed at the start. With --with-prometheus
the real Prometheus and Alertmanager (where installed) scrape it, and the page
arriving at a local webhook shows in the event log.

At the end it prints a summary (time to pause, accounts affected before the
pause, whether the ledger matches the simulator's ground truth) and writes into
--out: the ledger CSV, a PNG timeline of the incident, the events sent, every
decision with its ground truth, summary.json and the worker's log. Every
process it started is stopped by PID, also on Ctrl-C. Exit status 0 when every
check passed, 1 when one failed, 130 when interrupted.

Incidents:
  shift     bot.automation deactivates long-tenured clean accounts at 6x its rate
  surge     bot.automation deactivates random accounts at 20x its rate
  global    a third of the rules deactivate at 3x together (a global halt)
  reversal  appeals reverse bot.automation's decisions at 30x the usual rate
  silent    bot.automation stops deciding (an alert, not a pause)
"""
EPILOG = """\
examples:
  detector demo                              the default story, about 1.5 minutes
  detector demo --headless                   plain lines (CI, logs, no terminal)
  detector demo --incident global --seed 3   a global halt, another platform
  detector demo --with-prometheus            also Prometheus, Alertmanager and a page
  detector demo --speed 120 --duration 30    faster event time, longer live phase
"""


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``demo`` subcommand."""
    p = sub.add_parser(
        "demo", help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter
    )
    p.add_argument("--incident", choices=INCIDENTS, default="shift", help="incident to inject")
    p.add_argument(
        "--speed",
        type=_positive,
        default=60.0,
        metavar="X",
        help="simulated seconds per wall-clock second in the live phase",
    )
    p.add_argument(
        "--duration",
        type=_positive,
        default=25.0,
        metavar="MINUTES",
        help="simulated minutes of live traffic (at least 8; the incident starts after 4)",
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the simulated platform")
    p.add_argument(
        "--headless", action="store_true", help="plain lines instead of the live view (CI)"
    )
    p.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also start Prometheus and Alertmanager (if installed) and show the page",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out/demo"),
        metavar="DIR",
        help="where to write the ledger CSV, the PNG timeline and the summary",
    )
    p.set_defaults(handler=run)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary."""
    from detector.demo.runner import Options, run_demo
    from detector.demo.scenario import Schedule
    from detector.demo.view import LiveView, PlainView, View

    Schedule.of(args.duration)  # a bad --duration fails before anything starts
    options = Options(
        incident=args.incident,
        speed=args.speed,
        duration=args.duration,
        seed=args.seed,
        headless=args.headless,
        out=args.out,
        with_prometheus=args.with_prometheus,
    )
    view: View = PlainView() if args.headless or not sys.stdout.isatty() else LiveView()
    code, demo = run_demo(options, view)
    if demo.summary is not None:
        print()
        print("\n".join(demo.summary.lines()))
    stopped = demo.stopped
    if stopped.processes:
        print(f"stopped: {', '.join(stopped.processes)}")
    if demo.interrupted is not None:
        print(f"interrupted by {demo.interrupted}; everything the demo started is stopped")
    return code
