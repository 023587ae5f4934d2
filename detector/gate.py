"""RuleGate: may this automated rule act right now? Answered from memory.

An enforcement service embeds a gate and asks it before it applies each automated
decision::

    gate = RuleGate("kafka-1:9092", topic="detector.rule-state")
    await gate.start()
    await gate.wait_caught_up(10.0)
    ...
    decision = gate.decide("bot.automation")    # Decision.ALLOW / HOLD / SHADOW

The gate follows the rule-state topic in a background task (a consumer without a
group: every partition, from the beginning) and keeps the latest state of every rule
(:mod:`detector.control.states`). :meth:`RuleGate.decide` reads that memory and the
clock, nothing else. The rule ``*`` is the global halt: while its gate is ``hold``,
every rule is held.

It fails safe. Until it has read the topic to its end once, and whenever it has not
heard from the broker for longer than ``stale_after`` seconds, it answers ``unknown``
(``hold`` by default) for every rule: a gate that cannot know whether a rule was
paused does not let it act. Once caught up and fresh, a rule without a state is
allowed. See ``docs/gate.md``.

:class:`ThreadedRuleGate` runs a gate on a thread of its own for services without
asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition

from detector.control.states import Change, Decision, RuleStates
from detector.control.topicio import Message, existing_partitions
from detector.engine.breaker import Gate
from detector.errors import ConfigError, ContractError
from detector.wire.events import GLOBAL_RULE_ID
from detector.wire.rulestate import RuleStateMessage

__all__ = ["Change", "Decision", "Explanation", "GateHealth", "RuleGate", "ThreadedRuleGate"]

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "detector.rule-state"
Listener = Callable[[Change, Message], None]
"""Called with every change of a rule's state and the message that made it."""

_TOPIC_RETRY_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 5.0


@dataclass(frozen=True)
class Explanation:
    """A decision and why (for logs and audits; :meth:`RuleGate.decide` is the fast path)."""

    decision: Decision
    reason: str
    """``not_caught_up``, ``stale``, ``global`` (rule ``*`` decided), ``rule`` (the
    rule's own state decided) or ``no_state`` (a rule the detector never published)."""
    state: RuleStateMessage | None
    """The state that decided (the rule's, or ``*``'s), if any."""


@dataclass(frozen=True)
class GateHealth:
    """For a service's health page."""

    caught_up: bool
    fresh: bool
    seconds_since_heard: float | None
    rules: int
    global_gate: str
    skipped: int
    """Messages that were not rule states."""


