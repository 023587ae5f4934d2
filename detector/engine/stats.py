"""Likelihood-ratio statistics for overdispersed counts.

Counts of enforcement actions are modelled as negative binomial with mean ``m``
and overdispersion ``c = 1/k`` (variance ``m + c m^2``); Poisson (``c = 0``) is
too optimistic for real traffic. A rate multiplied by ``rho`` keeps ``k`` fixed,
which keeps the model in one exponential family: every statistic below is a
log-likelihood ratio, so ``P(statistic >= h)`` under the null is at most
``exp(-h)`` (Chernoff). That is what lets thresholds be set from a false-alarm
budget instead of from magic multipliers.
"""

from __future__ import annotations

import math

MIN_MEAN = 1e-3
"""Expected counts are floored here so that a rule with no history cannot divide by zero."""


def llr_coefficients(m: float, c: float, rho: float) -> tuple[float, float]:
    """``(a, b)`` such that the log-likelihood ratio of rate ``rho*m`` against
    ``m`` for an observed count ``x`` is ``a*x + b``."""
    if c <= 0:  # the Poisson limit of the expression below
        return math.log(rho), m * (1.0 - rho)
    r = math.log1p(c * m) - math.log1p(c * rho * m)
    return math.log(rho) + r, r / c


def llr(x: float, m: float, c: float, rho: float) -> float:
    """Log-likelihood ratio of mean ``rho*m`` against ``m`` (dispersion ``c``) for count ``x``."""
    a, b = llr_coefficients(m, c, rho)
    return a * x + b


def glr_up(x: float, m: float, c: float) -> float:
    """Generalised likelihood ratio for "the mean is above ``m``" (0 when ``x <= m``).

    The maximum of :func:`llr` over ``rho >= 1``; a Chernoff bound on the upper tail.
    """
    if x <= m:
        return 0.0
    if c <= 0:  # the Poisson limit
        g = x * math.log(x / m) - (x - m)
    else:
        g = x * math.log(x / m) + (x + 1.0 / c) * (math.log1p(c * m) - math.log1p(c * x))
    # Just above ``m`` the two terms cancel and rounding can leave a tiny negative
    # value; the maximum over ``rho >= 1`` includes ``rho = 1``, where the ratio is 0.
    return max(g, 0.0)


def could_exceed(x: float, m: float, h: float) -> bool:
    """Cheap necessary condition for ``glr_up(x, m, c) >= h`` (any ``c >= 0``).

    The Poisson deviance bounds the negative-binomial one, and is itself bounded
    by ``(x - m)^2 / m``; checking this first avoids logarithms on quiet ticks.
    """
    if h <= 1e-9 * (1.0 + x):
        return True  # at the level of glr_up's own rounding (x log(x/m) - (x - m) cancels)
    d = x - m
    return d > 0 and d * d >= h * m


def binomial_excess(k: float, n: float, p0: float) -> float:
    """``n * KL(k/n || p0)`` when ``k/n > p0``, else 0: the log-likelihood ratio that
    the share of "outside" targets is above its usual ``p0``."""
    if n <= 0 or k <= p0 * n:
        return 0.0
    q = k / n
    p0 = min(max(p0, 1e-9), 1 - 1e-9)
    out = q * math.log(q / p0)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p0))
    return n * out
