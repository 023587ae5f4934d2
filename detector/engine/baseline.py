"""A rule's learned baseline: level x daily profile x weekly profile, plus noise.

The expected count of a bucket is ``level * daily(hour) * weekly(day)``; the
daily profile has 24 hourly factors interpolated linearly between hour centres
(so the expectation never jumps on the hour) and the weekly profile has 7 day
factors interpolated between noons. Each part is an exponentially weighted mean
with its own half-life, starting as a running mean so that a new rule learns
quickly. The noise is negative binomial; its overdispersion ``1/k`` is a
method-of-moments estimate, ``E[(x - mu)^2 - x] / E[mu^2]``.

The baseline never reads a clock: the bucket's event time is an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from detector.engine.stats import MIN_MEAN

_DAY = 86_400.0
_HOUR = 3_600.0
# 1970-01-01 was a Thursday; with this offset day 0 of the weekly profile is Monday.
_EPOCH_WEEKDAY = 3
_MAX_DISPERSION = 5.0


def _decay(half_life: float) -> float:
    """Per-observation weight of an exponentially weighted mean with this half-life."""
    return float(1.0 - 0.5 ** (1.0 / half_life))


@dataclass(frozen=True)
class Rates:
    """Learning rates derived once from the configuration (per observation)."""

    level: float
    daily: float
    weekly: float
    dispersion: float
    min_dispersion: float
    warmup_dispersion: float
    warmup_buckets: int
    day_buckets: int

    @classmethod
    def from_half_lives(
        cls,
        bucket_seconds: float,
        level_buckets: float,
        daily_days: float,
        weekly_weeks: float,
        dispersion_buckets: float,
        min_dispersion: float,
        warmup_dispersion: float,
        warmup_buckets: int,
    ) -> Rates:
        per_hour = _HOUR / bucket_seconds  # observations of one hourly slot per day
        per_day = _DAY / bucket_seconds  # observations of one day slot per week
        return cls(
            level=_decay(level_buckets),
            daily=_decay(daily_days * per_hour),
            weekly=_decay(weekly_weeks * per_day),
            dispersion=_decay(dispersion_buckets),
            min_dispersion=min_dispersion,
            warmup_dispersion=warmup_dispersion,
            warmup_buckets=warmup_buckets,
            day_buckets=max(1, round(per_day)),
        )


def _position(t: float) -> tuple[int, float, int, float]:
    """Hour slot + fraction towards the next slot centre, day slot + fraction."""
    h = (t % _DAY) / _HOUR - 0.5
    hi = math.floor(h)
    days = t / _DAY - 0.5 + _EPOCH_WEEKDAY
    di = math.floor(days)
    return hi % 24, h - hi, di % 7, days - di


@dataclass
class Baseline:
    """Seasonal expected count per bucket and its overdispersion (plain, serialisable)."""

    level: float = 0.0
    daily: list[float] = field(default_factory=lambda: [1.0] * 24)
    weekly: list[float] = field(default_factory=lambda: [1.0] * 7)
    daily_n: list[int] = field(default_factory=lambda: [0] * 24)
    weekly_n: list[int] = field(default_factory=lambda: [0] * 7)
    disp_num: float = 0.0
    disp_den: float = 0.0
    n: int = 0

    def seasonal(self, t: float) -> float:
        """Combined daily x weekly factor at event time ``t``."""
        hi, hf, di, df = _position(t)
        d, w = self.daily, self.weekly
        return (d[hi] + (d[(hi + 1) % 24] - d[hi]) * hf) * (w[di] + (w[(di + 1) % 7] - w[di]) * df)

    def expected(self, t: float) -> float:
        """Expected count of the bucket whose midpoint is ``t``."""
        return max(self.level * self.seasonal(t), MIN_MEAN)

    def dispersion(self, rates: Rates) -> float:
        """Current overdispersion ``1/k``, conservative while warming up."""
        est = self.disp_num / self.disp_den if self.disp_den > 0 else rates.warmup_dispersion
        if self.n < rates.warmup_buckets:
            est = max(est, rates.warmup_dispersion)
        return min(max(est, rates.min_dispersion), _MAX_DISPERSION)

    def warming_up(self, rates: Rates) -> bool:
        """True until enough buckets have been learned to trust the seasonal profile."""
        return self.n < rates.warmup_buckets

    def learn(self, t: float, x: float, rates: Rates) -> None:
        """Fold the count ``x`` of the bucket with midpoint ``t`` into the baseline."""
        hi, hf, di, df = _position(t)
        # Learning goes to the slot the bucket lies in (nearest centre).
        hs = (hi + 1) % 24 if hf >= 0.5 else hi
        ds = (di + 1) % 7 if df >= 0.5 else di
        mu = self.expected(t)
        if self.n > 0:
            a = max(rates.dispersion, 1.0 / (self.n + 1))
            resid = x - mu
            self.disp_num += a * ((resid * resid - x) - self.disp_num)
            self.disp_den += a * (mu * mu - self.disp_den)
        season = self.seasonal(t)
        a = max(rates.level, 1.0 / (self.n + 1))
        self.level += a * (x / season - self.level)
        if self.level > 0:
            wk = self.weekly[ds]
            dy = self.daily[hs]
            a = max(rates.daily, 1.0 / (self.daily_n[hs] + 1))
            self.daily[hs] = dy + a * (x / (self.level * wk) - dy)
            self.daily_n[hs] += 1
            # The weekly profile is only meaningful once the daily one has a full day.
            if self.n >= rates.day_buckets:
                a = max(rates.weekly, 1.0 / (self.weekly_n[ds] + 1))
                self.weekly[ds] = wk + a * (x / (self.level * self.daily[hs]) - wk)
                self.weekly_n[ds] += 1
        self.n += 1

    def normalise(self) -> None:
        """Move the profiles' mean into the level (called once per day of event time)."""
        for profile in (self.daily, self.weekly):
            mean = sum(profile) / len(profile)
            if mean > 0:
                for i, v in enumerate(profile):
                    profile[i] = v / mean
                self.level *= mean

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (floats round-trip exactly through orjson)."""
        return {
            "level": self.level,
            "daily": list(self.daily),
            "weekly": list(self.weekly),
            "daily_n": list(self.daily_n),
            "weekly_n": list(self.weekly_n),
            "disp_num": self.disp_num,
            "disp_den": self.disp_den,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Baseline:
        """Inverse of :meth:`to_dict`."""
        return cls(
            level=float(d["level"]),
            daily=[float(v) for v in d["daily"]],
            weekly=[float(v) for v in d["weekly"]],
            daily_n=[int(v) for v in d["daily_n"]],
            weekly_n=[int(v) for v in d["weekly_n"]],
            disp_num=float(d["disp_num"]),
            disp_den=float(d["disp_den"]),
            n=int(d["n"]),
        )