class RuleGate:
    """Follows the rule-state topic; answers :meth:`decide` from memory.

    ``bootstrap``: Kafka bootstrap servers (``host:port`` or a list of them).
    ``unknown``: the answer while the gate cannot know (``hold``, or ``allow`` to fail
    open). ``stale_after``: seconds without an answer from the broker after which the
    gate no longer trusts what it holds. ``poll_interval``: the longest a fetch waits at
    the broker, which bounds the delay between a pause and the gate seeing it on brokers
    that do not answer a waiting fetch when data arrives. ``on_change``: called on the
    gate's event loop with every change of a rule's own gate. ``client_options``: more
    aiokafka consumer options (TLS, SASL: ``Settings.kafka_security()``). ``clock``: the
    monotonic clock staleness is measured on.
    """

    def __init__(
        self,
        bootstrap: str | list[str],
        topic: str = DEFAULT_TOPIC,
        *,
        unknown: str = "hold",
        stale_after: float = 15.0,
        poll_interval: float = 0.1,
        on_change: Listener | None = None,
        client_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self._unknown = Gate(unknown)
        except ValueError:
            raise ConfigError("unknown", "must be hold, allow or shadow", unknown) from None
        if not (math.isfinite(stale_after) and stale_after > 0):
            raise ConfigError("stale_after", "must be a positive number of seconds", stale_after)
        if not (math.isfinite(poll_interval) and 0 < poll_interval <= stale_after / 2):
            raise ConfigError(
                "poll_interval", f"must be > 0 and <= stale_after / 2 ({stale_after / 2:g})"
            )
        self.topic = topic
        self.stale_after = stale_after
        self._bootstrap = bootstrap
        self._poll_ms = max(1, int(poll_interval * 1000))
        self._on_change = on_change
        self._client_options = dict(client_options or {})
        self._clock = clock
        self._states = RuleStates()
        self._heard = -math.inf
        """When every partition had last answered; -inf until caught up."""
        self._trust_until = -math.inf
        """``_heard + stale_after``: decide trusts the states held until then."""
        self._caught_up = False
        self._caught_up_event = asyncio.Event()
        self._stale = False
        self._positions: dict[int, int] = {}
        self._stamps: dict[int, int] = {}
        self._answered: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.skipped = 0

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> RuleGate:
        """A gate on the broker, topic and security settings of a worker's ``Settings``."""
        return cls(
            settings.bootstrap,
            settings.topic_rule_state,
            client_options=settings.kafka_security(),
            **kwargs,
        )

    # --- the fast path -------------------------------------------------------------
    def decide(self, rule_id: str) -> Decision:
        """``allow``, ``hold`` or ``shadow`` for ``rule_id``'s automated decisions, now."""
        # The hot path: one clock read and one dictionary lookup (see bench/gate_speed.py).
        if self._clock() > self._trust_until:
            return self._unknown
        states = self._states
        return states.effective.get(rule_id, states.default)

    # --- the rest --------------------------------------------------------------------
    def explain(self, rule_id: str) -> Explanation:
        """:meth:`decide` with its reason and the state behind it."""
        if not self._caught_up:
            return Explanation(self._unknown, "not_caught_up", None)
        if self._clock() - self._heard > self.stale_after:
            return Explanation(self._unknown, "stale", None)
        decision = self._states.decide(rule_id)
        own = self._states.messages.get(rule_id)
        if own is not None and Gate(own.gate) == decision:
            return Explanation(decision, "rule", own)
        glob = self._states.messages.get(GLOBAL_RULE_ID)
        if glob is not None and decision != Gate.ALLOW:
            return Explanation(decision, "global", glob)
        return Explanation(decision, "no_state" if own is None else "rule", own)

    def held_decision(self, rule_id: str) -> Decision:
        """What the states held decide for ``rule_id``, however fresh they are (for
        display and diagnosis; a service calls :meth:`decide`, which fails safe)."""
        return self._states.decide(rule_id)

    def state(self, rule_id: str) -> RuleStateMessage | None:
        """The latest state held for ``rule_id`` (``*``: the global halt), if any."""
        return self._states.messages.get(rule_id)

    @property
    def caught_up(self) -> bool:
        """True once the topic was read to its end (stays true)."""
        return self._caught_up

    def health(self) -> GateHealth:
        """Whether the gate can be trusted, and what it holds."""
        since = self._clock() - self._heard if self._caught_up else None
        return GateHealth(
            self._caught_up,
            since is not None and since <= self.stale_after,
            since,
            len(self._states),
            self._states.global_gate.value,
            self.skipped,
        )

    async def wait_caught_up(self, timeout: float) -> bool:
        """Wait until the gate has read the topic to its end; False after ``timeout`` s."""
        try:
            await asyncio.wait_for(self._caught_up_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def start(self) -> Self:
        """Start following the topic in a background task (returns at once)."""
        if self._task is not None:
            raise RuntimeError("this RuleGate is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rule-gate")
        return self

    async def stop(self) -> None:
        """Stop following; :meth:`decide` answers ``unknown`` once the gate goes stale."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- following the topic -----------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._follow()
            except Exception as exc:  # the gate must outlive any broker trouble
                log.warning(
                    "rule gate: following %s failed (%s: %s); again in %.1f s",
                    self.topic,
                    type(exc).__name__,
                    exc,
                    backoff,
                )
            self._check_fresh()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._poll_ms,
            client_id="detector-rule-gate",
            **self._client_options,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in await self._partitions(consumer)]
            consumer.assign(tps)
            for tp in tps:
                position = self._positions.get(tp.partition)
                if position is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, position)
            while True:
                batch = await consumer.getmany(*tps, timeout_ms=self._poll_ms)
                for tp, records in batch.items():
                    for record in records:
                        self._apply(record)
                        self._positions[tp.partition] = record.offset + 1
                self._note_answers(consumer, tps)
                if not self._caught_up:
                    await self._check_caught_up(consumer, tps, batch)
                self._check_fresh()
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[int]:
        waiting = False
        while True:
            parts = await existing_partitions(consumer._client, self.topic)
            if parts:
                return parts
            if not waiting:
                log.warning("rule gate: topic %s does not exist yet; waiting", self.topic)
                waiting = True
            await asyncio.sleep(_TOPIC_RETRY_SECONDS)

    def _apply(self, record: Any) -> None:
        try:
            change = self._states.apply(record.key, record.value)
        except ContractError as exc:
            self.skipped += 1
            log.warning(
                "rule gate: skipped %s[%d]@%d: %s", self.topic, record.partition, record.offset, exc
            )
            return
        if change is not None and self._on_change is not None:
            try:
                self._on_change(change, Message.of(record))
            except Exception:
                log.exception("rule gate: the on_change listener failed")

    def _note_answers(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        # A fetch response updates a partition's poll timestamp even when it brings no
        # records: that is how a quiet topic still shows that the broker answers.
        now = self._clock()
        for tp in tps:
            stamp = consumer.last_poll_timestamp(tp)
            if stamp is not None and stamp != self._stamps.get(tp.partition):
                self._stamps[tp.partition] = stamp
                self._answered[tp.partition] = now
        if self._caught_up:
            self._set_heard(min(self._answered.get(tp.partition, -math.inf) for tp in tps))

    async def _check_caught_up(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], batch: Mapping[Any, Any]
    ) -> None:
        for tp in tps:
            if batch.get(tp):
                return
            # The highwater of a fetch, not end_offsets: tansu under-reports those.
            high = consumer.highwater(tp)
            if high is None or await consumer.position(tp) < high:
                return
        self._caught_up = True
        self._set_heard(min(self._answered[tp.partition] for tp in tps))
        self._caught_up_event.set()
        log.info(
            "rule gate: caught up with %s: %d rules, global gate %s",
            self.topic,
            len(self._states),
            self._states.global_gate.value,
        )

    def _set_heard(self, when: float) -> None:
        self._heard = when
        self._trust_until = when + self.stale_after

    def _check_fresh(self) -> None:
        if not self._caught_up:
            return
        stale = self._clock() - self._heard > self.stale_after
        if stale != self._stale:
            self._stale = stale
            if stale:
                log.warning(
                    "rule gate: no answer from the broker for %.0f s: answering %s",
                    self.stale_after,
                    self._unknown.value,
                )
            else:
                log.info("rule gate: the broker answers again")


class ThreadedRuleGate:
    """A :class:`RuleGate` on a thread and event loop of its own, for services without
    asyncio. Takes the same arguments; ``decide`` is the same method (thread-safe: it
    only reads). ``on_change`` listeners run on the gate's thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gate = RuleGate(*args, **kwargs)
        self.decide = self.gate.decide
        self.explain = self.gate.explain
        self.held_decision = self.gate.held_decision
        self.state = self.gate.state
        self.health = self.gate.health
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Start the thread and the gate (returns at once; see :meth:`wait_caught_up`)."""
        if self._thread is not None:
            raise RuntimeError("this ThreadedRuleGate is already started")
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.gate.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.gate.stop())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="detector-rule-gate", daemon=True)
        self._thread.start()
        started.wait()
        return self

    def wait_caught_up(self, timeout: float) -> bool:
        """Block until the gate has read the topic to its end; False after ``timeout`` s."""
        if self._loop is None:
            raise RuntimeError("start the gate first")
        future = asyncio.run_coroutine_threadsafe(self.gate.wait_caught_up(timeout), self._loop)
        return future.result()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the gate and its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
