"""The engine's configuration: one frozen, self-validating value.

Thresholds are not magic multipliers: each test's threshold is derived from a
false-alarm budget (expected false pauses, or false alerts, per rule per month)
with the bound ``P(false alarm per look) <= exp(-h)`` that the likelihood-ratio
tests used here satisfy, split evenly (Bonferroni) across the tests that can
pause a rule.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson

from detector.errors import ConfigError

SECONDS_PER_MONTH = 30 * 86_400


@dataclass(frozen=True)
class EngineConfig:
    """Every knob of detection, with the defaults the benchmark was run with."""

    # --- time ---
    bucket_seconds: int = 60
    """Size of the event-time buckets that baselines are learned on."""
    tick_seconds: int = 5
    """Evaluation step inside a bucket: a surge is judged on the still-filling bucket."""
    lateness_seconds: float = 10.0
    """How long after a tick ends its events may still arrive; decisions wait this long."""
    max_future_seconds: float = 600.0
    """Events further than this ahead of the watermark are rejected as ``future``."""
    max_gap_seconds: float = 3600.0
    """Event time without a single action from any rule that is skipped, not judged: the
    pipeline was down (a time_gap alert says so)."""

    # --- false-alarm budgets ---
    false_pauses_per_rule_month: float = 0.01
    """Budget for pauses on normal traffic; sets the surge and shift thresholds."""
    false_alerts_per_rule_month: float = 0.5
    """Budget for alerts that do not pause (silence); sets their threshold."""

    # --- tests ---
    surge_shifts: tuple[float, ...] = (2.0, 5.0, 20.0)
    """Rate multipliers the sequential (CUSUM) charts are tuned for."""
    reversal_shift: float = 4.0
    """Multiplier of the reversal-rate chart."""
    reversal_min_count: float = 5.0
    """No reversal surge is declared on fewer reversals than this since onset."""
    silence_shift: float = 0.2
    """Multiplier (below 1) of the under-enforcement chart."""
    statistic_cap: float = 2.0
    """CUSUM statistics are capped at this multiple of their threshold, so that
    a long legitimate wave is forgotten within minutes after it ends."""

    # --- baseline ---
    warmup_buckets: int = 1440
    """Buckets of history before a rule's seasonal baseline is trusted."""
    warmup_cap_per_bucket: float = 200.0
    """During warm-up a rule is paused when a bucket reaches this many deactivations."""
    level_half_life_buckets: float = 720.0
    daily_half_life_days: float = 3.0
    weekly_half_life_weeks: float = 3.0
    dispersion_half_life_buckets: float = 2880.0
    min_dispersion: float = 0.02
    """Floor on the negative-binomial overdispersion 1/k: never trust Poisson."""
    warmup_dispersion: float = 0.5
    """Overdispersion assumed until it has been learned."""

    # --- who is being hit ---
    makeup_half_life_buckets: float = 10_080.0
    makeup_coverage: float = 0.95
    """The rule's usual population: the most-hit cells covering this share of targets."""
    makeup_min_events: float = 200.0
    """Below this many (decayed) targets, the make-up is unknown."""
    shift_min_excess: float = 0.15
    """A shift needs at least this much more outside share than usual."""
    shift_alpha: float = 1e-6
    """Significance of the shift test; it is looked at on every tick of a surge,
    including legitimate waves, hence the small value."""

    # --- decision policy ---
    extreme_ratio: float = 10.0
    """A surge this many times the expected rate (with confidence) pauses regardless."""
    extreme_alpha: float = 1e-3
    pause_on_extreme: bool = True
    pause_on_shift: bool = True
    pause_on_reversals: bool = True
    alert_on_usual_surge: bool = True
    alert_on_silence: bool = True

    # --- global view ---
    global_min_rules: int = 3
    global_min_fraction: float = 0.1
    global_window_seconds: float = 600.0

    # --- breaker ---
    cooldown_seconds: float = 600.0
    max_cooldown_seconds: float = 14_400.0
    probe_seconds: float = 300.0
    probe_alpha: float = 0.01
    """Significance at which a probe's shadow traffic counts as still abnormal."""
    probe_max_ratio: float = 1.5
    """A probe fails on rate only if the shadow rate is at least this times expected."""

    # --- affected-accounts ledger ---
    ledger_horizon_seconds: float = 3600.0
    """How far back (event time) each rule's recent deactivations are kept, so that a
    trip can list the accounts hit since the incident's estimated onset."""
    ledger_max_per_rule: int = 100_000
    """At most this many recent deactivations are kept per rule (the oldest go first);
    with ~150 bytes each, the ledger's memory is bounded by this times the rules."""

    def __post_init__(self) -> None:
        positive = (
            "bucket_seconds",
            "tick_seconds",
            "false_pauses_per_rule_month",
            "false_alerts_per_rule_month",
            "warmup_cap_per_bucket",
            "level_half_life_buckets",
            "daily_half_life_days",
            "weekly_half_life_weeks",
            "dispersion_half_life_buckets",
            "makeup_half_life_buckets",
            "cooldown_seconds",
            "max_cooldown_seconds",
            "probe_seconds",
            "min_dispersion",
            "warmup_dispersion",
            "statistic_cap",
            "ledger_horizon_seconds",
            "ledger_max_per_rule",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(name, "must be a positive number", value)
        if self.bucket_seconds % self.tick_seconds:
            raise ConfigError(
                "tick_seconds",
                f"must divide bucket_seconds={self.bucket_seconds}",
                self.tick_seconds,
            )
        if self.lateness_seconds < 0 or self.max_future_seconds <= 0:
            raise ConfigError("lateness_seconds", "must be >= 0", self.lateness_seconds)
        if not self.surge_shifts or any(s <= 1 for s in self.surge_shifts):
            raise ConfigError("surge_shifts", "must be multipliers above 1", self.surge_shifts)
        if self.reversal_shift <= 1:
            raise ConfigError("reversal_shift", "must be above 1", self.reversal_shift)
        if not 0 < self.silence_shift < 1:
            raise ConfigError("silence_shift", "must be between 0 and 1", self.silence_shift)
        if not 0.5 <= self.makeup_coverage < 1:
            raise ConfigError("makeup_coverage", "must be in [0.5, 1)", self.makeup_coverage)
        if not 0 < self.shift_min_excess < 1:
            raise ConfigError("shift_min_excess", "must be in (0, 1)", self.shift_min_excess)
        if self.extreme_ratio <= 1:
            raise ConfigError("extreme_ratio", "must be above 1", self.extreme_ratio)
        if not 0 < self.probe_alpha < 1:
            raise ConfigError("probe_alpha", "must be in (0, 1)", self.probe_alpha)
        if self.probe_max_ratio < 1:
            raise ConfigError("probe_max_ratio", "must be >= 1", self.probe_max_ratio)
        if not 0 < self.shift_alpha < 1:
            raise ConfigError("shift_alpha", "must be in (0, 1)", self.shift_alpha)
        if not 0 < self.extreme_alpha < 1:
            raise ConfigError("extreme_alpha", "must be in (0, 1)", self.extreme_alpha)
        if self.warmup_buckets < 0 or self.global_min_rules < 1:
            raise ConfigError("warmup_buckets", "must be >= 0", self.warmup_buckets)
        if not 0 < self.global_min_fraction <= 1:
            raise ConfigError("global_min_fraction", "must be in (0, 1]", self.global_min_fraction)
        if self.max_cooldown_seconds < self.cooldown_seconds:
            raise ConfigError(
                "max_cooldown_seconds", "must be >= cooldown_seconds", self.max_cooldown_seconds
            )

    # ----- derived values -----
    @property
    def ticks_per_bucket(self) -> int:
        """Number of evaluation ticks in one bucket."""
        return self.bucket_seconds // self.tick_seconds

    @property
    def pause_tests(self) -> int:
        """Tests that can pause a rule: each surge chart, the bucket and short-window
        tests, reversals."""
        return len(self.surge_shifts) + 3

    def pause_threshold(self, looks_per_bucket: int = 1) -> float:
        """Log-likelihood-ratio threshold of one pause test looked at this often."""
        looks = SECONDS_PER_MONTH / self.bucket_seconds * looks_per_bucket
        return math.log(looks * self.pause_tests / self.false_pauses_per_rule_month)

    def alert_threshold(self) -> float:
        """Threshold of the alert-only tests (one look per bucket)."""
        looks = SECONDS_PER_MONTH / self.bucket_seconds
        return math.log(looks / self.false_alerts_per_rule_month)

    @property
    def shift_threshold(self) -> float:
        """Threshold of the make-up shift test (looked at only while a surge fires)."""
        return -math.log(self.shift_alpha)

    @property
    def extreme_threshold(self) -> float:
        """Threshold of the test that the surge is at least ``extreme_ratio``."""
        return -math.log(self.extreme_alpha)

    @property
    def version(self) -> str:
        """A short hash of every setting: recorded in each decision's evidence."""
        blob = orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()[:12]

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> EngineConfig:
        """Build from a mapping (e.g. a JSON file); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(key, "unknown setting")
        clean = dict(values)
        if "surge_shifts" in clean:
            clean["surge_shifts"] = tuple(clean["surge_shifts"])
        return cls(**clean)

    def to_mapping(self) -> dict[str, Any]:
        """All settings as plain JSON-able values."""
        return asdict(self)


def load_config(path: str | None) -> EngineConfig:
    """The default configuration, or one with the overrides in a JSON file."""
    if path is None:
        return EngineConfig()
    try:
        with open(path, "rb") as fh:
            values = orjson.loads(fh.read())
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError("config", f"{path} must hold a JSON object of settings")
    return EngineConfig.from_mapping(values)
