"""Integration tests of the embedded broker (tansu) and of detector.broker.

Some tests pin down tansu quirks our code works around (auto-created topics,
``end_offsets``); if one starts failing after a tansu upgrade, update
docs/broker-notes.md and the workaround together.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from detector.broker import BrokerStartError, EmbeddedBroker, kafka_answers
from detector.errors import ConfigError
from detector.topics import TopicMismatchError, TopicSpec, create_topics

NewTopicFn = Callable[..., Awaitable[str]]  # the `new_topic` fixture (tests/conftest.py)

pytestmark = pytest.mark.timeout(120)

# Consumer-group settings measured in docs/broker-notes.md: tansu answers the
# first JoinGroup after about session_timeout_ms / 2.
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


def unique_topic_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    return admin


async def _partition_count(bootstrap: str, topic: str) -> int:
    admin = await _admin(bootstrap)
    try:
        (described,) = await admin.describe_topics([topic])
        assert described["error_code"] == 0
        return len(described["partitions"])
    finally:
        await admin.close()


# --- life cycle ---------------------------------------------------------------
@pytest.mark.broker
def test_start_stop_leaves_no_process_and_frees_the_port() -> None:
    broker = EmbeddedBroker().start()
    pid, port = broker.pid, broker.port
    try:
        assert _alive(pid)
        assert kafka_answers(port)
        assert broker.bootstrap == f"127.0.0.1:{port}"
        assert broker.url == f"kafka://127.0.0.1:{port}"
    finally:
        started = time.monotonic()
        broker.stop()
    assert time.monotonic() - started < 2  # SIGTERM is enough: tansu exits in ~2 ms
    assert not _alive(pid)
    assert not kafka_answers(port, timeout=0.2)
    assert _port_bindable(port)
    broker.stop()  # a second stop is harmless


@pytest.mark.broker
def test_context_manager_stops_the_broker_even_on_error() -> None:
    broker = EmbeddedBroker()
    pids: list[int] = []

    def fail_inside() -> None:
        with broker:
            pids.append(broker.pid)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert not _alive(pids[0])
    assert not broker.running


@pytest.mark.broker
def test_stop_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    broker = EmbeddedBroker().start()
    pid = broker.pid
    # Frozen behind the object's back: SIGTERM stays pending, only SIGKILL acts.
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    broker.stop(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert not _alive(pid)


@pytest.mark.broker
def test_a_taken_port_is_a_clear_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerStartError, match=f"port {broker.port} .* already in use"):
        EmbeddedBroker(port=broker.port, start_timeout=3).start()


@pytest.mark.broker
def test_the_same_port_can_be_reused_right_after_a_stop() -> None:
    with EmbeddedBroker() as first:
        port = first.port
    with EmbeddedBroker(port=port) as second:
        assert second.port == port
        assert kafka_answers(port)


def _fake_binary(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-tansu"
    script.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_broker_that_exits_early_reports_its_output(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "echo 'cannot bind: Address in use' >&2\nexit 0")
    with pytest.raises(BrokerStartError, match=r"(?s)exited with status 0.*Address in use"):
        EmbeddedBroker(binary=binary, start_timeout=5).start()


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerStartError, match=r"cannot run tansu binary .*nowhere"):
        EmbeddedBroker(binary=str(tmp_path / "nowhere"), start_timeout=1).start()


def test_a_broker_that_never_answers_times_out_and_is_killed(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "echo 'still thinking' >&2\nexec sleep 60")
    broker = EmbeddedBroker(binary=binary, start_timeout=0.5)
    with pytest.raises(BrokerStartError, match=r"(?s)did not answer.*still thinking"):
        broker.start()
    assert not _alive(int((tmp_path / "pid").read_text()))
    assert not broker.running


@pytest.mark.broker
async def test_pause_freezes_the_broker_and_resume_keeps_its_data(
    fresh_broker: EmbeddedBroker,
) -> None:
    (topic,) = await create_topics(fresh_broker.bootstrap, [TopicSpec("paused", 1)])
    producer = AIOKafkaProducer(bootstrap_servers=fresh_broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before")
        fresh_broker.pause()
        assert not kafka_answers(fresh_broker.port, timeout=0.3)
        # A send during the outage waits (request_timeout_ms is 40 s), then lands.
        pending = asyncio.ensure_future(producer.send_and_wait(topic, b"during"))
        await asyncio.sleep(2)
        assert not pending.done()
        fresh_broker.resume()
        await asyncio.wait_for(pending, 10)
    finally:
        fresh_broker.resume()
        await producer.stop()
    assert await _read_all(fresh_broker.bootstrap, TopicPartition(topic, 0)) == [
        b"before",
        b"during",
    ]


async def _read_all(bootstrap: str, tp: TopicPartition) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        while batch := await consumer.getmany(tp, timeout_ms=500):
            values += [m.value for m in batch[tp]]
        return values
    finally:
        await consumer.stop()


# --- produce and consume ------------------------------------------------------
@pytest.mark.broker
async def test_produce_consume_round_trip_through_a_consumer_group(
    broker: EmbeddedBroker, new_topic: NewTopicFn
) -> None:
    topic = await new_topic(partitions=3)
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(300)}
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=k) for k, v in sent.items()]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=unique_topic_name("group"),
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    started = time.monotonic()
    await consumer.start()
    received: dict[bytes, bytes] = {}
    partitions: set[int] = set()
    try:
        while len(received) < len(sent) and time.monotonic() - started < 30:
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                partitions.add(tp.partition)
                received.update((m.key, m.value) for m in messages)
    finally:
        await consumer.stop()
    assert received == sent
    assert partitions == {0, 1, 2}
    # session_timeout_ms=2000 means a ~1 s join; the 10 s default would cost 5 s.
    assert time.monotonic() - started < 10


@pytest.mark.broker
async def test_one_mebibyte_values_need_a_larger_max_request_size(
    broker: EmbeddedBroker, new_topic: NewTopicFn
) -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    topic = await new_topic()
    value = b"x" * (1 << 20)
    default = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await default.start()
    try:
        with pytest.raises(MessageSizeTooLargeError):
            await default.send_and_wait(topic, value)
    finally:
        await default.stop()
    big = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 << 20)
    await big.start()
    try:
        await big.send_and_wait(topic, value)
    finally:
        await big.stop()
    assert await _read_all(broker.bootstrap, TopicPartition(topic, 0)) == [value]


# --- topics -------------------------------------------------------------------
@pytest.mark.broker
async def test_a_topic_created_with_8_partitions_has_8(
    broker: EmbeddedBroker, new_topic: NewTopicFn
) -> None:
    topic = await new_topic(partitions=8)
    assert await _partition_count(broker.bootstrap, topic) == 8
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == set(range(8))
    finally:
        await producer.stop()


@pytest.mark.broker
async def test_a_compacted_topic_keeps_its_config_but_every_record(
    broker: EmbeddedBroker, new_topic: NewTopicFn
) -> None:
    """tansu stores ``cleanup.policy=compact`` and reports it back, but never
    compacts (not even with segment.ms=100 after 40 s): readers of a
    "compacted" topic see every version of a key, tombstones included."""
    topic = await new_topic(config={"cleanup.policy": "compact"})
    admin = await _admin(broker.bootstrap)
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = response.to_object()["resources"]
    entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
    assert entries == {"cleanup.policy": "compact"}

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for value in (b"v1", b"v2", None):
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    assert await _read_all(broker.bootstrap, TopicPartition(topic, 0)) == [b"v1", b"v2", None]


@pytest.mark.broker
async def test_create_topics_is_idempotent_and_rejects_mismatches(broker: EmbeddedBroker) -> None:
    name = unique_topic_name("idempotent")
    compacted = unique_topic_name("idempotent-compact")
    specs = [TopicSpec(name, 6), TopicSpec(compacted, 2, {"cleanup.policy": "compact"})]
    assert await create_topics(broker.bootstrap, specs) == [name, compacted]
    assert await create_topics(broker.bootstrap, specs) == []
    with pytest.raises(TopicMismatchError, match=rf"{name}.*partition count is 6, wanted 3"):
        await create_topics(broker.bootstrap, [TopicSpec(name, 3)])
    with pytest.raises(
        TopicMismatchError, match=r"'cleanup\.policy' is 'compact', wanted 'delete'"
    ):
        await create_topics(
            broker.bootstrap, [TopicSpec(compacted, 2, {"cleanup.policy": "delete"})]
        )


@pytest.mark.broker
async def test_quirk_asking_for_metadata_auto_creates_a_4_partition_topic(
    broker: EmbeddedBroker,
) -> None:
    """Why create_topics must run before any client touches a topic."""
    name = unique_topic_name("auto")
    assert await _partition_count(broker.bootstrap, name) == 4  # describing created it
    with pytest.raises(TopicMismatchError, match=r"is 4, wanted 8 .*auto-created"):
        await create_topics(broker.bootstrap, [TopicSpec(name, 8)])


@pytest.mark.broker
async def test_quirk_end_offsets_counts_batches_not_records(
    broker: EmbeddedBroker, new_topic: NewTopicFn
) -> None:
    """ListOffsets(latest) answers last batch's base offset + 1; the fetch
    high-watermark is right. Use ``highwater()`` after a fetch, not ``end_offsets``."""
    topic = await new_topic()
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=500)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"x", partition=0) for _ in range(10)]
        await producer.flush()
        offsets = [(await f).offset for f in futures]
    finally:
        await producer.stop()
    assert offsets == list(range(10))  # one batch of ten records

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    try:
        assert (await consumer.end_offsets([tp]))[tp] == 1  # Kafka would say 10
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await consumer.getmany(tp, timeout_ms=2000)
        assert consumer.highwater(tp) == 10
    finally:
        await consumer.stop()


def test_topic_spec_validates_itself() -> None:
    with pytest.raises(ConfigError, match=r"partitions.*must be >= 1.*got 0"):
        TopicSpec("t", 0)
    with pytest.raises(ConfigError, match=r"topic\.name"):
        TopicSpec("", 1)


async def test_create_topics_rejects_duplicate_names() -> None:
    with pytest.raises(ConfigError, match="unique"):
        await create_topics("127.0.0.1:1", [TopicSpec("a", 1), TopicSpec("a", 2)])


# --- `detector broker` --------------------------------------------------------
@pytest.mark.broker
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_forever_serves_until_signalled(sig: signal.Signals) -> None:
    code = "import sys; from detector.broker import run_forever; sys.exit(run_forever())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        fields = dict(line.split(" ")[0].strip().split("=", 1) for line in lines)
        port = int(fields["bootstrap"].rsplit(":", 1)[1])
        tansu_pid = int(fields["pid"])
        assert fields["url"] == f"kafka://127.0.0.1:{port}"
        assert kafka_answers(port)
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert not _alive(tansu_pid)
        assert _port_bindable(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
