"""The demo's enforcement service: simulated decisions, the gate, and what was applied.

Rules decide (the simulator, minute by minute); the service applies each decision
according to the rule's gate, as published by the detector on the rule-state
topic: ``allow`` applies it, ``hold`` keeps it for review (it never reaches the
detector's input: nothing happened to the account), ``shadow`` logs it with
``"shadow": true`` without applying it. Reversals (appeals) always go through.

Every decision is kept as ground truth: whether the incident caused it (the
simulator knows) and what the gate did with it. That is what the ledger is
checked against. Pure: the caller passes event time and the gates it has seen.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from detector.demo.scenario import MINUTE, Schedule, demo_incident, demo_rules
from detector.sim.events import GroundTruth, events
from detector.sim.model import Simulator
from detector.wire.events import DEACTIVATIONS, GLOBAL_RULE_ID
from detector.wire.timefmt import from_rfc3339

APPLIED = "applied"
HELD = "held"
SHADOW = "shadow"


@dataclass(frozen=True)
class Decision:
    """One simulated decision and what became of it (the ground truth)."""

    event_id: str
    rule_id: str
    account_id: str
    action: str
    occurred_at: float
    wrongful: bool
    """Caused by the injected incident (the simulator's ground truth)."""
    fate: str
    """``applied``, ``held`` or ``shadow``."""

    @property
    def deactivation(self) -> bool:
        """True for deactivations and suspensions (what the ledger lists)."""
        return self.action in DEACTIVATIONS


@dataclass
class Gates:
    """The latest gate of each rule the service has seen (``*``: global)."""

    gates: dict[str, str] = field(default_factory=dict)

    def set(self, rule_id: str, gate: str) -> None:
        """Follow a rule-state message."""
        self.gates[rule_id] = gate

    def fate(self, rule_id: str, action: str) -> str:
        """What the service does with one decision."""
        if action not in DEACTIVATIONS:
            return APPLIED
        gates = (self.gates.get(rule_id, "allow"), self.gates.get(GLOBAL_RULE_ID, "allow"))
        if "hold" in gates:
            return HELD
        if "shadow" in gates:
            return SHADOW
        return APPLIED


@dataclass
class Traffic:
    """The platform's decisions in event-time order, applied through the gates."""

    kind: str
    seed: int
    schedule: Schedule
    gates: Gates = field(default_factory=Gates)
    decisions: list[Decision] = field(default_factory=list)
    fates: Counter[str] = field(default_factory=Counter)
    produced_until: float = 0.0
    """Event time up to which decisions were generated (exclusive)."""
    _seq: int = 0

    def __post_init__(self) -> None:
        rules = demo_rules(self.seed)
        self.rules = rules
        self.incident = demo_incident(self.kind, rules, self.schedule)
        self.sim = Simulator(
            rules,
            seed=self.seed,
            start=self.schedule.history_start,
            end=self.schedule.end + 10 * MINUTE,
            incidents=[self.incident],
        )
        self.produced_until = self.schedule.history_start
        self._pending: deque[tuple[float, dict[str, object], bool]] = deque()

    @property
    def rule_ids(self) -> list[str]:
        """Every rule of the platform."""
        return [r.rule_id for r in self.rules]

    def until(self, t: float) -> list[tuple[bytes, bytes]]:
        """``(key, event)`` in wire form for every decision before event time ``t``, each
        applied through the current gates; held decisions are kept as ground truth only.
        The key is the account id, as an enforcement service would partition."""
        out: list[tuple[bytes, bytes]] = []
        for at, ev, wrongful in self._decisions(t):
            rule_id, action = str(ev["rule_id"]), str(ev["action"])
            fate = self.gates.fate(rule_id, action)
            self._seq += 1
            ev["event_id"] = f"demo-{self.seed}-{self._seq:08d}"
            self.decisions.append(
                Decision(
                    str(ev["event_id"]),
                    rule_id,
                    str(ev["account_id"]),
                    action,
                    at,
                    wrongful,
                    fate,
                )
            )
            self.fates[fate] += 1
            if fate == HELD:
                continue
            if fate == SHADOW:
                ev["shadow"] = True
            out.append((str(ev["account_id"]).encode(), orjson.dumps(ev)))
        return out

    def _decisions(self, t: float) -> Iterator[tuple[float, dict[str, object], bool]]:
        """Decisions before ``t`` not yet handed out, generated a minute at a time (the
        simulator's randomness is keyed by minute, so the traffic does not depend on
        how the demo's loop slices time)."""
        while True:
            pending = self._pending
            while pending and pending[0][0] < t:
                yield pending.popleft()
            if pending or self.produced_until >= t:
                return
            t0 = self.produced_until
            truth = GroundTruth()
            for ev in events(self.sim, t0, t0 + MINUTE, truth):
                wrongful = str(ev["event_id"]) in truth.wrongful_events
                pending.append((from_rfc3339(str(ev["occurred_at"])), ev, wrongful))
            self.produced_until = t0 + MINUTE

    def applied_deactivations(self, rule_id: str) -> list[Decision]:
        """The rule's deactivations that were applied (not held, not shadow)."""
        return [
            d
            for d in self.decisions
            if d.rule_id == rule_id and d.deactivation and d.fate == APPLIED
        ]


def wire_lines(decisions: Iterable[Decision]) -> Iterator[bytes]:
    """Decisions as JSON lines (the ground-truth file the demo writes)."""
    for d in decisions:
        yield orjson.dumps(
            {
                "event_id": d.event_id,
                "rule_id": d.rule_id,
                "account_id": d.account_id,
                "action": d.action,
                "occurred_at": d.occurred_at,
                "wrongful": d.wrongful,
                "fate": d.fate,
            }
        )
