"""``detector backtest``: replay history through the engine and report its decisions."""

from __future__ import annotations

import argparse
import collections
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import orjson

from detector.backtest import Backtest, BacktestResult, compressed_position, open_lines, text_lines
from detector.config import load_config
from detector.errors import DetectorError
from detector.wire.timefmt import to_rfc3339

HELP = "replay enforcement actions (or counts) through the detector, as fast as possible"
DESCRIPTION = """\
Replays history through the same engine the daemon runs, in event time, and
reports every breaker transition and alert with its evidence.

Input is JSON Lines of enforcement actions (see docs/contracts.md; .gz is read
transparently) or, with --counts, a CSV of pre-aggregated deactivations with the
header 'timestamp,rule_id,count' (timestamps in RFC 3339 or epoch seconds, one
row per rule per bucket or finer; counts may be fractional). Lines that break
the contract are counted by reason and never silently dropped: see --rejects.

Exit codes: 0 replayed; 1 no line of the input was a valid event (nothing was
judged); 2 bad usage, an unreadable input, or a bad line with --strict.
"""


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``backtest`` subcommand."""
    p = sub.add_parser("backtest", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "events",
        nargs="?",
        type=Path,
        metavar="EVENTS.jsonl",
        help="enforcement actions, one JSON object per line (.gz allowed)",
    )
    src.add_argument(
        "--counts",
        type=Path,
        metavar="COUNTS.csv",
        help="pre-aggregated history: CSV timestamp,rule_id,count",
    )
    src.add_argument(
        "--sample",
        action="store_true",
        help="generate the bundled sample platform (a dozen rules, 1.5 days, one "
        "incident) into out/sample/ and replay it",
    )
    p.add_argument(
        "--incident",
        default="shift",
        choices=("surge", "shift", "global", "reversal", "silent"),
        help="with --sample: the incident to inject",
    )
    p.add_argument(
        "--transitions",
        type=Path,
        metavar="PATH",
        help="write one JSON line per transition and alert",
    )
    p.add_argument(
        "--scores",
        type=Path,
        metavar="PATH",
        help="write a CSV timestamp,rule_id,count,expected,score per rule and bucket",
    )
    p.add_argument(
        "--plot", type=Path, metavar="DIR", help="write a PNG timeline per rule that tripped"
    )
    p.add_argument(
        "--ledger",
        type=Path,
        metavar="PATH",
        help="write the affected-accounts ledger (trip summaries and the accounts each "
        "trip hit) as JSON lines, as the worker publishes it",
    )
    p.add_argument(
        "--rejects",
        type=Path,
        metavar="PATH",
        help="write every rejected line (with line number and reason) as JSON lines",
    )
    p.add_argument("--config", metavar="FILE", help="JSON object of engine settings to override")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run a backtest from parsed arguments."""
    cfg = load_config(args.config)
    if args.sample:
        from detector.commands.simulate import write_sample

        args.events = Path("out/sample/events.jsonl.gz")
        write_sample(args.events, incident=args.incident, quiet=args.quiet or args.json)
    with ExitStack() as stack:

        def sink(path: Path | None, mode: str) -> IO[Any] | None:
            if path is None:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            return stack.enter_context(path.open(mode))

        bt = Backtest(
            cfg,
            transitions=sink(args.transitions, "wb"),
            scores=sink(args.scores, "w"),
            rejects=sink(args.rejects, "wb"),
            keep_series=args.plot is not None,
            strict=args.strict,
            ledger=args.ledger is not None,
        )
        path: Path = args.counts or args.events
        fh, size = open_lines(path)
        stack.enter_context(fh)
        show = not args.quiet and not args.json and sys.stderr.isatty()
        result = _replay(bt, fh, size, path, counts=args.counts is not None, show=show)
    plots = _plots(result, args.plot) if args.plot else []
    if args.ledger is not None:
        args.ledger.parent.mkdir(parents=True, exist_ok=True)
        with args.ledger.open("wb") as out:
            out.writelines(r.to_json() + b"\n" for r in result.ledger)
    if args.json:
        sys.stdout.write(orjson.dumps(_summary_json(result, plots)).decode() + "\n")
    else:
        _print_summary(result, path, plots, args)
    if result.accepted == 0:
        what = "is empty" if result.lines == 0 else "holds no valid line"
        print(f"detector backtest: error: {path} {what}: nothing was judged", file=sys.stderr)
        return 1
    return 0


