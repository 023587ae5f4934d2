"""A seeded model of enforcement traffic: rules, spam waves and incidents.

Each rule deactivates accounts at a rate ``base * daily(t) * weekly(t) * drift(t)``
per minute, where ``drift`` is a slow log-normal AR(1) wander, and each one-minute
bucket gets a gamma-distributed multiplier (so counts are negative binomial, not
Poisson). Targets are drawn from the rule's own make-up over the cells
(tenure band | strike band | region). Spam waves raise a rule's rate on its usual
make-up; incidents add wrongful deactivations drawn from another population, flood
a rule's reversals, or silence it. Everything is a pure function of the seed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from detector.wire.aggregates import RuleTick

AGES = ("new", "young", "established", "tenured")
AGE_DAYS = {
    "new": (0.0, 7.0),
    "young": (7.0, 90.0),
    "established": (90.0, 730.0),
    "tenured": (730.0, 4000.0),
}
STRIKES = ("0", "1-2", "3+")
STRIKE_VALUES = {"0": (0, 0), "1-2": (1, 2), "3+": (3, 9)}
REGIONS = ("US", "BR", "IN", "DE", "FR", "JP", "NG", "ID")
CELLS = tuple(f"{a}|{s}|{r}" for a in AGES for s in STRIKES for r in REGIONS)
CELL_INDEX = {c: i for i, c in enumerate(CELLS)}

_AGE_W = {"new": 0.05, "young": 0.15, "established": 0.30, "tenured": 0.50}
_STRIKE_W = {"0": 0.85, "1-2": 0.12, "3+": 0.03}
_REGION_W = {
    "US": 0.25,
    "BR": 0.15,
    "IN": 0.2,
    "DE": 0.08,
    "FR": 0.07,
    "JP": 0.08,
    "NG": 0.07,
    "ID": 0.10,
}


def _population(
    ages: dict[str, float], strikes: dict[str, float], regions: dict[str, float]
) -> np.ndarray:
    p = np.array(
        [
            ages.get(a, 0.0) * strikes.get(s, 0.0) * regions.get(r, 0.0)
            for a in AGES
            for s in STRIKES
            for r in REGIONS
        ]
    )
    out: np.ndarray = p / p.sum()
    return out


GENERAL = _population(_AGE_W, _STRIKE_W, _REGION_W)
"""The platform's account population: who a rule that hits at random hits."""
TENURED_CLEAN = _population({"tenured": 1.0}, {"0": 1.0}, _REGION_W)
"""Long-tenured accounts with no prior strikes."""

TARGETS = {"general": GENERAL, "tenured_clean": TENURED_CLEAN}


