"""``detector simulate``: write simulated enforcement actions (JSON Lines) and ground truth."""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path
from typing import IO, Any, cast

import orjson

from detector.sim.events import GroundTruth, events
from detector.sim.scenarios import INCIDENTS, sample

HELP = "write simulated enforcement actions of the sample platform, with ground truth"
DESCRIPTION = """\
Simulates the sample platform (a dozen rules with their own volumes, daily and
weekly seasonality, overdispersed noise and target make-up, and a legitimate
spam wave), then injects an incident into 'bot.automation' (or 30% of the rules
for --incident global). Writes enforcement actions in the event contract, in
event-time order, and a ground-truth file next to them listing the wrongfully
deactivated accounts. The output is a pure function of --seed.
"""


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``simulate`` subcommand."""
    p = sub.add_parser("simulate", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="PATH",
        help="where to write the actions (.jsonl or .jsonl.gz)",
    )
    p.add_argument("--incident", choices=INCIDENTS, default="shift", help="incident to inject")
    p.add_argument(
        "--seed", type=int, default=7, help="seed of the simulated platform (same seed, same file)"
    )
    p.add_argument(
        "--history-days",
        type=float,
        default=1.5,
        help="days of normal traffic before the incident (>= 1 to leave warm-up)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the simulated actions and their ground truth."""
    truth = write_sample(
        args.out,
        incident=args.incident,
        seed=args.seed,
        history_days=args.history_days,
        quiet=args.quiet,
    )
    wrongful = sum(len(v) for v in truth.wrongful.values())
    print(
        f"wrote {truth.events:,} actions to {args.out} "
        f"({wrongful:,} wrongful; ground truth in {truth_path(args.out)})"
    )
    return 0


def truth_path(out: Path) -> Path:
    """Where the ground truth of ``out`` is written."""
    name = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(f"{name}.truth.json")


def write_sample(
    out: Path,
    *,
    incident: str = "shift",
    seed: int = 7,
    history_days: float = 1.5,
    quiet: bool = False,
) -> GroundTruth:
    """Simulate the sample platform into ``out`` and write the ground truth beside it."""
    s = sample(seed, incident=incident, history_days=history_days)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = GroundTruth()
    opener = gzip.open if out.suffix == ".gz" else open
    show = not quiet and sys.stderr.isatty()
    with cast(IO[bytes], opener(out, "wb")) as fh:
        stream = events(s.sim, s.start, s.end, truth)
        if show:
            from rich.progress import track

            hours = max(1, int((s.end - s.start) // 3600))
            stream = _hourly(stream, track(range(hours), description=f"simulating {out.name}"))
        buf = []
        for ev in stream:
            buf.append(orjson.dumps(ev))
            if len(buf) >= 10_000:
                fh.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
    truth_path(out).write_bytes(
        orjson.dumps(
            {
                "incident": incident,
                "rule_id": s.rule_id,
                "onset": s.onset,
                "seed": seed,
                "events": truth.events,
                "wrongful_accounts": truth.wrongful,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return truth


def _hourly(stream: Any, ticker: Any) -> Any:
    """Advance a progress tracker once per simulated hour of ``stream``."""
    it = iter(ticker)
    hour = None
    for ev in stream:
        h = str(ev["occurred_at"])[:13]
        if h != hour:
            hour = h
            next(it, None)
        yield ev
    for _ in it:
        pass
