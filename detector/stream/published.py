"""What the state stage has already published: read back from its output topics.

After a crash, the new owner of the engine replays the aggregates after the last
checkpoint; the outputs those produced before the crash are on the output topics
already. :func:`read_back` collects them, and :class:`Published` recognises a
replayed output, which is then not sent twice.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from detector.stream.settings import Settings
from detector.topics import read_to_end
from detector.wire.rulestate import output_id

log = logging.getLogger(__name__)


class Published:
    """Outputs already on the output topics after the checkpoint, by topic.

    An output is recognised by its id (the aggregates offset and sequence number in its
    headers) or, should a replay number its outputs differently, by its bytes: a rule
    state or an alert has its rule, event time and state version in it, so the same
    bytes are the same decision. Topics are told apart: a crash between a rule state
    and its alert leaves the alert to send.
    """

    def __init__(self) -> None:
        self.ids: dict[str, set[tuple[int, int]]] = {}
        self.values: dict[str, dict[bytes, int]] = {}

    def add(self, topic: str, oid: tuple[int, int], value: bytes | None) -> None:
        self.ids.setdefault(topic, set()).add(oid)
        if value is not None:
            self.values.setdefault(topic, {})[hashlib.blake2b(value, digest_size=16).digest()] = (
                oid[0]
            )

    def has(self, topic: str, offset: int, seq: int, value: bytes) -> bool:
        if (offset, seq) in self.ids.get(topic, ()):
            return True
        return hashlib.blake2b(value, digest_size=16).digest() in self.values.get(topic, {})

    def update(self, other: Published) -> None:
        for topic, ids in other.ids.items():
            self.ids.setdefault(topic, set()).update(ids)
        for topic, values in other.values.items():
            self.values.setdefault(topic, {}).update(values)

    def prune(self, position: int) -> None:
        """Forget outputs of aggregates at or below ``position``: never replayed again."""
        self.ids = {t: {i for i in ids if i[0] > position} for t, ids in self.ids.items()}
        self.values = {
            t: {h: o for h, o in vs.items() if o > position} for t, vs in self.values.items()
        }

    def counts(self) -> dict[str, int]:
        return {t: len(ids) for t, ids in self.ids.items()}


def _found(found: Published, topic: str, msg: Any) -> None:
    found.add(topic, output_id(list(msg.headers or ())), msg.value)


async def read_back(settings: Settings, since: dict[str, dict[str, int]]) -> Published:
    """The outputs on the alerts and rule-state topics from the offsets ``since``
    (topic -> partition -> offset; the start where not given)."""
    s = settings
    found = Published()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap, enable_auto_commit=False, **s.kafka_security()
    )
    await consumer.start()
    try:
        for topic in (s.topic_alerts, s.topic_rule_state):
            # Ask the broker: the consumer's own metadata knows only the topics it
            # has been asked about, and would silently read nothing.
            parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
            parts = parts or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                continue
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, since.get(topic, {}).get(str(tp.partition), 0))
            await read_to_end(consumer, tps, functools.partial(_found, found, topic))
            log.info(
                "outputs read back",
                extra={
                    "topic": topic,
                    "from": {
                        str(tp.partition): since.get(topic, {}).get(str(tp.partition), 0)
                        for tp in tps
                    },
                    "found": found.counts().get(topic, 0),
                },
            )
    finally:
        await consumer.stop()
    return found