@dataclass(frozen=True)
class RuleSpec:
    """One simulated rule."""

    rule_id: str
    rate_per_min: float
    daily_amplitude: float = 0.4
    peak_hour: float = 15.0
    weekend_factor: float = 0.8
    dispersion_k: float = 30.0
    drift_sd: float = 0.08
    drift_tau_min: float = 90.0
    makeup: tuple[float, ...] = tuple(GENERAL)
    reversal_fraction: float = 0.02
    version: str = "1"
    broad: bool = False
    """Hits the platform at large rather than a distinctive population: who-is-hit
    evidence cannot tell its incidents from its spam waves."""

    def seasonal(self, t: np.ndarray) -> np.ndarray:
        """Daily x weekly factor at epoch seconds ``t`` (mean about 1)."""
        hour = (t % 86_400) / 3_600
        daily = 1 + self.daily_amplitude * np.cos(2 * math.pi * (hour - self.peak_hour) / 24)
        weekday = ((t // 86_400).astype(np.int64) + 3) % 7  # 0 = Monday
        weekly = np.where(weekday >= 5, self.weekend_factor, 1.0)
        out: np.ndarray = daily * weekly
        return out


@dataclass(frozen=True)
class Incident:
    """Something going wrong with one or more rules, with a known onset (ground truth)."""

    kind: str
    rule_ids: tuple[str, ...]
    onset: float
    duration: float
    multiplier: float
    ramp_seconds: float = 0.0
    target: str = "general"
    """Population the wrongful deactivations come from: ``general`` or ``tenured_clean``."""
    effect: str = "deactivations"
    """``deactivations`` (extra wrongful ones), ``reversals`` (a flood of reversals)
    or ``silence`` (the rule stops deciding)."""

    def factor(self, t: np.ndarray) -> np.ndarray:
        """Multiplier of the incident at times ``t`` (1 outside it), ramped linearly."""
        inside = (t >= self.onset) & (t < self.onset + self.duration)
        if self.ramp_seconds > 0:
            progress = np.clip((t - self.onset) / self.ramp_seconds, 0.0, 1.0)
        else:
            progress = np.ones_like(t)
        return np.where(inside, 1 + (self.multiplier - 1) * progress, 1.0)


@dataclass(frozen=True)
class SpamWave:
    """A legitimate surge: more bad actors, hit by the rule on its usual make-up."""

    rule_id: str
    onset: float
    duration: float
    multiplier: float
    ramp_seconds: float = 600.0

    def factor(self, t: np.ndarray) -> np.ndarray:
        """Multiplier at ``t``: ramps up, holds, ramps down."""
        up = np.clip((t - self.onset) / self.ramp_seconds, 0.0, 1.0)
        down = np.clip((self.onset + self.duration - t) / self.ramp_seconds, 0.0, 1.0)
        return np.asarray(1 + (self.multiplier - 1) * np.minimum(up, down))


def _rule_key(rule_id: str) -> int:
    """Stable per-rule seed component: a rule's traffic does not depend on the others."""
    return zlib.crc32(rule_id.encode())


@dataclass
class Chunk:
    """One rule's simulated ticks: counts and the true rates behind them."""

    ticks: np.ndarray
    legit: np.ndarray
    """Legitimate deactivations per tick and cell."""
    wrong: np.ndarray
    """Wrongful deactivations (the incident's) per tick and cell."""
    reversals: np.ndarray
    legit_rate: np.ndarray
    """True expected legitimate deactivations per tick (noise and waves included)."""
    wrong_rate: np.ndarray
    reversal_rate: np.ndarray
    base_rate: np.ndarray
    """The rule's seasonal rate times the bucket's noise: what incidents multiply."""
    base_reversal_rate: np.ndarray
    """Reversal rate without any incident."""
    normal_rate: np.ndarray
    """Legitimate rate had no incident silenced the rule."""


@dataclass
class TickTruth:
    """Ground truth of one tick: wrongful deactivations per rule."""

    wrongful: dict[str, float] = field(default_factory=dict)


@dataclass
class Simulator:
    """Generates per-tick aggregates (fast path) or individual events (see :mod:`.events`)."""

    rules: list[RuleSpec]
    seed: int
    start: float
    end: float
    tick_seconds: int = 5
    incidents: list[Incident] = field(default_factory=list)
    waves: list[SpamWave] = field(default_factory=list)
    _drift: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._minutes = math.ceil((self.end - self.start) / 60) + 1
        for spec in self.rules:
            rng = np.random.default_rng([self.seed, _rule_key(spec.rule_id), 0])
            phi = math.exp(-1 / spec.drift_tau_min)
            noise = rng.normal(0, spec.drift_sd * math.sqrt(1 - phi * phi), self._minutes)
            path = np.empty(self._minutes)
            acc = rng.normal(0, spec.drift_sd)
            for j in range(self._minutes):  # AR(1); once per rule and run
                acc = phi * acc + noise[j]
                path[j] = acc
            self._drift[spec.rule_id] = path

    def expected_per_tick(self, spec: RuleSpec, t: np.ndarray) -> np.ndarray:
        """The rule's expected legitimate deactivations per tick, without noise or waves."""
        return np.asarray(spec.rate_per_min * self.tick_seconds / 60 * spec.seasonal(t))

    def _wave_factor(self, rule_id: str, t: np.ndarray) -> np.ndarray:
        f = np.ones_like(t)
        for w in self.waves:
            if w.rule_id == rule_id:
                f = f * w.factor(t)
        return f

    def rule_chunk(self, index: int, t0: float, t1: float) -> Chunk:
        """Counts and true rates of rule ``index`` for the ticks in ``[t0, t1)``."""
        spec = self.rules[index]
        ts = self.tick_seconds
        ticks = np.arange(int(t0 // ts), int(t1 // ts), dtype=np.int64)
        t = (ticks * ts + ts / 2).astype(float)
        rng = np.random.default_rng([self.seed, _rule_key(spec.rule_id), 1, int(t0 // 60)])
        minute = ((t - self.start) // 60).astype(np.int64).clip(0, self._minutes - 1)
        # One gamma multiplier per minute bucket: negative-binomial counts per bucket.
        first_min = int(minute[0]) if len(minute) else 0
        span = int(minute[-1]) - first_min + 1 if len(minute) else 0
        gamma = rng.gamma(spec.dispersion_k, 1 / spec.dispersion_k, span)[minute - first_min]
        base = self.expected_per_tick(spec, t)
        lam = base * np.exp(self._drift[spec.rule_id][minute]) * gamma
        lam = normal = lam * self._wave_factor(spec.rule_id, t)
        wrong_lam = np.zeros_like(lam)
        rev_lam = base * spec.reversal_fraction * np.ones_like(lam)
        target = np.asarray(spec.makeup)
        for inc in self.incidents:
            if spec.rule_id not in inc.rule_ids:
                continue
            f = inc.factor(t)
            if inc.effect == "deactivations":
                wrong_lam = wrong_lam + (f - 1) * base * gamma
                target = TARGETS[inc.target]
            elif inc.effect == "reversals":
                rev_lam = rev_lam * f
            elif inc.effect == "silence":
                lam = np.where(f != 1.0, 0.0, lam)
        legit = _split(rng, rng.poisson(lam), np.asarray(spec.makeup))
        wrong = _split(rng, rng.poisson(wrong_lam), target)
        reversals = rng.poisson(rev_lam).astype(float)
        base_rev = base * spec.reversal_fraction
        return Chunk(
            ticks, legit, wrong, reversals, lam, wrong_lam, rev_lam, base * gamma, base_rev, normal
        )

    def chunks(
        self, t0: float, t1: float, chunk_seconds: float = 3600.0
    ) -> Iterator[list[tuple[RuleSpec, Chunk]]]:
        """Per chunk of time in ``[t0, t1)`` (aligned to ``chunk_seconds``): every rule's chunk."""
        c0 = t0
        while c0 < t1:
            c1 = min(t1, (math.floor(c0 / chunk_seconds) + 1) * chunk_seconds)
            yield [(spec, self.rule_chunk(i, c0, c1)) for i, spec in enumerate(self.rules)]
            c0 = c1

    def aggregates(
        self, t0: float, t1: float, chunk_seconds: float = 3600.0
    ) -> Iterator[tuple[int, list[RuleTick], TickTruth]]:
        """Per tick in ``[t0, t1)`` with activity: the rules' aggregates and the ground truth."""
        for chunk in self.chunks(t0, t1, chunk_seconds):
            per_tick: dict[int, tuple[list[RuleTick], TickTruth]] = {}
            for spec, ch in chunk:
                for agg, wrongful in chunk_aggregates(spec, ch):
                    entry = per_tick.get(agg.tick)
                    if entry is None:
                        entry = per_tick[agg.tick] = ([], TickTruth())
                    entry[0].append(agg)
                    if wrongful:
                        entry[1].wrongful[spec.rule_id] = wrongful
            for tick in sorted(per_tick):
                aggs, truth = per_tick[tick]
                yield tick, aggs, truth


def chunk_aggregates(spec: RuleSpec, ch: Chunk) -> list[tuple[RuleTick, float]]:
    """A rule chunk as engine aggregates, each with its count of wrongful deactivations."""
    total = ch.legit + ch.wrong
    cells_by_row: dict[int, dict[str, float]] = {}
    rows, cols = np.nonzero(total)
    values = total[rows, cols].tolist()
    for r, c, v in zip(rows.tolist(), cols.tolist(), values, strict=True):
        d = cells_by_row.get(r)
        if d is None:
            d = cells_by_row[r] = {}
        d[CELLS[c]] = float(v)
    for r in np.flatnonzero(ch.reversals).tolist():
        cells_by_row.setdefault(r, {})
    sums = total.sum(axis=1).tolist()
    wrong_sums = ch.wrong.sum(axis=1).tolist()
    revs = ch.reversals.tolist()
    ticks = ch.ticks.tolist()
    out = []
    for r in sorted(cells_by_row):
        agg = RuleTick(spec.rule_id, ticks[r], float(sums[r]), revs[r])
        agg.cells = cells_by_row[r]
        agg.versions = [spec.version]
        out.append((agg, float(wrong_sums[r])))
    return out


def _split(rng: np.random.Generator, counts: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Spread per-tick counts over cells with probabilities ``p`` (multinomial)."""
    total = int(counts.sum())
    if not total:
        return np.zeros((len(counts), len(CELLS)), dtype=np.int64)
    rows = np.repeat(np.arange(len(counts)), counts)
    cols = rng.choice(len(CELLS), size=total, p=p)
    flat = np.bincount(rows * len(CELLS) + cols, minlength=len(counts) * len(CELLS))
    return flat.reshape(len(counts), len(CELLS))


def random_rules(
    n: int, seed: int, *, min_rate: float = 0.1, max_rate: float = 500.0
) -> list[RuleSpec]:
    """``n`` rules with log-uniform volumes and their own seasonality, noise and make-up.

    Most rules target a distinctive population (new or young accounts, accounts
    with strikes, a few regions); about one in ten hits broadly, like the platform.
    """
    rng = np.random.default_rng([seed, 999])
    rules = []
    for i in range(n):
        rate = float(math.exp(rng.uniform(math.log(min_rate), math.log(max_rate))))
        broad = bool(rng.random() < 0.1)
        if broad:
            makeup = 0.7 * GENERAL + 0.3 * _population(
                {"new": 0.5, "young": 0.5}, {"1-2": 0.5, "3+": 0.5}, _REGION_W
            )
        else:
            ages = rng.choice(
                AGES, size=rng.integers(1, 3), replace=False, p=[0.45, 0.35, 0.15, 0.05]
            )
            regions = rng.choice(REGIONS, size=rng.integers(2, 5), replace=False)
            strike_w = {"0": rng.uniform(0.05, 0.4), "1-2": 0.4, "3+": rng.uniform(0.1, 0.5)}
            core = _population(
                {a: float(rng.uniform(0.5, 1.5)) for a in ages},
                strike_w,
                {r: float(rng.uniform(0.5, 1.5)) for r in regions},
            )
            makeup = 0.97 * core + 0.03 * GENERAL
        rules.append(
            RuleSpec(
                rule_id=f"rule-{i:03d}",
                rate_per_min=rate,
                daily_amplitude=float(rng.uniform(0.2, 0.6)),
                peak_hour=float(rng.uniform(0, 24)),
                weekend_factor=float(rng.uniform(0.6, 1.2)),
                dispersion_k=float(rng.uniform(15, 60)),
                drift_sd=float(rng.uniform(0.03, 0.12)),
                drift_tau_min=float(rng.uniform(30, 180)),
                makeup=tuple(float(v) for v in makeup / makeup.sum()),
                reversal_fraction=float(rng.uniform(0.005, 0.05)),
                broad=broad,
            )
        )
    return rules
