"""Subcommands of the ``detector`` command line, one module each."""

from __future__ import annotations

import argparse
from typing import Any


def register_all(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add every subcommand's parser to ``sub``."""
    from detector.commands import backtest, broker, simulate, worker

    for module in (backtest, simulate, worker, broker):
        module.register(sub, formatter)
