"""Named scenarios: the bundled sample (``backtest --sample``) and the demo's traffic.

The sample platform has a dozen rules with realistic names and volumes. On its
second day a legitimate spam wave hits ``spam.link_farm`` (the detector should
alert, not pause), and later the bot detector ``bot.automation`` starts
deactivating long-tenured accounts with no prior strikes at many times its
usual rate (as when a scheduling app's posts were mistaken for a bot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.sim.model import (
    AGES,
    GENERAL,
    REGIONS,
    STRIKES,
    Incident,
    RuleSpec,
    Simulator,
    SpamWave,
)

SAMPLE_START = 1_767_571_200.0  # 2026-01-05T00:00:00Z, a Monday
INCIDENTS = ("surge", "shift", "global", "reversal", "silent")


def _makeup(
    ages: dict[str, float], strikes: dict[str, float], regions: dict[str, float], leak: float = 0.03
) -> tuple[float, ...]:
    p = np.array(
        [
            ages.get(a, 0.0) * strikes.get(s, 0.0) * regions.get(r, 1.0 if not regions else 0.0)
            for a in AGES
            for s in STRIKES
            for r in REGIONS
        ]
    )
    p = (1 - leak) * p / p.sum() + leak * GENERAL
    return tuple(float(v) for v in p / p.sum())


_ALL = dict.fromkeys(REGIONS, 1.0)
SAMPLE_RULES = (
    RuleSpec(
        "spam.link_farm",
        40.0,
        0.4,
        16.0,
        0.9,
        40.0,
        makeup=_makeup({"new": 3, "young": 1}, {"0": 1, "1-2": 2, "3+": 1}, _ALL),
    ),
    RuleSpec(
        "spam.bulk_messaging",
        120.0,
        0.35,
        14.0,
        0.8,
        50.0,
        makeup=_makeup({"new": 2, "young": 2}, {"1-2": 2, "3+": 2}, {"IN": 2, "ID": 2, "BR": 1}),
    ),
    RuleSpec(
        "bot.automation",
        25.0,
        0.3,
        3.0,
        1.0,
        30.0,
        version="7",
        makeup=_makeup({"new": 4, "young": 1}, {"0": 2, "1-2": 1}, _ALL),
    ),
    RuleSpec(
        "fraud.payment_chargeback",
        6.0,
        0.5,
        19.0,
        0.7,
        25.0,
        makeup=_makeup(
            {"young": 2, "established": 1}, {"1-2": 1, "3+": 2}, {"US": 2, "DE": 1, "FR": 1}
        ),
    ),
    RuleSpec(
        "fraud.account_takeover",
        3.0,
        0.4,
        11.0,
        1.0,
        20.0,
        makeup=_makeup(
            {"established": 2, "tenured": 1}, {"0": 3, "1-2": 1}, {"US": 1, "JP": 1, "DE": 1}
        ),
    ),
    RuleSpec(
        "abuse.harassment",
        8.0,
        0.5,
        21.0,
        1.2,
        30.0,
        makeup=_makeup({"young": 1, "established": 2}, {"1-2": 2, "3+": 3}, _ALL),
    ),
    RuleSpec(
        "abuse.hate_speech",
        4.0,
        0.45,
        20.0,
        1.1,
        25.0,
        makeup=_makeup({"young": 2, "established": 1}, {"1-2": 2, "3+": 3}, _ALL),
    ),
    RuleSpec(
        "csam.hash_match",
        0.5,
        0.1,
        12.0,
        1.0,
        60.0,
        makeup=_makeup({"new": 1, "young": 1}, {"0": 1, "1-2": 1, "3+": 1}, _ALL),
    ),
    RuleSpec(
        "impersonation.celebrity",
        2.0,
        0.4,
        15.0,
        0.9,
        25.0,
        makeup=_makeup({"new": 3, "young": 1}, {"0": 2, "1-2": 1}, {"US": 2, "BR": 1}),
    ),
    RuleSpec(
        "spam.fake_engagement",
        60.0,
        0.3,
        9.0,
        0.8,
        40.0,
        makeup=_makeup({"new": 2, "young": 3}, {"0": 1, "1-2": 2}, {"ID": 2, "IN": 2, "NG": 1}),
    ),
    RuleSpec(
        "scam.crypto_giveaway",
        12.0,
        0.5,
        13.0,
        1.1,
        30.0,
        makeup=_makeup({"new": 3}, {"0": 2, "1-2": 1}, {"NG": 1, "US": 1, "IN": 1}),
    ),
    RuleSpec(
        "manual.trust_team", 1.5, 0.7, 15.0, 0.3, 15.0, makeup=tuple(float(v) for v in GENERAL)
    ),
)


@dataclass(frozen=True)
class Sample:
    """A simulator set up with the sample platform and one incident."""

    sim: Simulator
    start: float
    end: float
    onset: float
    incident: Incident
    rule_id: str


def sample(
    seed: int = 7,
    *,
    incident: str = "shift",
    history_days: float = 1.5,
    after_onset: float = 2 * 3600,
    tick_seconds: int = 5,
) -> Sample:
    """The sample platform with ``history_days`` of normal traffic, then an incident.

    Incident kinds: ``surge`` (20x, random accounts), ``shift`` (6x, tenured accounts
    with no strikes), ``global`` (40% of rules at 3x), ``reversal`` (10x reversals),
    ``silent`` (the rule stops).
    """
    if incident not in INCIDENTS:
        raise ValueError(f"incident must be one of {INCIDENTS}, got {incident!r}")
    start = SAMPLE_START
    onset = start + history_days * 86_400
    end = onset + after_onset
    rule = "bot.automation"
    duration = after_onset
    inc = {
        "surge": Incident("surge", (rule,), onset, duration, 20.0),
        "shift": Incident("shift", (rule,), onset, duration, 6.0, target="tenured_clean"),
        "global": Incident(
            "global", tuple(r.rule_id for r in SAMPLE_RULES[::2]), onset, duration, 3.0
        ),
        "reversal": Incident("reversal", (rule,), onset, duration, 10.0, effect="reversals"),
        "silent": Incident("silent", (rule,), onset, duration, 0.0, effect="silence"),
    }[incident]
    wave = SpamWave("spam.link_farm", onset - 6 * 3600, 5400.0, 3.0)
    sim = Simulator(
        list(SAMPLE_RULES),
        seed=seed,
        start=start,
        end=end,
        tick_seconds=tick_seconds,
        incidents=[inc],
        waves=[wave],
    )
    return Sample(sim, start, end, onset, inc, rule if incident != "global" else "*")
