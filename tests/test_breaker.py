"""The per-rule breaker (detector.engine.breaker): every (state, trigger) pair,
the gate of every state, and the state groups the engine relies on."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.engine.breaker import (
    CAN_PAUSE,
    GATE,
    PAUSED,
    TRANSITIONS,
    WATCHED,
    Gate,
    State,
    Trigger,
    next_state,
)
from detector.errors import DetectorError, TransitionError

S, T = State, Trigger
NOOP = "no-op"
ERROR = "error"

# The whole state machine, written out from the module docstring: one row per
# (state, trigger). A state means the transition goes there; NOOP means the
# command is idempotent here (returns None); ERROR means TransitionError.
MATRIX: list[tuple[State, Trigger, State | str]] = [
    # closed: the detector trips it; operators may pause, disable or shadow it.
    (S.CLOSED, T.TRIP, S.OPEN),
    (S.CLOSED, T.COOLDOWN_ELAPSED, ERROR),
    (S.CLOSED, T.PROBE_PASSED, ERROR),
    (S.CLOSED, T.PROBE_FAILED, ERROR),
    (S.CLOSED, T.OPERATOR_PAUSE, S.FORCED_OPEN),
    (S.CLOSED, T.OPERATOR_RESUME, NOOP),
    (S.CLOSED, T.OPERATOR_DISABLE, S.DISABLED),
    (S.CLOSED, T.OPERATOR_ENABLE, NOOP),
    (S.CLOSED, T.OPERATOR_SHADOW, S.SHADOW),
    # open: cooling down until the probe.
    (S.OPEN, T.TRIP, ERROR),
    (S.OPEN, T.COOLDOWN_ELAPSED, S.HALF_OPEN),
    (S.OPEN, T.PROBE_PASSED, ERROR),
    (S.OPEN, T.PROBE_FAILED, ERROR),
    (S.OPEN, T.OPERATOR_PAUSE, S.FORCED_OPEN),
    (S.OPEN, T.OPERATOR_RESUME, S.CLOSED),
    (S.OPEN, T.OPERATOR_DISABLE, S.DISABLED),
    (S.OPEN, T.OPERATOR_ENABLE, ERROR),
    (S.OPEN, T.OPERATOR_SHADOW, S.SHADOW),
    # half_open: the probe decides.
    (S.HALF_OPEN, T.TRIP, ERROR),
    (S.HALF_OPEN, T.COOLDOWN_ELAPSED, ERROR),
    (S.HALF_OPEN, T.PROBE_PASSED, S.CLOSED),
    (S.HALF_OPEN, T.PROBE_FAILED, S.OPEN),
    (S.HALF_OPEN, T.OPERATOR_PAUSE, S.FORCED_OPEN),
    (S.HALF_OPEN, T.OPERATOR_RESUME, S.CLOSED),
    (S.HALF_OPEN, T.OPERATOR_DISABLE, S.DISABLED),
    (S.HALF_OPEN, T.OPERATOR_ENABLE, ERROR),
    (S.HALF_OPEN, T.OPERATOR_SHADOW, S.SHADOW),
    # forced_open: only an operator's resume ends an operator's pause.
    (S.FORCED_OPEN, T.TRIP, ERROR),
    (S.FORCED_OPEN, T.COOLDOWN_ELAPSED, ERROR),
    (S.FORCED_OPEN, T.PROBE_PASSED, ERROR),
    (S.FORCED_OPEN, T.PROBE_FAILED, ERROR),
    (S.FORCED_OPEN, T.OPERATOR_PAUSE, NOOP),
    (S.FORCED_OPEN, T.OPERATOR_RESUME, S.CLOSED),
    (S.FORCED_OPEN, T.OPERATOR_DISABLE, ERROR),
    (S.FORCED_OPEN, T.OPERATOR_ENABLE, ERROR),
    (S.FORCED_OPEN, T.OPERATOR_SHADOW, ERROR),
    # disabled: watched, never paused by the detector.
    (S.DISABLED, T.TRIP, ERROR),
    (S.DISABLED, T.COOLDOWN_ELAPSED, ERROR),
    (S.DISABLED, T.PROBE_PASSED, ERROR),
    (S.DISABLED, T.PROBE_FAILED, ERROR),
    (S.DISABLED, T.OPERATOR_PAUSE, S.FORCED_OPEN),
    (S.DISABLED, T.OPERATOR_RESUME, ERROR),
    (S.DISABLED, T.OPERATOR_DISABLE, NOOP),
    (S.DISABLED, T.OPERATOR_ENABLE, S.CLOSED),
    (S.DISABLED, T.OPERATOR_SHADOW, S.SHADOW),
    # shadow: a new rule, monitor-only.
    (S.SHADOW, T.TRIP, ERROR),
    (S.SHADOW, T.COOLDOWN_ELAPSED, ERROR),
    (S.SHADOW, T.PROBE_PASSED, ERROR),
    (S.SHADOW, T.PROBE_FAILED, ERROR),
    (S.SHADOW, T.OPERATOR_PAUSE, S.FORCED_OPEN),
    (S.SHADOW, T.OPERATOR_RESUME, ERROR),
    (S.SHADOW, T.OPERATOR_DISABLE, S.DISABLED),
    (S.SHADOW, T.OPERATOR_ENABLE, S.CLOSED),
    (S.SHADOW, T.OPERATOR_SHADOW, NOOP),
]
EXPECTED = {(s, t): out for s, t, out in MATRIX}


def test_matrix_covers_every_pair_once() -> None:
    # A new state or trigger must be added to the table above, not silently untested.
    assert len(MATRIX) == len(EXPECTED)
    assert set(EXPECTED) == set(itertools.product(State, Trigger))


@pytest.mark.parametrize(
    ("state", "trigger", "target"),
    [(s, t, out) for s, t, out in MATRIX if isinstance(out, State)],
    ids=lambda v: str(v),
)
def test_allowed_transition(state: State, trigger: Trigger, target: State) -> None:
    assert next_state("spam-v2", state, trigger) is target


@pytest.mark.parametrize(
    ("state", "trigger"),
    [(s, t) for s, t, out in MATRIX if out == NOOP],
    ids=lambda v: str(v),
)
def test_idempotent_noop(state: State, trigger: Trigger) -> None:
    assert next_state("spam-v2", state, trigger) is None


@pytest.mark.parametrize(
    ("state", "trigger"),
    [(s, t) for s, t, out in MATRIX if out == ERROR],
    ids=lambda v: str(v),
)
def test_forbidden_transition(state: State, trigger: Trigger) -> None:
    with pytest.raises(TransitionError) as info:
        next_state("rule-Ω", state, trigger)
    err = info.value
    assert isinstance(err, DetectorError)
    assert (err.rule_id, err.state, err.trigger) == ("rule-Ω", state.value, trigger.value)
    message = str(err)
    for part in ("rule-Ω", state.value, trigger.value):
        assert repr(part) in message


def test_transition_table_has_no_edges_outside_the_matrix() -> None:
    # Every entry of the module's table is an allowed move or an idempotent no-op.
    for (state, trigger), target in TRANSITIONS.items():
        expected = EXPECTED[(state, trigger)]
        assert expected == (NOOP if target is state else target)


@pytest.mark.parametrize(
    ("state", "gate", "paused", "watched", "can_pause"),
    [
        (S.CLOSED, Gate.ALLOW, False, True, True),
        (S.OPEN, Gate.HOLD, True, False, False),
        (S.HALF_OPEN, Gate.SHADOW, False, True, True),
        (S.FORCED_OPEN, Gate.HOLD, True, False, False),
        (S.DISABLED, Gate.ALLOW, False, True, False),
        (S.SHADOW, Gate.SHADOW, False, True, False),
    ],
)
def test_gate_and_groups(
    state: State, gate: Gate, paused: bool, watched: bool, can_pause: bool
) -> None:
    assert GATE[state] is gate
    assert (state in PAUSED, state in WATCHED, state in CAN_PAUSE) == (paused, watched, can_pause)


def test_gate_covers_every_state() -> None:
    assert set(GATE) == set(State)
    # Paused exactly when the enforcement service must hold decisions.
    assert {s for s, g in GATE.items() if g is Gate.HOLD} == PAUSED


@pytest.mark.parametrize(
    ("value", "member"),
    [(s.value, s) for s in State] + [(t.value, t) for t in Trigger] + [(g.value, g) for g in Gate],
)
def test_wire_names_round_trip(value: str, member: State | Trigger | Gate) -> None:
    assert type(member)(value) is member
    assert str(member) == value


OPERATOR = [t for t in Trigger if t.value.startswith("operator_")]


@pytest.mark.parametrize("start", list(State))
def test_operators_can_always_return_to_closed(start: State) -> None:
    # Breadth-first search over operator commands only: no state is a trap.
    seen, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for trigger in OPERATOR:
            out = EXPECTED[(state, trigger)]
            if isinstance(out, State) and out not in seen:
                seen.add(out)
                frontier.append(out)
                assert next_state("r", state, trigger) is out
    assert S.CLOSED in seen


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(Trigger)), max_size=30), st.sampled_from(list(State)))
def test_random_walk_follows_the_matrix(triggers: list[Trigger], start: State) -> None:
    state = start
    for trigger in triggers:
        expected = EXPECTED[(state, trigger)]
        if expected == ERROR:
            with pytest.raises(TransitionError):
                next_state("r", state, trigger)
            continue
        out = next_state("r", state, trigger)
        if expected == NOOP:
            assert out is None
        else:
            assert out is expected
            assert out is not state
            state = out
        # An operator's pause always wins, from wherever the walk is.
        paused = next_state("r", state, T.OPERATOR_PAUSE)
        assert paused is (None if state is S.FORCED_OPEN else S.FORCED_OPEN)
