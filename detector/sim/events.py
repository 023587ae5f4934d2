"""Individual enforcement actions from simulated counts, with ground truth.

The counts come from :class:`~detector.sim.model.Simulator`; each deactivation
becomes an event of the contract with an account drawn from its make-up cell
(tenure, strikes and region consistent with the cell). Wrongful deactivations
(those an incident caused) are reported separately: they are the ground truth
of the affected-accounts ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from detector.sim.model import (
    AGE_DAYS,
    CELLS,
    STRIKE_VALUES,
    Chunk,
    RuleSpec,
    Simulator,
)
from detector.wire.timefmt import to_rfc3339

_CELL_PARTS = [c.split("|") for c in CELLS]


@dataclass
class GroundTruth:
    """What really happened: the wrongful deactivations, per rule."""

    wrongful: dict[str, list[str]] = field(default_factory=dict)
    """Rule id to the account ids it deactivated wrongfully, in event-time order."""
    wrongful_events: set[str] = field(default_factory=set)
    events: int = 0


def _events_of(
    spec: RuleSpec, ch: Chunk, tick_seconds: int, rng: np.random.Generator
) -> list[tuple[float, dict[str, object], bool]]:
    out: list[tuple[float, dict[str, object], bool]] = []
    for matrix, wrongful in ((ch.legit, False), (ch.wrong, True)):
        rows, cols = np.nonzero(matrix)
        for r, c, n in zip(rows.tolist(), cols.tolist(), matrix[rows, cols].tolist(), strict=True):
            age_band, strike_band, region = _CELL_PARTS[c]
            lo, hi = AGE_DAYS[age_band]
            s_lo, s_hi = STRIKE_VALUES[strike_band]
            tick = int(ch.ticks[r])
            times = tick * tick_seconds + np.sort(rng.uniform(0, tick_seconds, n))
            ages = rng.uniform(lo, hi, n)
            strikes = rng.integers(s_lo, s_hi + 1, n)
            accounts = rng.integers(0, 10**10, n)
            for k in range(n):
                t = round(float(times[k]), 3)
                out.append(
                    (
                        t,
                        {
                            "occurred_at": to_rfc3339(t),
                            "rule_id": spec.rule_id,
                            "rule_version": spec.version,
                            "action": "deactivate_account",
                            "account_id": f"acct-{int(accounts[k]):010d}",
                            "account_age_days": round(float(ages[k]), 1),
                            "account_prior_strikes": int(strikes[k]),
                            "region": region,
                            "source": "automated",
                        },
                        wrongful,
                    )
                )
    for r in np.flatnonzero(ch.reversals).tolist():
        n = int(ch.reversals[r])
        tick = int(ch.ticks[r])
        for _ in range(n):
            t = round(float(tick * tick_seconds + rng.uniform(0, tick_seconds)), 3)
            out.append(
                (
                    t,
                    {
                        "occurred_at": to_rfc3339(t),
                        "rule_id": spec.rule_id,
                        "rule_version": spec.version,
                        "action": "reinstate_account",
                        "account_id": f"acct-{int(rng.integers(0, 10**10)):010d}",
                        "source": "appeal",
                    },
                    False,
                )
            )
    return out


def events(
    sim: Simulator, t0: float, t1: float, truth: GroundTruth | None = None
) -> Iterator[dict[str, object]]:
    """Enforcement actions in ``[t0, t1)`` in event-time order, with unique ``event_id``."""
    seq = 0
    for chunk in sim.chunks(t0, t1):
        batch: list[tuple[float, dict[str, object], bool]] = []
        for spec, ch in chunk:
            rng = np.random.default_rng(
                [
                    sim.seed,
                    4242,
                    int(ch.ticks[0]) if len(ch.ticks) else 0,
                    sum(spec.rule_id.encode()),
                ]
            )
            batch += _events_of(spec, ch, sim.tick_seconds, rng)
        batch.sort(key=lambda e: e[0])
        for _, ev, wrongful in batch:
            seq += 1
            ev["event_id"] = f"ev-{seq:09d}"
            if truth is not None:
                truth.events += 1
                if wrongful:
                    truth.wrongful.setdefault(str(ev["rule_id"]), []).append(str(ev["account_id"]))
                    truth.wrongful_events.add(str(ev["event_id"]))
            yield ev
