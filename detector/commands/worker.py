"""``detector worker``: the streaming daemon."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "run the streaming daemon (Faust on Kafka), configured by DETECTOR_* variables"
DESCRIPTION = """\
Consumes enforcement actions from Kafka, keeps every rule's baseline and
breaker in a Faust table, and publishes rule states (compacted topic
detector.rule-state), alerts and transitions with evidence (detector.alerts)
and bad input (enforcement.actions.dlq). Configured by environment variables
DETECTOR_* (docs/configuration.md); each is validated at start. Logs are JSON
lines on stderr. Stops cleanly on SIGTERM or SIGINT within
DETECTOR_SHUTDOWN_TIMEOUT seconds.

Try it against the embedded broker:
  detector broker --port 9092 &
  DETECTOR_BROKER=kafka://127.0.0.1:9092 detector worker
"""


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``worker`` subcommand."""
    p = sub.add_parser("worker", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, print it (secrets hidden) and exit",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate the settings and run the worker."""
    from detector.stream.settings import Settings

    settings = Settings.from_env()
    settings.engine()  # validates the engine configuration file too
    if args.check:
        print(settings)
        return 0
    from detector.stream.worker import run_worker

    return run_worker(settings)