def _replay(
    bt: Backtest, fh: IO[bytes], size: int, path: Path, counts: bool, show: bool
) -> BacktestResult:
    position = compressed_position(fh)
    if not show:
        return bt.counts(text_lines(fh)) if counts else bt.events(iter(fh))
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(f"replaying {path.name}", total=size)

        def advance(consumed: int) -> None:
            bar.update(task, completed=position(consumed))

        if counts:
            return bt.counts(text_lines(fh), advance)
        return bt.events(iter(fh), advance)


def _plots(result: BacktestResult, out: Path) -> list[Path]:
    from detector.plot import plot_rule, safe_name

    tripped = sorted({r.rule_id for r in result.transitions if r.to_state == "open"})
    paths = []
    for rule_id in tripped:
        series = result.series.get(rule_id)
        if series is not None:
            paths.append(
                plot_rule(rule_id, series, result.records, out / f"{safe_name(rule_id)}.png")
            )
    return paths


def _summary_json(result: BacktestResult, plots: list[Path]) -> dict[str, Any]:
    return {
        "lines": result.lines,
        "accepted": result.accepted,
        "rejected": dict(result.rejected),
        "first_errors": [{"line": n, "reason": r, "error": e} for n, r, e in result.first_errors],
        "rules": result.rules,
        "first_event": to_rfc3339(result.first_event) if result.first_event else None,
        "last_event": to_rfc3339(result.last_event) if result.last_event else None,
        "elapsed_seconds": round(result.elapsed, 3),
        "transitions": [r.to_dict() for r in result.transitions],
        "alerts": [r.to_dict() for r in result.alerts],
        "plots": [str(p) for p in plots],
    }


def _print_summary(
    result: BacktestResult, path: Path, plots: list[Path], args: argparse.Namespace
) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    rate = result.lines / result.elapsed if result.elapsed > 0 else 0.0
    con.print(
        f"[bold]Backtest of {path}[/]: {result.lines:,} lines in {result.elapsed:.1f} s "
        f"({rate:,.0f} lines/s), {result.rules} rules"
    )
    if result.first_event is not None and result.last_event is not None:
        con.print(
            f"  event time {to_rfc3339(result.first_event)} .. {to_rfc3339(result.last_event)}"
        )
    rejected = sum(result.rejected.values())
    con.print(
        f"  accepted {result.accepted:,}; rejected {rejected:,}"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in result.rejected.most_common())})"
            if rejected
            else ""
        )
    )
    for line_no, reason, message in result.first_errors:
        con.print(f"    line {line_no}: {reason}: {message}", markup=False)
    if rejected > len(result.first_errors) and args.rejects is None:
        con.print("    (use --rejects PATH to keep every rejected line)")
    for title, records in (("Transitions", result.transitions), ("Alerts", result.alerts)):
        table = Table(title=f"{title} ({len(records)})", title_justify="left", show_lines=False)
        for col in (
            "event time",
            "rule",
            "change",
            "reason",
            "observed / expected",
            "outside share (usual)",
            "test",
        ):
            table.add_column(col)
        for r in records:
            ev = r.evidence
            obs = ev.get("observed")
            exp = ev.get("expected")
            share = ev.get("outside_share")
            table.add_row(
                to_rfc3339(r.at),
                r.rule_id,
                f"{r.from_state} -> {r.to_state}" if r.is_transition else r.to_state,
                r.reason,
                f"{obs:g} / {exp:g}"
                if isinstance(obs, int | float) and isinstance(exp, int | float)
                else "",
                f"{share:.0%} ({ev.get('usual_outside_share', 0):.0%})"
                if isinstance(share, int | float)
                else "",
                str(ev.get("test", "")),
            )
        if records:
            con.print(table)
        else:
            con.print(f"{title}: none")
    if args.ledger is not None:
        from detector.wire.affected import AffectedAccount

        trips = collections.Counter(
            r.trip_id for r in result.ledger if isinstance(r, AffectedAccount)
        )
        for trip, n in sorted(trips.items()):
            con.print(f"  trip {trip}: {n:,} affected accounts in the ledger")
    for label, target in (
        ("transitions", args.transitions),
        ("scores", args.scores),
        ("rejects", args.rejects),
        ("ledger", args.ledger),
    ):
        if target is not None:
            con.print(f"  {label} written to {target}")
    for p in plots:
        con.print(f"  plot written to {p}")
    if args.plot and not plots:
        con.print("  no rule tripped: no plot written")


def fail(message: str) -> DetectorError:
    """A command-line error with a clear message."""
    return DetectorError(message)
