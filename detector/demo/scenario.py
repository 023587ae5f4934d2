"""The demo platform, its incident and its schedule, all in event time.

Thirty rules: the sample platform's dozen (``detector.sim.scenarios``) and
eighteen more with generated volumes, seasonality, noise and target make-up.
The history starts at a fixed event time, so that the traffic is a pure function
of the seed; it lies in the past, because the ingest refuses events more than a
few minutes ahead of the wall clock, and the live phase runs faster than it.

Event time is compressed: the history is backfilled as fast as the worker reads
it, then the live phase advances ``speed`` simulated seconds per wall second.
The schedule of the live phase (offsets from its start)::

    0            lead             end - 3 min    end - 2 min        end
    |  normal     | incident ...   | rule fixed   | operator resume  |

Between the onset and the fix, the detector does its part: it pauses the rule,
and after the cool-down lets it run in shadow for a probe, which fails while the
rule is still broken.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from detector.config import EngineConfig
from detector.errors import ConfigError
from detector.sim.model import Incident, RuleSpec, random_rules
from detector.sim.scenarios import INCIDENTS, SAMPLE_RULES, SAMPLE_START

HISTORY_START = SAMPLE_START + 86_400 + 12 * 3600
"""Tuesday 2026-01-06T12:00Z: most rules are near the top of their day, where their
rates change slowly, so a few hours of history give good baselines."""
HISTORY_SECONDS = 3 * 3600.0
WARMUP_BUCKETS = 120
"""Two hours of history before a rule's baseline is trusted, instead of a day: the
demo backfills three hours, which takes seconds rather than minutes."""
EXTRA_RULES = 18
MINUTE = 60.0
FIX_BEFORE_END = 3 * MINUTE
RESUME_BEFORE_END = 2 * MINUTE
MIN_DURATION_MINUTES = 8.0
INCIDENT_RULE = "bot.automation"

_FAMILIES = ("spam", "scam", "fraud", "abuse", "bot", "integrity")


def demo_config() -> EngineConfig:
    """The engine settings the demo's worker runs with (defaults but the warm-up)."""
    return EngineConfig(warmup_buckets=WARMUP_BUCKETS)


def demo_rules(seed: int) -> list[RuleSpec]:
    """The sample's named rules, then generated ones (``spam.model_00`` ...)."""
    extra = random_rules(EXTRA_RULES, seed, min_rate=0.5, max_rate=80.0)
    named = [
        replace(spec, rule_id=f"{_FAMILIES[i % len(_FAMILIES)]}.model_{i:02d}")
        for i, spec in enumerate(extra)
    ]
    return [*SAMPLE_RULES, *named]


@dataclass(frozen=True)
class Schedule:
    """When things happen, in event time (epoch seconds)."""

    history_start: float
    live_start: float
    onset: float
    fix_at: float
    resume_at: float
    end: float

    @classmethod
    def of(cls, duration_minutes: float, lead_minutes: float = 4.0) -> Schedule:
        """The schedule of a live phase of ``duration_minutes`` simulated minutes."""
        if duration_minutes < MIN_DURATION_MINUTES:
            raise ConfigError(
                "duration", f"must be at least {MIN_DURATION_MINUTES:g} minutes", duration_minutes
            )
        live = HISTORY_START + HISTORY_SECONDS
        end = live + duration_minutes * MINUTE
        return cls(
            history_start=HISTORY_START,
            live_start=live,
            onset=live + lead_minutes * MINUTE,
            fix_at=_minute_floor(end - FIX_BEFORE_END),
            resume_at=end - RESUME_BEFORE_END,
            end=end,
        )


def _minute_floor(t: float) -> float:
    return t - t % MINUTE


def demo_incident(kind: str, rules: list[RuleSpec], schedule: Schedule) -> Incident:
    """The injected incident (it lasts until the fix).

    ``shift``: the bot detector deactivates long-tenured accounts with no strikes at
    6x its rate; ``surge``: 20x on random accounts; ``global``: a third of the rules
    at 3x together; ``reversal``: appeals reverse its decisions at 30x; ``silent``:
    it stops deciding.

    The reversal surge is stronger than the sample's 10x: at the demo's hour the bot
    detector is at the bottom of its day, with about one reversal every three
    minutes, and 10x of that is not confirmed before the demo ends.
    """
    if kind not in INCIDENTS:
        raise ConfigError("incident", f"must be one of {', '.join(INCIDENTS)}", kind)
    onset = schedule.onset
    duration = schedule.fix_at - onset
    rule = (INCIDENT_RULE,)
    if kind == "shift":
        return Incident("shift", rule, onset, duration, 6.0, target="tenured_clean")
    if kind == "surge":
        return Incident("surge", rule, onset, duration, 20.0)
    if kind == "global":
        return Incident("global", tuple(r.rule_id for r in rules[::3]), onset, duration, 3.0)
    if kind == "reversal":
        return Incident("reversal", rule, onset, duration, 30.0, effect="reversals")
    return Incident("silent", rule, onset, duration, 0.0, effect="silence")


def expected_pause(kind: str) -> str | None:
    """The rule the detector should pause for this incident (``*``: a global halt),
    or ``None`` when the right outcome is an alert."""
    if kind == "silent":
        return None
    return "*" if kind == "global" else INCIDENT_RULE
