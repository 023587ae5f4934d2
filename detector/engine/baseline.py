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
from detector.errors import StateError

_DAY = 86_400.0
_HOUR = 3_600.0
# 1970-01-01 was a Thursday; with this offset day 0 of the weekly profile is Monday.
_EPOCH_WEEKDAY = 3
_MAX_DISPERSION = 5.0
_MIN_FACTOR = 0.05
_MAX_FACTOR = 20.0


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


Position = tuple[int, float, int, float]
"""Where a time falls in the profiles: hour slot, fraction towards the next hour
centre, day slot (0 = Monday), fraction towards the next noon."""


def position(t: float) -> Position:
    """The profile position of event time ``t`` (shared by every rule in a bucket)."""
    h = (t % _DAY) / _HOUR - 0.5
    hi = math.floor(h)
    days = t / _DAY - 0.5 + _EPOCH_WEEKDAY
    di = math.floor(days)
    return hi % 24, h - hi, di % 7, days - di


def _factor(num: float, den: float) -> float:
    if den <= 0:
        return 1.0
    return min(max(num / den, _MIN_FACTOR), _MAX_FACTOR)


@dataclass
class Baseline:
    """Seasonal expected count per bucket and its overdispersion (plain, serialisable).

    Each profile slot is a ratio of two exponentially weighted means (counts over
    the level-times-other-profile they were compared with), which stays stable for
    sparse series such as a rule's reversals, where most buckets hold zero.
    """

    level: float = 0.0
    daily_num: list[float] = field(default_factory=lambda: [0.0] * 24)
    daily_den: list[float] = field(default_factory=lambda: [0.0] * 24)
    weekly_num: list[float] = field(default_factory=lambda: [0.0] * 7)
    weekly_den: list[float] = field(default_factory=lambda: [0.0] * 7)
    daily_n: list[int] = field(default_factory=lambda: [0] * 24)
    weekly_n: list[int] = field(default_factory=lambda: [0] * 7)
    disp_num: float = 0.0
    disp_den: float = 0.0
    n: int = 0
    _d: list[float] = field(init=False, repr=False, compare=False)
    _w: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived caches (not part of the state): the factor of every slot.
        self._d = [_factor(a, b) for a, b in zip(self.daily_num, self.daily_den, strict=True)]
        self._w = [_factor(a, b) for a, b in zip(self.weekly_num, self.weekly_den, strict=True)]

    def daily(self, slot: int) -> float:
        """The daily factor of an hourly slot."""
        return self._d[slot]

    def weekly(self, slot: int) -> float:
        """The weekly factor of a day slot (0 = Monday)."""
        return self._w[slot]

    def seasonal_at(self, pos: Position) -> float:
        """Combined daily x weekly factor at a profile position."""
        hi, hf, di, df = pos
        d, w = self._d, self._w
        d0 = d[hi]
        w0 = w[di]
        return (d0 + (d[(hi + 1) % 24] - d0) * hf) * (w0 + (w[(di + 1) % 7] - w0) * df)

    def expected_at(self, pos: Position) -> float:
        """Expected count of the bucket whose midpoint has this position."""
        return max(self.level * self.seasonal_at(pos), MIN_MEAN)

    def expected(self, t: float) -> float:
        """Expected count of the bucket whose midpoint is ``t``."""
        return self.expected_at(position(t))

    def dispersion(self, rates: Rates) -> float:
        """Current overdispersion ``1/k``, conservative while warming up."""
        est = self.disp_num / self.disp_den if self.disp_den > 0 else rates.warmup_dispersion
        if self.n < rates.warmup_buckets:
            est = max(est, rates.warmup_dispersion)
        return min(max(est, rates.min_dispersion), _MAX_DISPERSION)

    def warming_up(self, rates: Rates) -> bool:
        """True until enough buckets have been learned to trust the seasonal profile."""
        return self.n < rates.warmup_buckets

    def learn(self, pos: Position, x: float, rates: Rates) -> None:
        """Fold the count ``x`` of the bucket at position ``pos`` into the baseline."""
        hi, hf, di, df = pos
        # Learning goes to the slot the bucket lies in (nearest centre).
        hs = (hi + 1) % 24 if hf >= 0.5 else hi
        ds = (di + 1) % 7 if df >= 0.5 else di
        season = self.seasonal_at(pos)
        n = self.n
        if n > 0:
            mu = max(self.level * season, MIN_MEAN)
            a = max(rates.dispersion, 1.0 / (n + 1))
            resid = x - mu
            self.disp_num += a * ((resid * resid - x) - self.disp_num)
            self.disp_den += a * (mu * mu - self.disp_den)
        a = max(rates.level, 1.0 / (n + 1))
        level = self.level = self.level + a * (x / season - self.level)
        a = max(rates.daily, 1.0 / (self.daily_n[hs] + 1))
        num, den = self.daily_num, self.daily_den
        num[hs] += a * (x - num[hs])
        den[hs] += a * (level * self._w[ds] - den[hs])
        self._d[hs] = _factor(num[hs], den[hs])
        self.daily_n[hs] += 1
        # The weekly profile is only meaningful once the daily one has a full day.
        if n >= rates.day_buckets:
            a = max(rates.weekly, 1.0 / (self.weekly_n[ds] + 1))
            num, den = self.weekly_num, self.weekly_den
            num[ds] += a * (x - num[ds])
            den[ds] += a * (level * self._d[hs] - den[ds])
            self._w[ds] = _factor(num[ds], den[ds])
            self.weekly_n[ds] += 1
        self.n = n + 1

    def normalise(self) -> None:
        """Move the profiles' mean into the level (called once per day of event time)."""
        for num, cache in ((self.daily_num, self._d), (self.weekly_num, self._w)):
            mean = sum(cache) / len(cache)
            if mean > 0:
                for i in range(len(num)):
                    num[i] /= mean
                self.level *= mean
        self.__post_init__()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (floats round-trip exactly through orjson)."""
        return {
            "level": self.level,
            "daily_num": list(self.daily_num),
            "daily_den": list(self.daily_den),
            "weekly_num": list(self.weekly_num),
            "weekly_den": list(self.weekly_den),
            "daily_n": list(self.daily_n),
            "weekly_n": list(self.weekly_n),
            "disp_num": self.disp_num,
            "disp_den": self.disp_den,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Baseline:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                level=float(d["level"]),
                daily_num=[float(v) for v in d["daily_num"]],
                daily_den=[float(v) for v in d["daily_den"]],
                weekly_num=[float(v) for v in d["weekly_num"]],
                weekly_den=[float(v) for v in d["weekly_den"]],
                daily_n=[int(v) for v in d["daily_n"]],
                weekly_n=[int(v) for v in d["weekly_n"]],
                disp_num=float(d["disp_num"]),
                disp_den=float(d["disp_den"]),
                n=int(d["n"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"baseline is malformed: {exc!r}") from None
