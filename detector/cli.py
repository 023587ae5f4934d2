"""The ``detector`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from detector import __version__
from detector.errors import DetectorError

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Over-enforcement detector: watches the enforcement actions of trust-and-safety
rules and pauses a rule within seconds when its deactivation rate deviates
sharply from its own baseline.
"""

EPILOG = """\
examples:
  detector demo                                    the whole product in a minute
  detector backtest --sample --plot out/plots      replay the bundled sample incident
  detector backtest actions.jsonl.gz --transitions t.jsonl --ledger affected.jsonl
  DETECTOR_BROKER=kafka://kafka:9092 detector worker   run the daemon
  detector backtest --counts history.csv           tune on warehouse counts
  detector simulate --out sample.jsonl.gz          write simulated enforcement actions
  detector ctl status                              the state of every rule (ctl --help)
  detector affected 'bot.automation#3' --format csv   accounts a trip deactivated

Run 'detector COMMAND --help' for the options of a command.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' layout; shows an option's default only when it has one
    worth showing (not for flags, nor for options that are off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and "%(default)" not in text
            and action.default not in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to test the help texts)."""
    parser = argparse.ArgumentParser(
        prog="detector", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from detector.commands import register_all

    register_all(sub, _Formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except DetectorError as exc:
        print(f"detector {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"detector {args.command}: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"detector {args.command}: interrupted", file=sys.stderr)
        return 130


def existing_file(text: str) -> Path:
    """argparse type: a path that must exist."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path
