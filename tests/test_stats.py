"""Likelihood-ratio statistics (detector.engine.stats), each checked against a
naive recomputation from the negative-binomial (or binomial) likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from detector.engine.stats import (
    binomial_excess,
    could_exceed,
    glr_up,
    llr,
    llr_coefficients,
)

PROPS = settings(max_examples=300, deadline=None)

counts = st.integers(0, 5000)
real_counts = counts | st.floats(0, 5000)
means = st.floats(1e-3, 1e4)
dispersions = st.floats(1e-3, 10) | st.just(0.0)  # 0 is the Poisson limit


def nb_logpmf(x: int, mean: float, c: float) -> tuple[float, float]:
    """Negative-binomial log-pmf with mean ``mean`` and variance ``mean + c*mean**2``
    (Poisson for ``c == 0``), and the magnitude of its terms (for a rounding tolerance)."""
    if c == 0:
        terms = [x * math.log(mean), -mean, -math.lgamma(x + 1)]
    else:
        k = 1.0 / c
        terms = [
            math.lgamma(x + k),
            -math.lgamma(k),
            -math.lgamma(x + 1),
            k * math.log(k / (k + mean)),
            x * math.log(mean / (k + mean)),
        ]
    return math.fsum(terms), sum(abs(t) for t in terms)


def nb_loglik(x: float, mu: np.ndarray, c: float) -> np.ndarray:
    """The part of the log-likelihood of ``x`` that depends on the mean ``mu``."""
    out: np.ndarray
    if c == 0:
        out = x * np.log(mu) - mu
    else:
        k = 1.0 / c
        out = x * np.log(mu / (k + mu)) + k * np.log(k / (k + mu))
    return out


# ----- llr -----


@PROPS
@given(counts, means, dispersions, st.floats(0.05, 50))
def test_llr_is_a_negative_binomial_log_pmf_difference(
    x: int, m: float, c: float, rho: float
) -> None:
    alt, scale_alt = nb_logpmf(x, rho * m, c)
    null, scale_null = nb_logpmf(x, m, c)
    tol = 1e-12 * (scale_alt + scale_null) + 1e-12
    assert llr(x, m, c, rho) == pytest.approx(alt - null, rel=1e-9, abs=tol)


@PROPS
@given(real_counts, means, dispersions, st.floats(0.05, 50))
def test_llr_is_linear_in_the_count(x: float, m: float, c: float, rho: float) -> None:
    a, b = llr_coefficients(m, c, rho)
    assert llr(x, m, c, rho) == a * x + b
    assert llr(0.0, m, c, rho) == b


@pytest.mark.parametrize(("m", "c"), [(1.0, 0.5), (50.0, 0.02), (3.0, 0.0)])
def test_llr_at_rho_one_is_zero(m: float, c: float) -> None:
    for x in (0.0, 1.0, 7.0, 1e4):
        assert llr(x, m, c, 1.0) == 0.0


@pytest.mark.parametrize("m", [0.5, 10.0, 2000.0])
def test_llr_tends_to_poisson_as_dispersion_vanishes(m: float) -> None:
    for x, rho in ((0, 2.0), (15, 3.0), (4, 0.2)):
        assert llr(x, m, 1e-9, rho) == pytest.approx(llr(x, m, 0.0, rho), rel=1e-5, abs=1e-6)


# ----- glr_up -----


@PROPS
@given(real_counts, means, dispersions)
def test_glr_up_is_the_maximum_of_llr_over_a_grid(x: float, m: float, c: float) -> None:
    # A fine grid of log(rho) on [0, log(x/m) + 0.5], which contains the maximiser.
    top = math.log(max(x / m, 1.0)) + 0.5
    u = np.linspace(0.0, top, 20_001)
    mu = m * np.exp(u)
    ll = nb_loglik(x, mu, c) - nb_loglik(x, np.array([m]), c)[0]
    grid_max = float(ll.max())
    # Between grid points the curve is within curvature * step**2 / 8 of a grid value.
    mu_top = float(mu[-1])
    curvature = mu_top if c == 0 else (x + 1 / c) * min(0.25, mu_top * c)
    tol = curvature * (top / 20_000) ** 2 / 8 + 1e-9 * (1 + x + mu_top)
    g = glr_up(x, m, c)
    assert g >= grid_max - 1e-9 * (1 + x + mu_top)
    assert g <= grid_max + tol


@PROPS
@given(real_counts, means, dispersions, st.floats(1.0, 1e3))
def test_glr_up_bounds_llr_for_any_upward_rho(x: float, m: float, c: float, rho: float) -> None:
    g = glr_up(x, m, c)
    assert g >= 0.0
    assert g >= llr(x, m, c, rho) - 1e-9 * (1 + x + rho * m)


@PROPS
@given(counts, means, dispersions)
def test_glr_up_is_the_llr_at_the_maximum_likelihood_rate(x: int, m: float, c: float) -> None:
    if x <= m:
        assert glr_up(x, m, c) == 0.0
        return
    alt, scale_alt = nb_logpmf(x, float(x), c)
    null, scale_null = nb_logpmf(x, m, c)
    tol = 1e-12 * (scale_alt + scale_null) + 1e-12
    assert glr_up(x, m, c) == pytest.approx(alt - null, rel=1e-9, abs=tol)


@PROPS
@given(means, dispersions, st.floats(0, 5000), st.floats(0, 5000))
def test_glr_up_grows_with_the_count(m: float, c: float, x1: float, x2: float) -> None:
    lo, hi = sorted((x1, x2))
    assert glr_up(lo, m, c) <= glr_up(hi, m, c) + 1e-9 * (1 + hi)


def test_glr_up_never_negative_just_above_the_mean() -> None:
    # The two terms cancel here; rounding once left values like -1e-10.
    rng = np.random.default_rng(7)
    for m, c, eps in zip(
        10 ** rng.uniform(-3, 5, 2000),
        10 ** rng.uniform(-4, 1, 2000),
        10 ** rng.uniform(-15, -5, 2000),
        strict=True,
    ):
        assert glr_up(m * (1 + eps), m, c) >= 0.0


# ----- could_exceed -----


@PROPS
@given(real_counts, means, dispersions, st.floats(0.0, 1.0, exclude_min=True))
def test_could_exceed_is_necessary(x: float, m: float, c: float, frac: float) -> None:
    # Thresholds at or below the statistic: the cheap check must never rule them out.
    g = glr_up(x, m, c)
    assume(g > 0)
    assert could_exceed(x, m, g * frac)
    assert could_exceed(x, m, g)


@PROPS
@given(real_counts, means, dispersions, st.floats(-10, 200))
def test_could_exceed_never_contradicts_glr_up(x: float, m: float, c: float, h: float) -> None:
    if glr_up(x, m, c) >= h:
        assert could_exceed(x, m, h)


@pytest.mark.parametrize(
    ("x", "m", "h", "expected"),
    [
        (10.0, 10.0, 1.0, False),  # at the mean
        (3.0, 10.0, 1.0, False),  # below the mean
        (12.0, 10.0, 1.0, False),  # (x - m)^2 = 4 < h m = 10
        (14.0, 10.0, 1.0, True),  # 16 >= 10
        (0.0, 10.0, 0.0, True),  # non-positive thresholds are always reachable
        (0.0, 10.0, -1.0, True),
        (1e4, 1.0, 50.0, True),
    ],
)
def test_could_exceed_table(x: float, m: float, h: float, expected: bool) -> None:
    assert could_exceed(x, m, h) is expected
    if not expected and h > 0:
        # Consistent with the statistic for any dispersion.
        for c in (0.0, 0.02, 1.0):
            assert glr_up(x, m, c) < h


# ----- binomial_excess -----


def kl_bernoulli(q: float, p: float) -> float:
    """KL(q || p) between Bernoulli distributions, with 0 log 0 = 0."""
    return sum(a * math.log(a / b) for a, b in ((q, p), (1 - q, 1 - p)) if a > 0)


@PROPS
@given(
    st.floats(1e-3, 1e6),
    st.floats(0.0, 1.0),
    st.floats(1e-6, 1 - 1e-6),
)
def test_binomial_excess_is_n_times_kl(n: float, q: float, p0: float) -> None:
    k = q * n
    got = binomial_excess(k, n, p0)
    if k / n <= p0:
        assert got == 0.0
    else:
        scale = n * (1 + abs(math.log(p0)) + abs(math.log1p(-p0)))
        assert got == pytest.approx(n * kl_bernoulli(k / n, p0), rel=1e-9, abs=1e-12 * scale)
        assert got >= 0.0


@pytest.mark.parametrize(
    ("k", "n", "p0", "expected"),
    [
        (0.0, 10.0, 0.1, 0.0),
        (1.0, 10.0, 0.1, 0.0),  # exactly the usual share
        (5.0, 0.0, 0.1, 0.0),  # no targets at all
        (5.0, -1.0, 0.1, 0.0),
        (10.0, 10.0, 0.5, 10 * math.log(2)),  # everyone outside
        (3.0, 4.0, 0.5, 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))),
        (2.0, 100.0, 0.01, 100 * (0.02 * math.log(2) + 0.98 * math.log(0.98 / 0.99))),
    ],
)
def test_binomial_excess_table(k: float, n: float, p0: float, expected: float) -> None:
    assert binomial_excess(k, n, p0) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_binomial_excess_with_a_zero_usual_share_is_finite() -> None:
    got = binomial_excess(3.0, 10.0, 0.0)
    assert math.isfinite(got)
    assert got > binomial_excess(3.0, 10.0, 0.01) > 0


# ----- Chernoff bound, by simulation -----

SAMPLES = 200_000


def sample_counts(rng: np.random.Generator, m: float, c: float) -> np.ndarray:
    if c == 0:
        return rng.poisson(m, SAMPLES)
    k = 1.0 / c
    return rng.negative_binomial(k, k / (k + m), SAMPLES)


def tail_frequency(sample: np.ndarray, m: float, c: float, h: float) -> float:
    values, freq = np.unique(sample, return_counts=True)
    hit = np.array([glr_up(float(v), m, c) >= h for v in values])
    return float(freq[hit].sum()) / len(sample)


@pytest.mark.parametrize(
    ("m", "c", "h"),
    [(5.0, 0.1, 2.0), (20.0, 0.5, 3.0), (1.0, 0.02, 4.0), (100.0, 0.05, 5.0), (10.0, 0.0, 3.0)],
)
def test_false_alarm_rate_is_below_exp_minus_h(m: float, c: float, h: float) -> None:
    rng = np.random.default_rng([20260301, int(m), int(100 * c), int(h)])
    sample = sample_counts(rng, m, c)
    # The sampler itself: mean m and variance m + c m^2.
    assert sample.mean() == pytest.approx(m, abs=5 * math.sqrt((m + c * m * m) / SAMPLES))
    assert sample.var() == pytest.approx(m + c * m * m, rel=0.05)
    freq = tail_frequency(sample, m, c, h)
    bound = math.exp(-h)
    assert 0 < freq <= bound + 4 * math.sqrt(bound / SAMPLES)


def test_poisson_statistic_on_overdispersed_counts_breaks_the_bound() -> None:
    # The reason for the negative binomial: ignoring overdispersion (c = 0 in the
    # statistic) makes false alarms far more frequent than exp(-h).
    m, c, h = 20.0, 0.5, 3.0
    sample = sample_counts(np.random.default_rng(11), m, c)
    assert tail_frequency(sample, m, 0.0, h) > 3 * math.exp(-h)
    assert tail_frequency(sample, m, c, h) <= math.exp(-h)


def test_could_exceed_at_rounding_level() -> None:
    # Found by hypothesis: glr_up rounds to ~1e-16 where the true value is ~1e-33.
    x, m = 1.0, 0.9999999999999999
    assert could_exceed(x, m, glr_up(x, m, 0.0))
