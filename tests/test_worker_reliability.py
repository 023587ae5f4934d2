"""Losing nothing: crashes, restarts, rebalances, a frozen broker and bad input, each
against real worker processes and a real broker, checked against a backtest of the
same events (which counts every event exactly once by construction)."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from streamkit import (
    Topics,
    WorkerProc,
    create_worker_topics,
    produce,
    read_topic,
    records_of,
    wait_for,
)
from test_worker import CONFIG, HISTORY, INCIDENT, START, check_ledger, scenario, settled

from detector.backtest import Backtest
from detector.broker import EmbeddedBroker
from detector.wire.rulestate import H_OFFSET, H_PARTITION, H_REASON, H_TOPIC

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

END = START + HISTORY + INCIDENT
UNTIL = END - 120
SPLIT = START + HISTORY + 10 * 60  # ten minutes into the incident: after the first pause


@pytest.fixture(scope="module")
def traffic() -> tuple[list[bytes], list[bytes], dict[str, list[float]]]:
    """The events, their keys, and the ground truth counts per rule."""
    values, keys, _ = scenario()
    counts: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for v in values:
        d = orjson.loads(v)
        kind = (
            0
            if d["action"] in ("deactivate_account", "suspend_account")
            else (1 if d["action"] in ("reinstate_account", "restore_content") else 2)
        )
        counts[d["rule_id"]][kind] += 1
    return values, keys, dict(counts)


@pytest.fixture(scope="module")
def expected(traffic: tuple[list[bytes], list[bytes], Any]) -> list[dict[str, Any]]:
    return settled([r.to_dict() for r in Backtest(CONFIG).events(iter(traffic[0])).records], UNTIL)


@pytest.fixture
def workers() -> Iterator[list[WorkerProc]]:
    procs: list[WorkerProc] = []
    yield procs
    for w in procs:
        w.stop()
        # Shown by pytest only when the test failed: what each worker did.
        print(f"----- worker {w.name} -----\n" + "\n".join(w.log().splitlines()[-150:]))


Part = tuple[list[bytes], list[bytes]]
"""Values and keys of part of the traffic."""


def split(traffic: tuple[list[bytes], list[bytes], Any], at: float) -> tuple[Part, Part]:
    values, keys, _ = traffic
    i = next(n for n, v in enumerate(values) if orjson.loads(v)["occurred_at"] >= _iso(at))
    return (values[:i], keys[:i]), (values[i:], keys[i:])


async def first_part_running(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: tuple[list[bytes], list[bytes], Any],
    label: str,
    until: float,
    **worker: Any,
) -> tuple[Topics, Part, Part, WorkerProc]:
    """Fresh topics named after ``label``, the traffic before ``until`` on the input, and
    a worker started on it; returns the topics, both parts of the traffic and the worker."""
    topics = Topics.unique(label)
    await create_worker_topics(broker, topics)
    first, rest = split(traffic, until)
    await produce(broker.bootstrap, topics.actions, *first)
    w = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, **worker)
    workers.append(w.start())
    return topics, first, rest, w


def _iso(t: float) -> str:
    from detector.wire.timefmt import to_rfc3339

    return to_rfc3339(t)


def watermark(w: WorkerProc) -> float:
    return float((w.health() or {}).get("watermark") or 0.0)


async def all_judged(workers: list[WorkerProc]) -> None:
    """Wait until the worker owning the engine has judged every event (once the input is
    idle, the ingest moves event time on by the wall clock past the lateness)."""
    done = END + CONFIG.lateness_seconds + 2 * CONFIG.tick_seconds
    await wait_for(
        lambda: any(watermark(w) > done for w in workers if w.alive()),
        120,
        "every event to be judged",
    )


async def check_exactly_once(
    broker: EmbeddedBroker,
    topics: Topics,
    owner: WorkerProc,
    expected: list[dict[str, Any]],
    counts: dict[str, list[float]],
) -> None:
    """Same decisions as the backtest, each published once, every event counted once."""
    published = records_of(await read_topic(broker.bootstrap, topics.alerts))
    assert settled(published, UNTIL) == expected
    opens = [r for r in published if r["to"] == "open" and r["kind"] == "transition"]
    assert len(opens) == len({(r["rule_id"], r["evidence"]["state_version"]) for r in opens})
    states = [orjson.loads(m.value) for m in await read_topic(broker.bootstrap, topics.rule_state)]
    versions = [(s["rule_id"], s["version"]) for s in states]
    assert len(versions) == len(set(versions)), "a rule state was published twice"
    rules = owner.rules()
    late = owner.metric("detector_late_events_total")
    gaps = owner.metric("detector_batch_gaps_total")
    for rule_id, want in counts.items():
        assert rules[rule_id]["counted"] == want, (rule_id, "late", late, "gaps", gaps)


async def test_kill_9_mid_incident_counts_everything_once(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: Any,
    expected: list[dict[str, Any]],
) -> None:
    topics, first, rest, w1 = await first_part_running(
        broker, workers, tmp_path, traffic, "kill9", SPLIT, name="w1"
    )
    await wait_for(lambda: watermark(w1) > START + HISTORY + 120, 60, "the first pause")
    assert w1.rules()["bot"]["state"] in ("open", "half_open")
    sending = asyncio.ensure_future(produce(broker.bootstrap, topics.actions, *rest))
    await wait_for(
        lambda: w1.metric("detector_events_consumed_total") > len(first[0]),
        30,
        "the second half to be read",
    )
    w1.signal(signal.SIGKILL)  # mid-stream: batches sent, commits and checkpoints behind
    assert w1.wait_exit(10) == -signal.SIGKILL
    await sending
    w2 = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, name="w2")
    workers.append(w2.start())
    await all_judged([w2])
    await check_exactly_once(broker, topics, w2, expected, traffic[2])
    await check_ledger(broker, topics, traffic[0])


async def test_kill_9_just_before_a_trip_still_lists_every_affected_account(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: Any,
    expected: list[dict[str, Any]],
) -> None:
    """The ledger's recent deactivations are not in the checkpoint: a new owner rebuilds
    them from the aggregates topic, so a trip right after a crash lists the accounts hit
    since the onset, before the crash included."""
    topics, _, rest, w1 = await first_part_running(
        broker, workers, tmp_path, traffic, "kill9ledger", START + HISTORY, name="w1"
    )  # up to the incident's first event
    await wait_for(
        lambda: (
            w1.metric("detector_checkpoints_total") >= 2 and watermark(w1) > START + HISTORY - 30
        ),
        60,
        "the history to be applied",
    )
    assert w1.rules()["bot"]["state"] == "closed"
    w1.signal(signal.SIGKILL)
    assert w1.wait_exit(10) == -signal.SIGKILL
    await produce(broker.bootstrap, topics.actions, *rest)
    w2 = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, name="w2")
    workers.append(w2.start())
    await all_judged([w2])
    assert "ledger rebuilt" in w2.log()
    await check_exactly_once(broker, topics, w2, expected, traffic[2])
    await check_ledger(broker, topics, traffic[0])


async def test_restart_with_a_rule_paused_keeps_it_paused_without_a_second_alert(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: Any,
    expected: list[dict[str, Any]],
) -> None:
    topics, _, _, w1 = await first_part_running(
        broker, workers, tmp_path, traffic, "restart", START + HISTORY + 5 * 60, name="w1"
    )
    await wait_for(lambda: w1.rules().get("bot", {}).get("state") == "open", 60, "the pause")
    before = records_of(await read_topic(broker.bootstrap, topics.alerts))
    w1.signal(signal.SIGTERM)
    assert w1.wait_exit(20) == 0
    w2 = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, name="w2")
    workers.append(w2.start())
    await wait_for(lambda: (w2.health() or {}).get("owns_engine") is True, 60, "the restart")
    assert w2.rules()["bot"]["state"] == "open"
    # Let it run a while: time moves on, nothing new is decided twice.
    await wait_for(lambda: w2.metric("detector_ingest_batches_total") >= 10, 30, "heartbeats")
    after = records_of(await read_topic(broker.bootstrap, topics.alerts))
    assert after[: len(before)] == before
    assert not [r for r in after[len(before) :] if r["to"] == "open" and r["from"] == "closed"]


async def test_two_workers_hand_over_without_losing_a_decision(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: Any,
    expected: list[dict[str, Any]],
) -> None:
    topics, _, rest, a = await first_part_running(
        broker, workers, tmp_path, traffic, "handover", SPLIT, name="a"
    )
    await wait_for(lambda: watermark(a) > START + HISTORY + 120, 60, "worker a")
    b = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, name="b")
    workers.append(b.start())
    # Both read input partitions once the groups have rebalanced.
    await wait_for(lambda: b.metric("detector_ingest_batches_total") > 0, 60, "worker b to join")
    await produce(broker.bootstrap, topics.actions, *rest)
    a.signal(signal.SIGTERM)
    assert a.wait_exit(20) == 0
    await wait_for(lambda: (b.health() or {}).get("owns_engine") is True, 60, "b to take over")
    await all_judged([b])
    await check_exactly_once(broker, topics, b, expected, traffic[2])


async def test_a_frozen_broker_is_survived_and_shows_in_metrics(
    fresh_broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: Any,
    expected: list[dict[str, Any]],
) -> None:
    broker = fresh_broker
    topics, _, rest, w = await first_part_running(
        broker, workers, tmp_path, traffic, "frozen", SPLIT
    )
    await wait_for(lambda: watermark(w) > START + HISTORY + 120, 60, "the first half")
    broker.pause()
    try:
        frozen_at = time.monotonic()
        await wait_for(
            lambda: (
                w.metric("detector_broker_reachable", 'stage="ingest"') == 0
                and w.get("/metrics") is not None
            ),
            20,
            "the outage to show",
        )
        assert w.metric("detector_broker_outages_total") >= 1
        while time.monotonic() - frozen_at < 30:
            assert w.alive()
            await asyncio.sleep(1)
    finally:
        broker.resume()
    await produce(broker.bootstrap, topics.actions, *rest)
    await wait_for(
        lambda: w.metric("detector_broker_reachable", 'stage="ingest"') == 1,
        60,
        "the worker to reconnect",
    )
    await all_judged([w])
    await check_exactly_once(broker, topics, w, expected, traffic[2])


BAD_INPUT = [
    (b"not json at all", "not_json"),
    (b"\xff\xfe\x00 not utf-8", "not_utf8"),
    (b"[1, 2, 3]", "not_object"),
    (
        orjson.dumps(
            {
                "event_id": "x",
                "occurred_at": 1767571200,
                "rule_id": "r",
                "action": "deactivate_account",
            }
        ),
        "missing_field",
    ),
    (
        orjson.dumps(
            {
                "event_id": "x",
                "occurred_at": "yesterday",
                "rule_id": "r",
                "action": "deactivate_account",
                "account_id": "a",
            }
        ),
        "invalid_value",
    ),
    (
        orjson.dumps(
            {
                "event_id": "x",
                "occurred_at": 1767571200,
                "rule_id": "r",
                "action": "deactivate_account",
                "account_id": 7,
            }
        ),
        "invalid_type",
    ),
    (b'{"event_id": "' + b"x" * (1024 * 1024) + b'"}', "too_large"),
    (
        orjson.dumps(
            {
                "event_id": "x",
                "occurred_at": 4_000_000_000,
                "rule_id": "r",
                "action": "deactivate_account",
                "account_id": "a",
            }
        ),
        "future",
    ),
    (
        orjson.dumps(
            {
                "event_id": "x",
                "occurred_at": 1_000_000_000,
                "rule_id": "r",
                "action": "deactivate_account",
                "account_id": "a",
            }
        ),
        "too_old",
    ),
]


async def test_bad_input_goes_to_the_dead_letter_topic_with_its_reason(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
) -> None:
    topics = Topics.unique("dlq")
    await create_worker_topics(broker, topics)
    good = orjson.dumps(
        {
            "event_id": "g",
            "occurred_at": time.time(),
            "rule_id": "r",
            "action": "deactivate_account",
            "account_id": "a",
        }
    )
    values = [v for v, _ in BAD_INPUT] + [good]
    await produce(
        broker.bootstrap, topics.actions, values, [b"k%d" % i for i in range(len(values))]
    )
    w = WorkerProc(
        broker.bootstrap,
        topics,
        tmp_path,
        CONFIG,
        extra_env={"DETECTOR_MAX_EVENT_AGE": str(365 * 86400)},
    )
    workers.append(w.start())
    await wait_for(
        lambda: w.metric("detector_events_dead_lettered_total") >= len(BAD_INPUT),
        60,
        "the dead letters",
    )
    dead = await read_topic(broker.bootstrap, topics.dlq)
    by_value = {m.value: dict(m.headers) for m in dead}
    for value, reason in BAD_INPUT:
        headers = by_value[value]
        assert headers[H_REASON].decode() == reason
        assert headers[H_TOPIC].decode() == topics.actions
        assert int(headers[H_PARTITION]) >= 0 and int(headers[H_OFFSET]) >= 0
        assert w.metric("detector_events_dead_lettered_total", f'reason="{reason}"') >= 1
    assert len(dead) == len(BAD_INPUT)
    assert good not in by_value
    assert w.alive() and (w.health() or {}).get("status") == "ok"


async def test_sigterm_stops_within_the_bound_even_when_kafka_hangs(
    fresh_broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
) -> None:
    topics = Topics.unique("hang")
    w = WorkerProc(
        fresh_broker.bootstrap,
        topics,
        tmp_path,
        CONFIG,
        extra_env={"DETECTOR_SHUTDOWN_TIMEOUT": "3"},
    )
    workers.append(w.start())
    await wait_for(lambda: (w.health() or {}).get("owns_engine") is True, 60, "the worker")
    fresh_broker.pause()  # a stop that has to talk to Kafka now hangs
    try:
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        code = w.wait_exit(15)
        took = time.monotonic() - started
    finally:
        fresh_broker.resume()
    assert code is not None, "the worker did not stop"
    assert took < 3 + 5
    assert code in (0, 3)
