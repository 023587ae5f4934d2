"""How fast ``RuleGate.decide`` answers, against a plain dict lookup in the same run.

Run ``python -m bench.gate_speed``. It starts the embedded broker, publishes the
states of ``--rules`` rules (10% held, 5% in shadow), lets a gate catch up, then
times, on the same rule ids in the same process:

- the floor: ``rules.get(rule_id, "allow")`` on a dict of the same rules (bound
  method, no clock, no staleness check);
- ``RuleGate.decide`` for allowed, held and never-seen rules, and during a global
  halt, on an asyncio gate (its consumer task waits while the timing loop runs) and
  on a :class:`ThreadedRuleGate` (its consumer thread runs alongside).

Each figure is the best of ``--repeat`` runs of ``--calls`` calls, minus the cost of
the bare loop; the ratio is to the floor. The time is the caller's cost per decision.

Then it measures how soon a gate sees a change: ``--flips`` times, a rule's state is
published (held, then allowed, alternately) and the delay from the record's timestamp
(taken by the producer when it sends) to the gate applying it is recorded, for an
asyncio gate and a threaded one, both in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from detector.broker import EmbeddedBroker
from detector.control.topicio import Message
from detector.gate import Change, RuleGate, ThreadedRuleGate
from detector.topics import TopicSpec, create_topics
from detector.wire.rulestate import RuleStateMessage

TOPIC = "detector.rule-state"


def states(rules: int) -> list[RuleStateMessage]:
    """Rule ``r0..rN``: every tenth open (held), every twentieth in shadow."""
    out = []
    for i in range(rules):
        st = "open" if i % 10 == 0 else "shadow" if i % 20 == 5 else "closed"
        out.append(RuleStateMessage(f"r{i}", st, 1, 1_767_571_200.0, "bench"))
    return out


async def publish(bootstrap: str, messages: list[RuleStateMessage]) -> None:
    """Send rule states as the worker does (key = rule id)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(TOPIC, m.to_json(), key=m.rule_id.encode()) for m in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def per_call(fn: Callable[[str], object], ids: list[str], calls: int, repeat: int) -> float:
    """Best nanoseconds per ``fn(rule_id)`` over ``repeat`` runs, minus the bare loop."""
    rounds = max(1, calls // len(ids))

    def run(body: Callable[[str], object] | None) -> float:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter_ns()
            if body is None:
                for _ in range(rounds):
                    for _r in ids:
                        pass
            else:
                for _ in range(rounds):
                    for r in ids:
                        body(r)
            best = min(best, time.perf_counter_ns() - started)
        return best / (rounds * len(ids))

    return max(0.0, run(fn) - run(None))


def measure(
    label: str,
    fn: Callable[[str], object],
    ids: list[str],
    args: argparse.Namespace,
    rows: list[tuple[str, float]],
) -> None:
    """Time one case and add it to ``rows``."""
    rows.append((label, per_call(fn, ids, args.calls, args.repeat)))


async def bench(broker: EmbeddedBroker, args: argparse.Namespace) -> list[tuple[str, float]]:
    """Every case, the floor first."""
    await create_topics(broker.bootstrap, [TopicSpec(TOPIC, 1, {"cleanup.policy": "compact"})])
    published = states(args.rules)
    await publish(broker.bootstrap, published)
    table = {m.rule_id: m.gate for m in published}
    held = [m.rule_id for m in published if m.gate == "hold"]
    allowed = [m.rule_id for m in published if m.gate == "allow"]
    unseen = [f"new-{i}" for i in range(len(allowed))]
    every = [m.rule_id for m in published]

    rows: list[tuple[str, float]] = []
    measure("dict.get (floor)", table.get, every, args, rows)
    async with RuleGate(broker.bootstrap, TOPIC) as gate:
        if not await gate.wait_caught_up(30):
            raise SystemExit("the gate did not catch up")
        assert gate.decide(held[0]) == "hold" and gate.decide(allowed[0]) == "allow"
        measure("decide: mixed rules", gate.decide, every, args, rows)
        measure("decide: allowed rule", gate.decide, allowed, args, rows)
        measure("decide: held rule", gate.decide, held, args, rows)
        measure("decide: never-seen rule", gate.decide, unseen, args, rows)
        halt = RuleStateMessage("*", "forced_open", 1, 1_767_571_200.0, "bench")
        await publish(broker.bootstrap, [halt])
        deadline = time.monotonic() + 10
        while gate.decide(allowed[0]) != "hold" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        measure("decide: global halt", gate.decide, every, args, rows)
        await publish(broker.bootstrap, [RuleStateMessage("*", "closed", 2, 0.0, "bench")])

    def threaded() -> None:
        with ThreadedRuleGate(broker.bootstrap, TOPIC) as tgate:
            if not tgate.wait_caught_up(30):
                raise SystemExit("the threaded gate did not catch up")
            measure("ThreadedRuleGate.decide: mixed", tgate.decide, every, args, rows)

    await asyncio.to_thread(threaded)
    return rows


async def propagation(broker: EmbeddedBroker, flips: int) -> list[tuple[str, list[float]]]:
    """Seconds from publishing a rule's state to a gate applying it, per kind of gate."""
    delays: dict[str, list[float]] = {"RuleGate": [], "ThreadedRuleGate": []}

    def recorder(kind: str) -> Callable[[Change, Message], None]:
        def record(change: Change, msg: Message) -> None:
            if change.rule_id == "flip":
                delays[kind].append(time.time() - msg.timestamp)

        return record

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    threaded = ThreadedRuleGate(broker.bootstrap, TOPIC, on_change=recorder("ThreadedRuleGate"))
    try:
        async with RuleGate(broker.bootstrap, TOPIC, on_change=recorder("RuleGate")) as gate:
            await asyncio.to_thread(threaded.start)
            if not (await gate.wait_caught_up(30) and threaded.wait_caught_up(30)):
                raise SystemExit("the gates did not catch up")
            for version in range(1, flips + 1):
                st = "forced_open" if version % 2 else "closed"
                msg = RuleStateMessage("flip", st, version, 1_767_571_200.0, "bench")
                await producer.send_and_wait(TOPIC, msg.to_json(), key=b"flip")
                deadline = time.monotonic() + 10
                while min(map(len, delays.values())) < version:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"a gate did not see version {version} within 10 s")
                    await asyncio.sleep(0.001)
    finally:
        threaded.stop()
        await producer.stop()
    return list(delays.items())


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.gate_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=2_000_000, help="calls per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--flips", type=int, default=200, help="state changes to time")
    args = ap.parse_args(argv)
    with EmbeddedBroker() as broker:
        rows = asyncio.run(bench(broker, args))
        seen = asyncio.run(propagation(broker, args.flips))
    floor = rows[0][1]
    print(
        f"RuleGate.decide, {args.rules} rules, best of {args.repeat} x {args.calls:,} calls "
        f"(Python {sys.version.split()[0]})"
    )
    print(f"{'case':<34} {'ns/call':>9} {'calls/s':>14} {'x dict.get':>11}")
    for label, ns in rows:
        rate = f"{1e9 / ns:,.0f}" if ns > 0 else "-"
        print(f"{label:<34} {ns:>9.1f} {rate:>14} {ns / floor if floor else 0:>11.1f}")
    print()
    print(f"Publish -> gate applies the change, {args.flips} changes, one process (ms)")
    print(f"{'gate':<34} {'median':>9} {'p95':>9} {'p99':>9} {'max':>9}")
    for label, delays in seen:
        ms = sorted(d * 1000 for d in delays)
        p95, p99 = ms[int(0.95 * (len(ms) - 1))], ms[int(0.99 * (len(ms) - 1))]
        print(f"{label:<34} {statistics.median(ms):>9.2f} {p95:>9.2f} {p99:>9.2f} {ms[-1]:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
