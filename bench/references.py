"""The two references the detector is measured against, on the same simulated traffic.

1. The textbook lower bound: a Poisson CUSUM that knows the true rate before the
   incident (including the simulator's noise) and the rate the incident would
   bring, but not when it starts, with its threshold set from the same
   false-alarm budget. No detector that must estimate its baseline can beat it
   on average.
2. What teams do today: a Prometheus-style alert, ``rate(5m) > 3 x the same hour
   last week, for 5 minutes``.
"""

from __future__ import annotations

import math

import numpy as np

SECONDS_PER_MONTH = 30 * 86_400


def oracle_threshold(tick_seconds: float, false_alarms_per_month: float) -> float:
    """CUSUM threshold with ``ARL0 ~ exp(h)`` ticks matching the budget."""
    return math.log(SECONDS_PER_MONTH / tick_seconds / false_alarms_per_month)


def cusum_first_alarm(llr: np.ndarray, h: float) -> int | None:
    """Index of the first tick at which the CUSUM of these log-likelihood ratios reaches ``h``.

    Vectorised: ``S_t = W_t - min(0, min_{s <= t} W_s)`` with ``W`` the running sum.
    """
    if len(llr) == 0:
        return None
    w = np.cumsum(llr)
    s = w - np.minimum(0.0, np.minimum.accumulate(w))
    hits = np.flatnonzero(s >= h)
    return int(hits[0]) if len(hits) else None


def poisson_llr(x: np.ndarray, lam0: np.ndarray, lam1: np.ndarray) -> np.ndarray:
    """Per-tick log-likelihood ratio of Poisson rate ``lam1`` against ``lam0``."""
    lam0 = np.maximum(lam0, 1e-12)
    lam1 = np.maximum(lam1, 1e-12)
    out: np.ndarray = x * np.log(lam1 / lam0) - (lam1 - lam0)
    return out


def prometheus_alarm(
    counts: np.ndarray,
    last_week: np.ndarray,
    *,
    start: int,
    factor: float = 3.0,
    window: int = 5,
    hold: int = 5,
    below: bool = False,
) -> int | None:
    """First minute index ``>= start`` at which the Prometheus-style alert fires.

    ``counts[m]`` are per-minute counts; ``last_week[m]`` the counts of the same
    minute one week earlier (same indexing). The alert's expression is
    ``rate over 5 minutes > factor * mean rate over the same hour last week``
    (``<`` and ``1/factor`` with ``below``), evaluated every minute, and it fires
    once the expression has held for ``hold`` minutes.
    """
    n = len(counts)
    csum = np.concatenate([[0.0], np.cumsum(counts)])
    lsum = np.concatenate([[0.0], np.cumsum(last_week)])
    idx = np.arange(n)
    lo = np.maximum(idx - window + 1, 0)
    rate = (csum[idx + 1] - csum[lo]) / window
    blo = np.maximum(idx - 30, 0)
    bhi = np.minimum(idx + 30, n)
    base = (lsum[bhi] - lsum[blo]) / np.maximum(bhi - blo, 1)
    cond = (rate < base / factor) & (base > 0) if below else rate > factor * base
    run = 0
    for m in range(max(start - hold, 0), n):
        run = run + 1 if cond[m] else 0
        if m >= start and run > hold:
            return m
    return None
