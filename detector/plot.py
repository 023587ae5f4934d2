"""PNG timelines of a rule: observed deactivations against the expected band, with
the breaker's transitions and the alerts marked, and the anomaly score below."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from detector.backtest import Series
from detector.wire.records import Record

_COLOURS = {
    "open": "#d62728",
    "forced_open": "#8c1515",
    "half_open": "#ff7f0e",
    "closed": "#2ca02c",
    "disabled": "#7f7f7f",
    "shadow": "#9467bd",
}
_BAND_Z = 3.0


def plot_rule(
    rule_id: str,
    series: Series,
    records: list[Record],
    path: Path,
    *,
    before: float = 3 * 3600,
    after: float = 3600,
) -> Path:
    """Write the timeline of ``rule_id`` around its transitions to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in records if r.rule_id == rule_id]
    times = list(series.start)
    if not times:
        raise ValueError(f"no buckets recorded for rule {rule_id!r}")
    if mine:
        lo = max(times[0], min(r.at for r in mine) - before)
        hi = min(times[-1], max(r.at for r in mine) + after)
    else:
        lo, hi = times[0], times[-1]
    idx = [i for i, t in enumerate(times) if lo <= t <= hi]
    when = [datetime.fromtimestamp(times[i], tz=UTC) for i in idx]
    observed = [series.count[i] for i in idx]
    expected = [series.expected[i] for i in idx]
    sd = [
        math.sqrt(series.expected[i] + series.dispersion[i] * series.expected[i] ** 2) for i in idx
    ]
    upper = [e + _BAND_Z * s for e, s in zip(expected, sd, strict=True)]
    lower = [max(0.0, e - _BAND_Z * s) for e, s in zip(expected, sd, strict=True)]

    fig, (ax, ax_score) = plt.subplots(
        2, 1, figsize=(11, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.fill_between(when, lower, upper, color="#1f77b4", alpha=0.15, label="expected band (3 sd)")
    ax.plot(when, expected, color="#1f77b4", lw=1, ls="--", label="expected")
    ax.step(when, observed, where="post", color="black", lw=1, label="observed deactivations")
    # Transition labels stand left of their line; one close after another (a probe that
    # fails within seconds) stands on the right instead, so that the two stay readable.
    close = (hi - lo) * 0.02
    last_label = -math.inf
    for r in mine:
        at = datetime.fromtimestamp(r.at, tz=UTC)
        if r.is_transition:
            colour = _COLOURS.get(r.to_state, "black")
            ax.axvline(at, color=colour, lw=1.5)
            ax_score.axvline(at, color=colour, lw=1.5)
            ax.annotate(
                f"{r.to_state} ({r.reason})",
                (at, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="left" if r.at - last_label < close else "right",
                fontsize=7,
                color=colour,
            )
            last_label = r.at
        else:
            ax.plot([at], [max(observed or [0]) * 1.02], marker="v", color="#e6a700")
            ax.annotate(
                r.reason,
                (at, 0.98),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="left",
                fontsize=7,
                color="#b58900",
            )
    # Head room above the data for the labels, which hang from the top.
    ax.set_ylim(0, max([*observed, *upper, 1.0]) * 1.45)
    ax.set_ylabel("deactivations per bucket")
    ax.set_title(f"rule {rule_id}")
    ax.legend(loc="upper left", fontsize=8)
    ax_score.plot(when, [series.score[i] for i in idx], color="#9467bd", lw=1)
    ax_score.set_ylim(0, 1.05)
    ax_score.set_ylabel("anomaly score")
    ax_score.set_xlabel("event time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def safe_name(rule_id: str) -> str:
    """A file name for a rule id (``*`` becomes ``global``)."""
    if rule_id == "*":
        return "global"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in rule_id)
