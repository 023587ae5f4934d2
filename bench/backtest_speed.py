"""Backtest replay speed against the floor of decoding plus a dictionary update.

Run ``python -m bench.backtest_speed``. It writes the sample platform's actions
(the same file ``detector backtest --sample`` replays, uncompressed) and times,
on the same lines in the same process:

- the floor: ``orjson.loads`` of every line plus one dict counter update per
  event (what any Python replay must at least do);
- ``Backtest.events``: contract validation, aggregation, the engine, records.

Each is run ``--repeat`` times; the table shows the medians and the ratio.
The target is at least 300,000 events per second per core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

from detector.backtest import Backtest
from detector.commands.simulate import write_sample

TARGET = 300_000


def floor_pass(lines: list[bytes]) -> float:
    """Seconds to decode every line and count it per (rule, minute)."""
    loads = orjson.loads
    counts: dict[tuple[str, str], int] = {}
    started = time.perf_counter()
    for line in lines:
        d = loads(line)
        key = (d["rule_id"], d["occurred_at"][:16])
        counts[key] = counts.get(key, 0) + 1
    return time.perf_counter() - started


def backtest_pass(lines: list[bytes]) -> float:
    """Seconds for a full backtest of the lines."""
    started = time.perf_counter()
    Backtest().events(iter(lines))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.backtest_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--file",
        type=Path,
        default=Path("out/bench/sample-events.jsonl"),
        help="where to write (or find) the sample actions",
    )
    args = ap.parse_args(argv)
    if not args.file.exists():
        print(f"writing {args.file} ...", file=sys.stderr)
        write_sample(args.file, quiet=True)
    lines = args.file.read_bytes().splitlines(keepends=True)
    n = len(lines)
    floors = [floor_pass(lines) for _ in range(args.repeat)]
    runs = [backtest_pass(lines) for _ in range(args.repeat)]
    floor_rate = n / statistics.median(floors)
    rate = n / statistics.median(runs)
    print(
        f"Backtest replay speed: `python -m bench.backtest_speed` ({n:,} events, one core, "
        f"median of {args.repeat})"
    )
    print()
    print("| pass | events/s | µs/event | ratio to floor |")
    print("|---|---|---|---|")
    print(
        f"| floor: orjson.loads + dict update | {floor_rate:,.0f} | {1e6 / floor_rate:.2f} | 1.00 |"
    )
    print(
        f"| detector backtest (validate, aggregate, detect) | {rate:,.0f} | {1e6 / rate:.2f} | "
        f"{rate / floor_rate:.2f} |"
    )
    print()
    verdict = "meets" if rate >= TARGET else "misses"
    print(f"Target >= {TARGET:,} events/s per core: {verdict} ({rate / TARGET:.2f} of target).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
