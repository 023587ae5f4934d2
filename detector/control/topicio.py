"""Reading the control topics to their end and writing to them, with timeouts.

The edge of the operator tooling: every function here talks to Kafka, and turns a
broker that does not answer in time into :class:`BrokerUnreachableError` and a
topic that does not exist into :class:`TopicMissingError`. A topic's existence is
checked with an all-topics metadata request, which names no topic: a request that
names an unknown topic makes tansu (and Kafka with auto-creation on) create it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from detector.control.errors import BrokerUnreachableError, TopicMissingError
from detector.stream.settings import MAX_MESSAGE_BYTES, Settings
from detector.topics import TopicError, read_to_end

READ_SECONDS = 120.0
"""Longest a read of a whole topic may take once the broker has answered."""
_STOP_SECONDS = 5.0


@dataclass(frozen=True)
class Message:
    """One message of a topic, as the views need it."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: float
    """The record's timestamp, in epoch seconds."""

    @classmethod
    def of(cls, record: Any) -> Message:
        """From an aiokafka ``ConsumerRecord``."""
        return cls(
            record.key, record.value, record.partition, record.offset, record.timestamp / 1000.0
        )


async def existing_partitions(client: Any, topic: str) -> list[int] | None:
    """The partitions of ``topic``, or ``None`` if it does not exist (never creates it).

    ``client`` is an aiokafka ``AIOKafkaClient`` (a producer's ``client``, a consumer's
    ``_client``).
    """
    cluster = await client.fetch_all_metadata()
    parts = cluster.partitions_for_topic(topic)
    return sorted(parts) if parts else None


def _unreachable(settings: Settings, timeout: float, exc: BaseException | None) -> Exception:
    why = ""
    if exc is not None:
        text, name = str(exc), type(exc).__name__
        why = f": {text}" if text.startswith(name) else f": {name}: {text}" if text else f": {name}"
    return BrokerUnreachableError(
        f"cannot reach the broker {settings.broker} (timeout {timeout:g} s){why}"
    )


@asynccontextmanager
async def _consumer(
    settings: Settings, topic: str, setting: str, timeout: float
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=MAX_MESSAGE_BYTES,
        client_id="detector-ctl",
        **settings.kafka_security(),
    )
    try:
        try:
            await asyncio.wait_for(consumer.start(), timeout)
            parts = await asyncio.wait_for(
                existing_partitions(consumer._client, topic),  # no public equivalent
                timeout,
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            raise _unreachable(settings, timeout, exc) from None
        if parts is None:
            raise TopicMissingError(topic, setting)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        yield consumer, tps
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), _STOP_SECONDS)


async def check_topic(settings: Settings, topic: str, setting: str, timeout: float) -> None:
    """Raise :class:`TopicMissingError` unless ``topic`` exists (without creating it)."""
    async with _consumer(settings, topic, setting, timeout):
        pass


async def read_all(settings: Settings, topic: str, setting: str, timeout: float) -> list[Message]:
    """Every message of ``topic``, in topic order (by partition, then offset).

    ``setting`` names the ``DETECTOR_TOPIC_*`` variable for error messages.
    """
    out: list[Any] = []
    async with _consumer(settings, topic, setting, timeout) as (consumer, tps):
        try:
            await asyncio.wait_for(consumer.seek_to_beginning(*tps), timeout)
            await read_to_end(consumer, tps, out.append, timeout_s=READ_SECONDS, poll_ms=200)
        except (TimeoutError, KafkaError, TopicError) as exc:
            raise _unreachable(settings, timeout, exc) from None
    out.sort(key=lambda r: (r.partition, r.offset))
    return [Message.of(r) for r in out]


class Follower:
    """New messages of a topic from the moment it was opened (see :func:`follow`)."""

    def __init__(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        self._consumer = consumer
        self._tps = tps

    async def first(self, match: Callable[[Message], bool], wait: float) -> Message | None:
        """The first new message ``match`` accepts, or ``None`` after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            batch = await self._consumer.getmany(*self._tps, timeout_ms=int(min(left, 0.5) * 1000))
            for records in batch.values():
                for record in records:
                    msg = Message.of(record)
                    if match(msg):
                        return msg
        return None


@asynccontextmanager
async def follow(
    settings: Settings, topic: str, setting: str, timeout: float
) -> AsyncIterator[Follower]:
    """Open ``topic`` at its end, to watch for what is written next."""
    async with _consumer(settings, topic, setting, timeout) as (consumer, tps):
        try:
            # tansu's ListOffsets(latest) can answer a little before the true end: the
            # follower may see a few older messages, which the caller's match skips.
            await asyncio.wait_for(consumer.seek_to_end(*tps), timeout)
        except (TimeoutError, KafkaError) as exc:
            raise _unreachable(settings, timeout, exc) from None
        yield Follower(consumer, tps)


@dataclass(frozen=True)
class Sent:
    """Where a message was written."""

    topic: str
    partition: int
    offset: int


async def send_all(
    settings: Settings,
    topic: str,
    setting: str,
    items: list[tuple[bytes, bytes]],
    timeout: float,
) -> list[Sent]:
    """Write ``(key, value)`` messages and wait until the broker has them all.

    On a timeout some may have been written: the messages the tooling writes carry
    ids their consumers deduplicate by, so sending again is safe.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        linger_ms=5,
        request_timeout_ms=max(1000, int(timeout * 1000)),
        max_request_size=MAX_MESSAGE_BYTES,
        client_id="detector-ctl",
        **settings.kafka_security(),
    )
    try:
        try:
            await asyncio.wait_for(producer.start(), timeout)
            parts = await asyncio.wait_for(existing_partitions(producer.client, topic), timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise _unreachable(settings, timeout, exc) from None
        if parts is None:
            raise TopicMissingError(topic, setting)

        async def send() -> list[Any]:
            futures = [await producer.send(topic, value, key=key) for key, value in items]
            return list(await asyncio.gather(*futures))

        try:
            # The timeout is for the broker to answer, not for a large batch to go out.
            metas = await asyncio.wait_for(send(), timeout * max(1.0, len(items) / 10_000))
        except (TimeoutError, KafkaError) as exc:
            raise _unreachable(settings, timeout, exc) from None
        return [Sent(m.topic, m.partition, m.offset) for m in metas]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), _STOP_SECONDS)
