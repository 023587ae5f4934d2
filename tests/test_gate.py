"""The rule gate: the rule-state fold (pure, table-driven) and RuleGate against the
embedded broker, including a gate in another process seeing a pause within a second."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamkit import produce, wait_for

from detector.broker import EmbeddedBroker
from detector.control.states import RuleStates
from detector.errors import ConfigError, ContractError
from detector.gate import Decision, RuleGate, ThreadedRuleGate
from detector.topics import TopicSpec, create_topics
from detector.wire.rulestate import RuleStateMessage

NewTopicFn = Callable[..., Awaitable[str]]  # the `new_topic` fixture (tests/conftest.py)
COMPACT = {"cleanup.policy": "compact"}
T0 = 1_767_571_200.0  # 2026-01-05T00:00:00Z
ALLOW, HOLD, SHADOW = Decision.ALLOW, Decision.HOLD, Decision.SHADOW


def state(
    rule: str, st: str, version: int, reason: str = "surge_with_shift"
) -> tuple[bytes, bytes]:
    """A rule-state message as the worker writes it: key = rule id."""
    msg = RuleStateMessage(rule, st, version, T0 + version, reason, {"state_version": version})
    return rule.encode(), msg.to_json()


def tombstone(rule: str) -> tuple[bytes, bytes | None]:
    return rule.encode(), None


# --- the fold (pure) ------------------------------------------------------------
@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([], {"a": ALLOW, "*": ALLOW}, id="nothing-known-allows"),
        pytest.param([state("a", "open", 1)], {"a": HOLD, "b": ALLOW}, id="open-holds"),
        pytest.param([state("a", "forced_open", 1)], {"a": HOLD}, id="operator-pause-holds"),
        pytest.param([state("a", "half_open", 2)], {"a": SHADOW}, id="probe-shadows"),
        pytest.param([state("a", "shadow", 1)], {"a": SHADOW}, id="shadow-rule"),
        pytest.param([state("a", "disabled", 1)], {"a": ALLOW}, id="disabled-allows"),
        pytest.param(
            [state("a", "open", 1), state("a", "closed", 3)], {"a": ALLOW}, id="newer-wins"
        ),
        pytest.param(
            [state("a", "open", 3), state("a", "closed", 2)], {"a": HOLD}, id="older-ignored"
        ),
        pytest.param(
            [state("a", "open", 3), state("a", "closed", 3)], {"a": HOLD}, id="same-ignored"
        ),
        pytest.param([state("a", "open", 3), tombstone("a")], {"a": ALLOW}, id="tombstone-forgets"),
        pytest.param(
            [state("a", "open", 3), tombstone("a"), state("a", "shadow", 1)],
            {"a": SHADOW},
            id="after-tombstone-any-version",
        ),
        pytest.param(
            [state("*", "open", 1, "many_rules"), state("a", "shadow", 1)],
            {"a": HOLD, "b": HOLD, "*": HOLD},
            id="global-halt-holds-all",
        ),
        pytest.param(
            [state("*", "forced_open", 1, "operator_pause")],
            {"a": HOLD},
            id="operator-halt-all",
        ),
        pytest.param(
            [state("*", "half_open", 2), state("a", "open", 1)],
            {"a": HOLD, "b": SHADOW},
            id="global-probe-shadows-allowed-rules",
        ),
        pytest.param(
            [state("*", "open", 1), state("*", "closed", 2)],
            {"a": ALLOW},
            id="global-lifted",
        ),
        pytest.param([state("*", "open", 1), tombstone("*")], {"a": ALLOW}, id="global-forgot"),
    ],
)
def test_fold_decides(
    messages: list[tuple[bytes, bytes | None]], expected: dict[str, Decision]
) -> None:
    states = RuleStates()
    for key, value in messages:
        states.apply(key, value)
    assert {rule: states.decide(rule) for rule in expected} == expected


RULES = ("a", "b", "*")
STATES = ("closed", "open", "half_open", "forced_open", "disabled", "shadow")
SEVERITY = {"allow": 0, "shadow": 1, "hold": 2}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(RULES), st.sampled_from((*STATES, None)), st.integers(1, 6)),
        max_size=30,
    )
)
def test_fold_matches_a_naive_recomputation(
    events: list[tuple[str, str | None, int]],
) -> None:
    """Whatever the order, the decision is the stricter of the rule's and the global
    gate, each from the highest version since the rule was last forgotten."""
    states = RuleStates()
    for rule, st_, version in events:
        states.apply(*(tombstone(rule) if st_ is None else state(rule, st_, version)))

    def naive_gate(rule: str) -> str:
        held: RuleStateMessage | None = None
        for r, st_, version in events:
            if r != rule:
                continue
            if st_ is None:
                held = None
            elif held is None or version > held.version:
                held = RuleStateMessage(r, st_, version, 0.0, "")
        return held.gate if held is not None else "allow"

    for rule in (*RULES, "never"):
        own, glob = naive_gate(rule), naive_gate("*")
        expected = max(own, glob, key=SEVERITY.__getitem__)
        assert states.decide(rule) == expected


def test_fold_reports_changes_and_rejects_bad_messages() -> None:
    states = RuleStates()
    first = states.apply(*state("a", "open", 1))
    assert first is not None
    assert (first.rule_id, first.before, first.after) == ("a", None, HOLD)
    assert states.apply(*state("a", "open", 1)) is None  # a repeat changes nothing
    with pytest.raises(ContractError):
        states.apply(b"a", b'{"rule_id": "a", "state": "sideways", "version": 9}')
    with pytest.raises(ContractError):
        states.apply(b"a", b"not json")
    assert states.decide("a") == HOLD  # the held state survived the bad messages
    gone = states.apply(*tombstone("a"))
    assert gone is not None
    assert (gone.before, gone.after) == (HOLD, None)


def test_decision_compares_as_text() -> None:
    assert HOLD == "hold"
    assert ALLOW.value == "allow"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"unknown": "maybe"}, "unknown"),
        ({"stale_after": 0}, "stale_after"),
        ({"stale_after": float("nan")}, "stale_after"),
        ({"stale_after": 1.0, "poll_interval": 0.9}, "poll_interval"),
    ],
)
def test_bad_gate_settings_are_named(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RuleGate("127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


def test_unstarted_gate_answers_unknown() -> None:
    assert RuleGate("127.0.0.1:1").decide("a") == HOLD
    assert RuleGate("127.0.0.1:1", unknown="allow").decide("a") == ALLOW
    explained = RuleGate("127.0.0.1:1").explain("a")
    assert (explained.decision, explained.reason) == (HOLD, "not_caught_up")


# --- against the broker --------------------------------------------------------
async def test_decisions_follow_the_topic(broker: EmbeddedBroker, new_topic: NewTopicFn) -> None:
    topic = await new_topic(partitions=3, config=COMPACT)
    history = [state("a", "open", 1), state("b", "shadow", 1), state("a", "half_open", 2)]
    await produce(broker.bootstrap, topic, [v for _, v in history], [k for k, _ in history])
    seen: list[tuple[str, str | None]] = []
    gate = RuleGate(
        broker.bootstrap,
        topic,
        on_change=lambda change, _msg: seen.append((change.rule_id, change.after)),
    )
    async with gate:
        assert await gate.wait_caught_up(10)
        assert gate.caught_up
        assert [gate.decide(r) for r in ("a", "b", "never-seen")] == [SHADOW, SHADOW, ALLOW]
        assert gate.explain("never-seen").reason == "no_state"
        assert ("a", HOLD) in seen  # the replay reports every change, in order per rule

        # A newer version applies; an older one, republished, is ignored.
        await produce(broker.bootstrap, topic, [state("a", "closed", 3)[1]], [b"a"])
        await wait_for(lambda: gate.decide("a") == ALLOW, 5, "a closed")
        await produce(broker.bootstrap, topic, [state("a", "open", 1)[1]], [b"a"])
        await produce(broker.bootstrap, topic, [state("b", "closed", 2)[1]], [b"b"])
        await wait_for(lambda: gate.decide("b") == ALLOW, 5, "b closed")
        assert gate.decide("a") == ALLOW
        state_a = gate.state("a")
        assert state_a is not None
        assert state_a.version == 3

        # A bad message is skipped, the gate carries on.
        await produce(broker.bootstrap, topic, [b"garbage"], [b"c"])
        await produce(broker.bootstrap, topic, [state("*", "open", 1, "many_rules")[1]], [b"*"])
        await wait_for(lambda: gate.decide("b") == HOLD, 5, "global halt")
        assert gate.skipped == 1
        explained = gate.explain("b")
        assert (explained.reason, explained.state and explained.state.rule_id) == ("global", "*")
        health = gate.health()
        assert (health.caught_up, health.fresh, health.global_gate) == (True, True, "hold")


async def test_fail_safe_until_caught_up(broker: EmbeddedBroker) -> None:
    """A gate on a topic that does not exist yet cannot know: it answers `unknown`."""
    topic = f"rule-state-later-{os.urandom(4).hex()}"
    holding = RuleGate(broker.bootstrap, topic)
    allowing = RuleGate(broker.bootstrap, topic, unknown="allow")
    async with holding, allowing:
        assert not await holding.wait_caught_up(0.5)
        assert (holding.decide("a"), allowing.decide("a")) == (HOLD, ALLOW)
        assert holding.health().caught_up is False
        await create_topics(broker.bootstrap, [TopicSpec(topic, 1, COMPACT)])
        assert await holding.wait_caught_up(10)
        assert await allowing.wait_caught_up(10)
        assert (holding.decide("a"), allowing.decide("a")) == (ALLOW, ALLOW)


async def test_stale_gate_fails_safe(fresh_broker: EmbeddedBroker) -> None:
    """No answer from the broker for longer than stale_after: `unknown` until it answers."""
    await create_topics(fresh_broker.bootstrap, [TopicSpec("rs", 1, COMPACT)])
    async with RuleGate(fresh_broker.bootstrap, "rs", stale_after=0.6) as gate:
        assert await gate.wait_caught_up(10)
        assert gate.decide("a") == ALLOW
        fresh_broker.pause()
        try:
            await wait_for(lambda: gate.decide("a") == HOLD, 5, "the gate to go stale", 0.05)
            assert gate.explain("a").reason == "stale"
            assert not gate.health().fresh
        finally:
            fresh_broker.resume()
        await wait_for(lambda: gate.decide("a") == ALLOW, 10, "the gate to be fresh again")


def test_threaded_gate(broker: EmbeddedBroker, new_topic: NewTopicFn) -> None:
    """For services without asyncio: start, wait, decide, stop from plain threads."""

    async def setup() -> str:
        topic = await new_topic(config=COMPACT)
        await produce(broker.bootstrap, topic, [state("a", "open", 1)[1]], [b"a"])
        return topic

    topic = asyncio.run(setup())
    with ThreadedRuleGate(broker.bootstrap, topic) as gate:
        assert gate.wait_caught_up(10)
        assert (gate.decide("a"), gate.decide("b")) == (HOLD, ALLOW)
        asyncio.run(produce(broker.bootstrap, topic, [state("a", "closed", 2)[1]], [b"a"]))
        deadline = time.monotonic() + 5
        while gate.decide("a") != ALLOW and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gate.decide("a") == ALLOW


async def test_gate_in_another_process_sees_a_pause_within_a_second(
    broker: EmbeddedBroker, new_topic: NewTopicFn
) -> None:
    """Done-when of the control plane: `detector ctl watch` (a RuleGate) in its own
    process sees the rule held less than 1 s after the trip's rule-state message is
    appended. tansu keeps the producer's timestamp (it ignores LogAppendTime), which is
    taken before the append: the measured delay is an upper bound."""
    topic = await new_topic(config=COMPACT)
    await produce(broker.bootstrap, topic, [state("other", "closed", 1)[1]], [b"other"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update({"DETECTOR_BROKER": broker.url, "DETECTOR_TOPIC_RULE_STATE": topic})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "detector", "ctl", "watch", "--json", "bot.automation"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert ready["event"] == "caught_up"
        delays = []
        for version, st in enumerate(("open", "closed", "forced_open"), start=1):
            await produce(
                broker.bootstrap,
                topic,
                [state("bot.automation", st, version)[1]],
                [b"bot.automation"],
            )
            line = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert (line["rule_id"], line["state"], line["replay"]) == ("bot.automation", st, False)
            assert line["answer"] == line["decision"] == ("allow" if st == "closed" else "hold")
            delays.append(line["observed_at"] - line["message_timestamp"])
        assert max(delays) < 1.0, delays
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, (await proc.stderr.read()).decode() if proc.stderr else ""
