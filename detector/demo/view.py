"""What the demo shows: a live terminal view (rich), or plain lines with ``--headless``.

Both views take the same two inputs: event-log lines as things happen, and a
:class:`Status` snapshot a few times a second. The live view redraws the top
rules' last-minute deactivations against their expected band, their breaker
states and the event log; the plain view prints each log line once, prefixed
with the wall-clock seconds since the start, and a status line every few seconds.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from detector.demo.worker import RuleView
from detector.wire.timefmt import to_rfc3339

TOP_RULES = 10
LOG_LINES = 14
STATUS_EVERY = 5.0
"""Seconds between the plain view's status lines."""

STATE_STYLES = {
    "closed": "green",
    "open": "bold red",
    "forced_open": "bold red",
    "half_open": "yellow",
    "disabled": "dim",
    "shadow": "magenta",
}
LOG_STYLES = {"incident": "bold red", "detector": "bold yellow", "operator": "bold cyan"}


@dataclass(frozen=True)
class Status:
    """A snapshot of the demo for the views."""

    phase: str
    event_time: float | None = None
    watermark: float | None = None
    sent: int = 0
    speed: float = 0.0
    rules: list[RuleView] = field(default_factory=list)
    watch: tuple[str, ...] = ()
    """Rules always shown (the incident's)."""
    urls: tuple[str, ...] = ()


class View(Protocol):
    """What the runner needs from a view."""

    def start(self) -> None:
        """Begin showing."""

    def stop(self) -> None:
        """Stop redrawing (the summary is printed after)."""

    def log(self, line: str, kind: str = "") -> None:
        """One event-log line; ``kind`` is ``incident``, ``detector``, ``operator`` or ''."""

    def update(self, status: Status) -> None:
        """A new snapshot."""


def top_rules(rules: list[RuleView], watch: tuple[str, ...], n: int = TOP_RULES) -> list[RuleView]:
    """The rules worth showing: those not closed and the watched ones first, then the
    busiest."""

    def rank(r: RuleView) -> tuple[int, float]:
        urgent = r.state != "closed" or r.rule_id in watch
        return (0 if urgent else 1, -max(r.observed, r.expected))

    return sorted(rules, key=rank)[:n]


def rate_bar(observed: float, expected: float, upper: float, width: int = 24) -> Text:
    """``observed`` on a scale where the band's top sits at two thirds of the width."""
    scale = max(upper, expected, 1e-9) * 1.5
    filled = min(width, round(width * observed / scale))
    top = min(width - 1, round(width * upper / scale))
    cells = ["█" if i < filled else " " for i in range(width)]
    bar = Text()
    over = observed > upper
    for i, c in enumerate(cells):
        if i == top:
            bar.append("│" if c == " " else c, style="bold red" if over else "blue")
        else:
            bar.append(c, style="red" if over else "green")
    if observed > scale:
        bar.append("▶", style="bold red")
    return bar


class LiveView:
    """The rich live view."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.lines: deque[Text] = deque(maxlen=LOG_LINES)
        self.status = Status("starting")
        self.started = time.monotonic()
        self._live = Live(
            self._render(), console=self.console, refresh_per_second=4, transient=False
        )

    def start(self) -> None:
        """Begin redrawing."""
        self.started = time.monotonic()
        self._live.start()

    def stop(self) -> None:
        """Draw once more and stop."""
        self._live.update(self._render(), refresh=True)
        self._live.stop()

    def log(self, line: str, kind: str = "") -> None:
        """Add a line to the event log."""
        stamp = f"{time.monotonic() - self.started:6.1f}s  "
        self.lines.append(Text(stamp, style="dim") + Text(line, style=LOG_STYLES.get(kind, "")))
        self._live.update(self._render())

    def update(self, status: Status) -> None:
        """Redraw with a new snapshot."""
        self.status = status
        self._live.update(self._render())

    def _render(self) -> Group:
        s = self.status
        head = Text()
        head.append("detector demo", style="bold")
        head.append(f"  {s.phase}", style="bold cyan")
        head.append(f"   wall {time.monotonic() - self.started:5.1f} s")
        if s.event_time is not None:
            head.append(f"   event time {to_rfc3339(s.event_time)}")
            if s.speed:
                head.append(f" ({s.speed:g}x)")
        if s.watermark is not None:
            head.append(f"   detector judged up to {to_rfc3339(s.watermark)}")
        head.append(f"   {s.sent:,} actions sent")
        for url in s.urls:
            head.append(f"\n{url}", style="dim")
        table = Table(
            title="rules: deactivations in the last minute against the expected band",
            title_justify="left",
            expand=True,
        )
        for col, kw in (
            ("rule", {}),
            ("state", {}),
            ("observed", {"justify": "right"}),
            ("expected", {"justify": "right"}),
            ("band top", {"justify": "right"}),
            ("", {"ratio": 1}),
        ):
            table.add_column(col, **kw)
        for r in top_rules(s.rules, s.watch):
            table.add_row(
                r.rule_id,
                Text(r.state, style=STATE_STYLES.get(r.state, "")),
                f"{r.observed:g}",
                f"{r.expected:.1f}",
                f"{r.upper:.1f}",
                rate_bar(r.observed, r.expected, r.upper),
            )
        log = Text("\n").join(self.lines) if self.lines else Text("(nothing yet)", style="dim")
        return Group(Panel(head), table, Panel(log, title="event log", title_align="left"))


class PlainView:
    """Plain lines for CI and logs (``--headless``)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.started = time.monotonic()
        self._last_status = -STATUS_EVERY

    def start(self) -> None:
        """Note the start time."""
        self.started = time.monotonic()

    def stop(self) -> None:
        """Nothing to stop."""

    def log(self, line: str, kind: str = "") -> None:
        """Print one line."""
        tag = f"[{kind}] " if kind else ""
        self._print(f"{tag}{line}")

    def update(self, status: Status) -> None:
        """Print a status line every few seconds."""
        now = time.monotonic()
        if now - self._last_status < STATUS_EVERY:
            return
        self._last_status = now
        parts = [f"status: {status.phase}"]
        if status.event_time is not None:
            parts.append(f"event time {to_rfc3339(status.event_time)}")
        if status.watermark is not None:
            parts.append(f"judged up to {to_rfc3339(status.watermark)}")
        parts.append(f"{status.sent:,} actions sent")
        not_closed = [f"{r.rule_id} {r.state}" for r in status.rules if r.state != "closed"]
        if not_closed:
            parts.append("not closed: " + ", ".join(not_closed))
        self._print("; ".join(parts))

    def _print(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)
