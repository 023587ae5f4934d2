"""The per-rule circuit breaker as an explicit state machine.

States follow resilience4j's ``CircuitBreaker.State``:

============  =====================================  ===================
state         meaning                                enforcement service
============  =====================================  ===================
closed        normal; the detector watches            allow
open          paused by the detector (cool-down)      hold for review
half_open     probing: the rule runs in shadow        shadow
forced_open   paused by an operator                   hold for review
disabled      watched, alerts only, never paused      allow
shadow        new rule, monitor-only                  shadow
============  =====================================  ===================

Only the transitions in :data:`TRANSITIONS` exist. A trigger that would lead to
the state the breaker is already in is a no-op (commands are idempotent); any
other trigger not in the table raises :class:`~detector.errors.TransitionError`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from detector.errors import TransitionError


class State(StrEnum):
    """Breaker states; the values are the wire names."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    SHADOW = "shadow"


class Trigger(StrEnum):
    """What moves a breaker: the detector's own findings and operator commands."""

    TRIP = "trip"
    COOLDOWN_ELAPSED = "cooldown_elapsed"
    PROBE_PASSED = "probe_passed"
    PROBE_FAILED = "probe_failed"
    OPERATOR_PAUSE = "operator_pause"
    OPERATOR_RESUME = "operator_resume"
    OPERATOR_DISABLE = "operator_disable"
    OPERATOR_ENABLE = "operator_enable"
    OPERATOR_SHADOW = "operator_shadow"


class Gate(StrEnum):
    """What an enforcement service may do with a rule's decision."""

    ALLOW = "allow"
    HOLD = "hold"
    SHADOW = "shadow"


S, T = State, Trigger
TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (S.CLOSED, T.TRIP): S.OPEN,
    (S.OPEN, T.COOLDOWN_ELAPSED): S.HALF_OPEN,
    (S.HALF_OPEN, T.PROBE_PASSED): S.CLOSED,
    (S.HALF_OPEN, T.PROBE_FAILED): S.OPEN,
    **{(s, T.OPERATOR_PAUSE): S.FORCED_OPEN for s in S},
    **{(s, T.OPERATOR_RESUME): S.CLOSED for s in (S.OPEN, S.HALF_OPEN, S.FORCED_OPEN)},
    **{(s, T.OPERATOR_DISABLE): S.DISABLED for s in (S.CLOSED, S.OPEN, S.HALF_OPEN, S.SHADOW)},
    **{(s, T.OPERATOR_SHADOW): S.SHADOW for s in (S.CLOSED, S.OPEN, S.HALF_OPEN, S.DISABLED)},
    **{(s, T.OPERATOR_ENABLE): S.CLOSED for s in (S.DISABLED, S.SHADOW)},
}
del S, T

GATE: Final[dict[State, Gate]] = {
    State.CLOSED: Gate.ALLOW,
    State.OPEN: Gate.HOLD,
    State.HALF_OPEN: Gate.SHADOW,
    State.FORCED_OPEN: Gate.HOLD,
    State.DISABLED: Gate.ALLOW,
    State.SHADOW: Gate.SHADOW,
}

OPERATOR_TRIGGERS: Final = frozenset(t for t in Trigger if t.value.startswith("operator_"))
"""Triggers an operator may send; the others are the detector's own."""

PAUSED: Final = frozenset({State.OPEN, State.FORCED_OPEN})
"""States in which the rule's decisions are held."""
WATCHED: Final = frozenset({State.CLOSED, State.HALF_OPEN, State.DISABLED, State.SHADOW})
"""States in which the detector evaluates the rule's traffic."""
CAN_PAUSE: Final = frozenset({State.CLOSED, State.HALF_OPEN})
"""States in which a finding of the detector pauses the rule (elsewhere it only alerts)."""


def next_state(rule_id: str, state: State, trigger: Trigger) -> State | None:
    """The state after ``trigger``, or ``None`` when it changes nothing.

    Raises :class:`TransitionError` for a trigger the state does not accept.
    """
    target = TRANSITIONS.get((state, trigger))
    if target is None:
        if _is_noop(state, trigger):
            return None
        raise TransitionError(rule_id, state.value, trigger.value)
    return None if target == state else target


_NOOPS: Final = {
    Trigger.OPERATOR_RESUME: frozenset({State.CLOSED}),
    Trigger.OPERATOR_DISABLE: frozenset({State.DISABLED}),
    Trigger.OPERATOR_SHADOW: frozenset({State.SHADOW}),
    Trigger.OPERATOR_ENABLE: frozenset({State.CLOSED}),
}


def _is_noop(state: State, trigger: Trigger) -> bool:
    return state in _NOOPS.get(trigger, frozenset())
