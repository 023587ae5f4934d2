"""The state stage: a Faust agent that holds the engine and publishes its decisions.

It consumes ingest batches from the single-partition aggregates topic with
manual acknowledgements, applies them to the :class:`StateMachine`, and
publishes each transition and alert to the alerts topic and each new rule state
to the compacted rule-state topic. Every few seconds it writes the whole
machine, compressed, as ONE value of a Faust table (one changelog record, so a
checkpoint is atomic) and only then acknowledges the messages it covers. Faust
flushes the producer before committing offsets, so a committed offset never
runs ahead of its checkpoint.

After a crash or a rebalance the new owner restores the checkpoint, skips the
messages it already covers, and replays the rest — deterministically, so the
engine ends up exactly where it was. Outputs of the replayed messages that were
already published before the crash are recognised by their headers (source
offset and sequence number) and not published twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from detector.config import EngineConfig
from detector.engine.core import BucketScore
from detector.errors import ContractError
from detector.metrics import Metrics
from detector.stream.machine import StateMachine
from detector.stream.settings import Settings
from detector.topics import read_to_end
from detector.wire.aggregates import IngestBatch, RuleTick
from detector.wire.records import Record
from detector.wire.rulestate import (
    H_ERROR,
    H_REASON,
    H_TOPIC,
    RuleStateMessage,
    output_headers,
    output_id,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "engine"


class StateStage:
    """The engine's owner inside the worker (one per process; active where the
    aggregates partition is assigned)."""

    def __init__(
        self, settings: Settings, config: EngineConfig, metrics: Metrics, app: Any, table: Any
    ) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.app = app
        self.table = table
        self.machine: StateMachine | None = None
        self.pending: list[Any] = []
        self.published: set[tuple[int, int]] = set()
        """Outputs found already published after the restored checkpoint."""
        self.out_next: dict[str, dict[str, int]] = {}
        """Per output topic and partition: the offset after the last output published."""
        self.last_checkpoint = 0.0
        self.stale = True
        self.first_after_load = False
        self.lock = asyncio.Lock()

    # ----- lifecycle -----
    def on_assignment_changed(self) -> None:
        """A rebalance happened: rebuild from the table before the next message."""
        self.stale = True

    async def load(self) -> None:
        """Restore the machine from the checkpoint table (or start afresh)."""
        blob = self.table.get(CHECKPOINT_KEY)
        if blob:
            data = orjson.loads(zlib.decompress(blob))
            self.machine = StateMachine.restore(data["machine"], self.config, self._on_bucket)
            self.out_next = data.get("outputs", {})
            self.published = await self._read_back(self.out_next)
            log.info(
                "state restored from checkpoint",
                extra={
                    "position": self.machine.position,
                    "rules": len(self.machine.engine.rules),
                    "already_published": len(self.published),
                },
            )
        else:
            self.machine = StateMachine(self.config, on_bucket=self._on_bucket)
            self.out_next = {}
            self.published = await self._read_back({})
            log.info("no checkpoint: starting with an empty engine")
        self.pending = []
        self.stale = False
        self.first_after_load = True
        for rule_id, rule in sorted(self.machine.engine.rules.items()):
            self.metrics.set_rule_state(rule_id, rule.s.state)
        glob = self.machine.engine.glob
        if glob is not None:
            self.metrics.set_rule_state(glob.s.rule_id, glob.s.state)

    def _on_bucket(self, b: BucketScore) -> None:
        m = self.metrics
        m.rule_observed.labels(rule_id=b.rule_id).set(b.observed)
        m.rule_expected.labels(rule_id=b.rule_id).set(b.expected)
        m.rule_band_upper.labels(rule_id=b.rule_id).set(
            b.expected + 3.0 * math.sqrt(b.expected + b.dispersion * b.expected**2)
        )
        m.rule_score.labels(rule_id=b.rule_id).set(b.score)

    # ----- per message -----
    async def handle(self, stream: Any, event: Any) -> None:
        """Apply one aggregates message (``event``) and publish what it decided."""
        async with self.lock:
            if self.stale or self.machine is None:
                await self.load()
            machine = self.machine
            assert machine is not None
            offset = event.message.offset
            if self.first_after_load:
                self.first_after_load = False
                if offset > machine.position + 1:
                    # Faust resumed past the checkpoint: the messages in between are lost.
                    self.metrics.batch_gaps.inc()
                    log.error(
                        "aggregates resumed past the checkpoint",
                        extra={"checkpoint_position": machine.position, "resumed_at": offset},
                    )
            if offset <= machine.position:
                await stream.ack(event)  # already inside the restored checkpoint
                return
            try:
                batch = IngestBatch.from_json(event.value)
            except ContractError as exc:
                log.error(
                    "unreadable aggregates message skipped",
                    extra={"offset": offset, "error": str(exc)},
                )
                machine.position = offset
                self.pending.append(event)
                return
            applied = machine.apply(batch, offset)
            if applied.duplicate:
                self.metrics.duplicate_batches.inc()
            if applied.gap:
                self.metrics.batch_gaps.inc()
                log.warning(
                    "ingest batch does not continue its partition's range",
                    extra={"partition": batch.partition, "lo": batch.lo},
                )
            await self._publish(applied.records, offset)
            if applied.late:
                await self._dead_letter_late(applied.late, offset)
            self._observe(batch, applied.records)
            self.pending.append(event)
            if time.monotonic() - self.last_checkpoint >= self.settings.checkpoint_interval:
                await self.checkpoint(stream)

    async def checkpoint(self, stream: Any) -> None:
        """Write the machine to the table, then acknowledge what it covers."""
        machine = self.machine
        if machine is None:
            return
        blob = zlib.compress(
            orjson.dumps({"machine": machine.snapshot(), "outputs": self.out_next}), 1
        )
        self.table[CHECKPOINT_KEY] = blob
        # Each checkpoint is sent alone, now: durable before the acks below, and never
        # batched with the next one (tansu under-reports a changelog's end after a batch
        # of several records, and Faust would then restore an older checkpoint).
        await self.app.producer.flush()
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_bytes.set(len(blob))
        for event in self.pending:
            await stream.ack(event)
        self.pending = []
        self.published = {p for p in self.published if p[0] > machine.position}
        self.last_checkpoint = time.monotonic()

    # ----- outputs -----
    async def _publish(self, records: list[Record], offset: int) -> None:
        s = self.settings
        for seq, rec in enumerate(records):
            if (offset, seq) in self.published:
                continue
            headers = output_headers(offset, seq)
            key = rec.rule_id.encode()
            if rec.is_transition:
                meta = await self.app.producer.send_and_wait(
                    s.topic_rule_state, key, RuleStateMessage.of(rec).to_json(), None, None, headers
                )
                self._advance(s.topic_rule_state, meta)
            meta = await self.app.producer.send_and_wait(
                s.topic_alerts, key, rec.to_json(), None, None, headers
            )
            self._advance(s.topic_alerts, meta)

    def _advance(self, topic: str, meta: Any) -> None:
        parts = self.out_next.setdefault(topic, {})
        parts[str(meta.partition)] = max(parts.get(str(meta.partition), 0), meta.offset + 1)

    async def _dead_letter_late(self, late: list[RuleTick], offset: int) -> None:
        s = self.settings
        events = sum(a.deactivations + a.reversals + a.other for a in late)
        self.metrics.late_events.inc(events)
        for agg in late:
            headers = [
                (H_REASON, b"too_late"),
                (H_ERROR, b"the aggregate's bucket was already closed"),
                (H_TOPIC, s.topic_aggregates.encode()),
                *output_headers(offset, -1),
            ]
            await self.app.producer.send_and_wait(
                s.topic_dlq, agg.rule_id.encode(), orjson.dumps(agg.to_dict()), None, None, headers
            )

    async def _read_back(self, since: dict[str, dict[str, int]]) -> set[tuple[int, int]]:
        """Ids of outputs published after the checkpoint (read from the output topics)."""
        s = self.settings
        found: set[tuple[int, int]] = set()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, enable_auto_commit=False, **s.kafka_security()
        )
        await consumer.start()
        try:
            for topic in (s.topic_alerts, s.topic_rule_state):
                parts = consumer.partitions_for_topic(topic) or set()
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                if not tps:
                    continue
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, since.get(topic, {}).get(str(tp.partition), 0))
                await read_to_end(
                    consumer, tps, lambda msg: found.add(output_id(list(msg.headers or ())))
                )
        finally:
            await consumer.stop()
        return found

    # ----- metrics -----
    def _observe(self, batch: IngestBatch, records: list[Record]) -> None:
        m = self.metrics
        machine = self.machine
        assert machine is not None
        now = time.time()
        m.last_processed.set(now)
        wm = machine.watermark()
        if wm is not None:
            m.watermark.set(wm)
            m.watermark_lag.set(max(0.0, now - wm))
        if batch.oldest_append_ms is not None:
            # The batch's oldest event waited longest: every event's latency is at most this.
            m.latency.observe(max(0.0, now - batch.oldest_append_ms / 1000.0))
        for rec in records:
            if rec.is_transition:
                m.transitions.labels(rule_id=rec.rule_id, to=rec.to_state, reason=rec.reason).inc()
                m.set_rule_state(rec.rule_id, rec.to_state)
            else:
                m.alerts.labels(rule_id=rec.rule_id, reason=rec.reason).inc()
            share = rec.evidence.get("outside_share")
            if isinstance(share, float | int):
                m.rule_outside_share.labels(rule_id=rec.rule_id).set(share)
