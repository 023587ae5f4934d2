"""The learned baseline (detector.engine.baseline): convergence on constant and
seasonal series against the known truth, the overdispersion estimate on seeded
negative-binomial counts, profile positions against a naive datetime
recomputation, and the lossless round trip of its state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import EngineConfig
from detector.engine.baseline import Baseline, position
from detector.engine.params import Params
from detector.errors import StateError

CFG = EngineConfig()
RATES = Params.of(CFG).rates
DAY = 86_400
T0 = 1_767_571_200  # 2026-01-05T00:00:00Z, a Monday
PROPS = settings(max_examples=60, deadline=None, derandomize=True)

Series = Callable[[int, float], float]
"""The count of bucket ``i`` whose midpoint is ``t``."""


def learn(series: Series, days: float, baseline: Baseline | None = None) -> Baseline:
    """Learn one-minute buckets from ``T0`` as the engine does (normalised once a day)."""
    b = baseline or Baseline()
    for i in range(round(days * RATES.day_buckets)):
        t = T0 + (i + 0.5) * CFG.bucket_seconds
        b.learn(position(t), series(i, t), RATES)
        if b.n % RATES.day_buckets == 0:
            b.normalise()
    return b


def test_fixtures() -> None:
    assert RATES.day_buckets == 1440 and RATES.warmup_buckets == 1440
    assert datetime.fromtimestamp(T0, tz=UTC).weekday() == 0


# ----- convergence ----------------------------------------------------------------------------


@pytest.mark.parametrize("x", [0.05, 0.2, 3.0, 40.0, 1000.0])
def test_constant_input_is_expected_everywhere(x: float) -> None:
    b = learn(lambda _i, _t: x, 2)
    for j in range(0, 7 * 24):  # every hour of the coming week, weekend included
        t = T0 + 2 * DAY + j * 3600 + 1234.5
        assert b.expected(t) == pytest.approx(x, rel=1e-9)
    assert not b.warming_up(RATES)


def test_expected_count_is_never_below_the_floor() -> None:
    b = learn(lambda _i, _t: 0.0, 1)
    assert b.expected(T0 + DAY + 30) > 0


def sinusoid(level: float, amplitude: float, peak_hour: float) -> Series:
    def series(_i: int, t: float) -> float:
        hour = (t % DAY) / 3600
        return level * (1 + amplitude * math.cos(2 * math.pi * (hour - peak_hour) / 24))

    return series


@pytest.mark.parametrize(
    ("level", "amplitude", "peak_hour"),
    [(10.0, 0.4, 15.0), (200.0, 0.6, 3.0), (1.0, 0.3, 20.0), (50.0, 0.5, 0.0)],
)
def test_daily_sinusoid_is_tracked_after_three_days(
    level: float, amplitude: float, peak_hour: float
) -> None:
    """The fourth day's one-step-ahead expectation (what a bucket is judged against)."""
    truth = sinusoid(level, amplitude, peak_hour)
    b = learn(truth, 3)
    errors = []
    for i in range(3 * RATES.day_buckets, 4 * RATES.day_buckets):
        t = T0 + (i + 0.5) * CFG.bucket_seconds
        errors.append(abs(b.expected(t) / truth(i, t) - 1))
        b.learn(position(t), truth(i, t), RATES)
        if b.n % RATES.day_buckets == 0:
            b.normalise()
    # A flat expectation would be off by the amplitude, an hour's phase error by about
    # amplitude * 2 pi / 24 (up to 16% here). What is left after three days is the
    # first day's learning (the profile slots are running means until ~4 days of data):
    # the amplitude is still a little too small.
    assert max(errors) < 0.08
    assert sum(errors) / len(errors) < 0.03


@pytest.mark.parametrize(
    ("k", "mean"),
    [(4.0, 50.0), (4.0, 200.0), (10.0, 50.0), (10.0, 200.0), (25.0, 50.0), (25.0, 200.0)],
)
def test_dispersion_of_negative_binomial_counts_is_one_over_k(k: float, mean: float) -> None:
    rng = np.random.default_rng([20260105, int(k), int(mean)])
    counts = rng.negative_binomial(k, k / (k + mean), 3 * RATES.day_buckets).astype(float)
    b = learn(lambda i, _t: float(counts[i]), 3)
    assert b.dispersion(RATES) == pytest.approx(1 / k, rel=0.15)


def test_poisson_counts_get_the_dispersion_floor() -> None:
    rng = np.random.default_rng(7)
    counts = rng.poisson(80.0, 3 * RATES.day_buckets).astype(float)
    b = learn(lambda i, _t: float(counts[i]), 3)
    assert b.dispersion(RATES) == CFG.min_dispersion


@pytest.mark.parametrize("buckets", [0, 1, 60, 1439])
def test_dispersion_is_conservative_while_warming_up(buckets: int) -> None:
    rng = np.random.default_rng(buckets)
    counts = rng.poisson(80.0, buckets).astype(float)
    b = learn(lambda i, _t: float(counts[i]), buckets / RATES.day_buckets)
    assert b.n == buckets and b.warming_up(RATES)
    assert b.dispersion(RATES) == CFG.warmup_dispersion


# ----- profile positions ----------------------------------------------------------------------


@PROPS
@given(st.integers(0, 4_000_000_000))
def test_position_against_calendar(t: int) -> None:
    """Hour slot: the hour whose centre was last passed; day slot: the day whose noon was."""
    hi, hf, di, df = position(float(t))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    half_hour_ago = epoch + timedelta(seconds=t - 1800)
    half_day_ago = epoch + timedelta(seconds=t - DAY // 2)
    assert hi == half_hour_ago.hour
    assert di == half_day_ago.weekday()
    assert hf == pytest.approx((half_hour_ago.minute * 60 + half_hour_ago.second) / 3600)
    seconds_into_day = half_day_ago.hour * 3600 + half_day_ago.minute * 60 + half_day_ago.second
    assert df == pytest.approx(seconds_into_day / DAY)


# ----- state ----------------------------------------------------------------------------------

observations = st.lists(
    st.tuples(st.integers(0, 30 * 1440), st.floats(0, 1e5, allow_subnormal=False)),
    max_size=60,
)


@PROPS
@given(observations, st.booleans())
def test_round_trip_is_exact(obs: list[tuple[int, float]], normalise: bool) -> None:
    b = Baseline()
    for bucket, x in obs:
        b.learn(position(T0 + (bucket + 0.5) * 60), x, RATES)
    if normalise:
        b.normalise()
    back = Baseline.from_dict(orjson.loads(orjson.dumps(b.to_dict())))
    assert back == b
    assert back.to_dict() == b.to_dict()
    for hour in range(0, 7 * 24, 5):  # the derived factors are rebuilt identically
        t = T0 + hour * 3600 + 17.0
        assert back.expected(t) == b.expected(t)
    assert back.dispersion(RATES) == b.dispersion(RATES)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("level"),
        lambda d: d.pop("daily_n"),
        lambda d: d.update(n="many"),
        lambda d: d.update(daily_num=None),
        lambda d: d.update(weekly_den=[1.0] * 6),  # a week of six days
    ],
    ids=["no level", "no daily_n", "n not a number", "daily_num null", "short weekly"],
)
def test_malformed_state_is_a_state_error(damage: Callable[[dict[str, object]], object]) -> None:
    d = learn(lambda _i, _t: 5.0, 0.1).to_dict()
    damage(d)
    with pytest.raises(StateError, match="baseline is malformed"):
        Baseline.from_dict(d)
