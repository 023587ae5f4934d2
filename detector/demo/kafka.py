"""The demo's Kafka edge: topics, the traffic and command producer, and a follower of
the worker's output topics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from detector.errors import ContractError
from detector.stream.settings import Settings
from detector.wire.affected import AffectedAccount, TripSummary, parse_ledger_record
from detector.wire.audit import AuditRecord
from detector.wire.commands import Command
from detector.wire.records import Record
from detector.wire.rulestate import RuleStateMessage

log = logging.getLogger(__name__)

SEND_CHUNK = 20_000
"""Sends in flight at once while backfilling."""

Published = Record | RuleStateMessage | AuditRecord | AffectedAccount | TripSummary
OnPublished = Callable[[Published, bytes | None], None]


async def create_demo_topics(settings: Settings) -> None:
    """Every topic the worker uses, created before any client touches them (the embedded
    broker would auto-create a topic with 4 partitions as soon as a client asks)."""
    from detector.stream.worker import ensure_topics

    await ensure_topics(settings)


class Producer:
    """Sends the traffic and the operator's commands."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            linger_ms=5,
            max_batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        self.sent = 0

    async def start(self) -> None:
        """Connect."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()

    async def send_events(self, events: Sequence[tuple[bytes, bytes]]) -> None:
        """Send ``(key, value)`` events to the input topic and wait until all are written."""
        topic = self.settings.topic_actions
        send = self._producer.send
        for i in range(0, len(events), SEND_CHUNK):
            futures = [
                await send(topic, value, key=key) for key, value in events[i : i + SEND_CHUNK]
            ]
            await asyncio.gather(*futures)
        self.sent += len(events)

    async def send_command(self, command: Command) -> None:
        """Send one (signed) operator command."""
        await self._producer.send_and_wait(
            self.settings.topic_commands, command.to_json(), key=command.rule_id.encode()
        )


@dataclass
class Follower:
    """Reads the worker's decisions, rule states, audit records and ledger, from the
    beginning, without a consumer group (no join to wait for)."""

    settings: Settings
    on_published: OnPublished
    stopping: bool = False

    async def run(self) -> None:
        """Follow the topics until :attr:`stopping` is set (or the task is cancelled)."""
        s = self.settings
        parsers: dict[str, Callable[[bytes], Published]] = {
            s.topic_alerts: _record,
            s.topic_rule_state: RuleStateMessage.from_json,
            s.topic_audit: AuditRecord.from_json,
            s.topic_affected: parse_ledger_record,
        }
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in parsers
                for p in sorted(consumer.partitions_for_topic(topic) or {0})
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self.stopping:
                batches = await consumer.getmany(timeout_ms=100)
                for tp, messages in batches.items():
                    for msg in messages:
                        self._dispatch(parsers[tp.topic], msg)
        finally:
            await consumer.stop()

    def _dispatch(self, parse: Callable[[bytes], Published], msg: Any) -> None:
        try:
            item = parse(msg.value or b"")
        except ContractError as exc:
            log.warning("unreadable output record skipped: %s (%s)", exc, msg.topic)
            return
        self.on_published(item, msg.key)


def _record(raw: bytes) -> Record:
    import orjson

    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ContractError("not_json", None, "not valid JSON") from None
    return Record.from_dict(data)
