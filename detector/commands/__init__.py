"""Subcommands of the ``detector`` command line, one module each (``ctl`` has two)."""

from __future__ import annotations

import argparse
from typing import Any


def register_all(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add every subcommand's parser to ``sub``."""
    from detector.commands import affected, backtest, broker, ctl, demo, simulate, worker

    for module in (backtest, simulate, worker, broker, ctl, affected, demo):
        module.register(sub, formatter)
