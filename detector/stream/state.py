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
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from detector.config import EngineConfig
from detector.engine.core import BucketScore
from detector.errors import ContractError
from detector.metrics import Metrics
from detector.stream.machine import Applied, StateMachine
from detector.stream.published import Published, read_back
from detector.stream.settings import MAX_MESSAGE_BYTES, Settings
from detector.topics import TopicError
from detector.wire.affected import AffectedAccount
from detector.wire.aggregates import COMMANDS_KEY, CommandBatch, IngestBatch, RuleTick
from detector.wire.records import Record
from detector.wire.rulestate import (
    H_ERROR,
    H_REASON,
    H_TOPIC,
    RuleStateMessage,
    output_headers,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "engine"
CHECKPOINT_KEY_JSON = orjson.dumps(CHECKPOINT_KEY)
"""The key as the table's changelog stores it (Faust's ``json`` key serializer)."""


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
        self.published = Published()
        """Outputs found already published after the restored checkpoint."""
        self.out_next: dict[str, dict[str, int]] = {}
        """Per output topic and partition: the offset after the last output published."""
        self.last_checkpoint = 0.0
        self.stale = True
        self.checkpointed = -1
        self.stream: Any = None
        """Offset of the last message the table's checkpoint covers."""
        self.lock = asyncio.Lock()
        self.stated: set[str] = set()
        """Rules whose state metric is set."""

    # ----- lifecycle -----
    def on_assignment_changed(self) -> None:
        """A rebalance happened: before the next message, check whether another worker
        moved the engine on meanwhile (then rebuild it from the table)."""
        self.stale = True

    def _table_is_ahead(self) -> bool:
        blob = self.table.get(CHECKPOINT_KEY)
        if not blob or self.machine is None:
            return self.machine is None
        position = int(orjson.loads(zlib.decompress(blob))["machine"]["position"])
        return position > self.machine.position

    async def load(self) -> None:
        """Restore the machine from the checkpoint table (or start afresh)."""
        blob = self.table.get(CHECKPOINT_KEY)
        if blob:
            data = orjson.loads(zlib.decompress(blob))
            self.machine = StateMachine.restore(data["machine"], self.config, self._on_bucket)
            self.out_next = data.get("outputs", {})
            self.published = await read_back(self.settings, self.out_next)
            await self._rebuild_ledger()
            log.info(
                "state restored from checkpoint",
                extra={
                    "position": self.machine.position,
                    "rules": len(self.machine.engine.rules),
                    "already_published": self.published.counts(),
                },
            )
        else:
            self.machine = StateMachine(self.config, on_bucket=self._on_bucket)
            self.out_next = {}
            self.published = await read_back(self.settings, {})
            log.info("no checkpoint: starting with an empty engine")
        self.pending = []
        self.checkpointed = self.machine.position
        self.stale = False
        for rule_id, rule in sorted(self.machine.engine.rules.items()):
            self.metrics.set_rule_state(rule_id, rule.s.state)
        glob = self.machine.engine.glob
        if glob is not None:
            self.metrics.set_rule_state(glob.s.rule_id, glob.s.state)

    def _on_bucket(self, b: BucketScore) -> None:
        m = self.metrics
        if b.rule_id not in self.stated:
            # A rule's state series exists from its first bucket, not its first transition.
            self.stated.add(b.rule_id)
            machine = self.machine
            if machine is not None:
                glob = machine.engine.glob
                rule = machine.engine.rules.get(b.rule_id)
                if rule is None and glob is not None and glob.s.rule_id == b.rule_id:
                    rule = glob
                if rule is not None:
                    m.set_rule_state(b.rule_id, rule.s.state)
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
            if self.machine is None or (self.stale and self._table_is_ahead()):
                await self.load()
            elif self.stale:
                # Ours again, and no one got further: keep the engine in memory, but learn
                # what another owner may have published meanwhile.
                self.published.update(await read_back(self.settings, self.out_next))
            self.stale = False
            self.stream = stream
            machine = self.machine
            assert machine is not None
            offset = event.message.offset
            expect = machine.position + 1
            if offset < expect:
                # Already applied. Acknowledge it only once a checkpoint covers it: a
                # message redelivered after a rebalance may be applied in memory only.
                if offset <= self.checkpointed:
                    await stream.ack(event)
                else:
                    self.pending.append(event)
                return
            if offset > expect:
                await self._fill_gap(event.message.tp, expect, offset)
            await self._apply(offset, event.key, event.value)
            self.pending.append(event)
            if time.monotonic() - self.last_checkpoint >= self.settings.checkpoint_interval:
                await self.checkpoint(stream)

    async def close(self) -> None:
        """On a clean stop: checkpoint what is applied, so the next owner replays nothing."""
        async with self.lock:
            machine = self.machine
            if machine is None or self.stale or self.stream is None:
                return  # not ours (or no longer known to be): the owner's checkpoint stands
            if machine.position > self.checkpointed:
                await self.checkpoint(self.stream)
                log.info("final checkpoint written", extra={"position": machine.position})

    async def _apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        machine = self.machine
        assert machine is not None
        try:
            if key == COMMANDS_KEY:
                commands = CommandBatch.from_json(value or b"")
            else:
                batch = IngestBatch.from_bytes(value or b"")
        except ContractError as exc:
            log.error(
                "unreadable aggregates message skipped", extra={"offset": offset, "error": str(exc)}
            )
            machine.position = offset
            return
        if key == COMMANDS_KEY:
            applied = machine.apply_commands(commands, offset)
            await self._publish(applied.records, offset)
            await self._publish_control(applied)
            self._observe_commands(applied)
            self._observe_records(applied.records)
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
        await self._publish_control(applied)
        if applied.late:
            await self._dead_letter_late(applied.late, offset)
        self._observe(batch, applied.records)
        self._observe_commands(applied)

    async def _fill_gap(self, tp: Any, start: int, stop: int) -> None:
        """Read and apply the messages ``start`` to ``stop - 1`` that Faust skipped.

        Faust positions a partition at its committed offset, or — with no commit yet,
        or after a rebalance — wherever its fetcher happens to be; it then never goes
        back (seeking from inside the agent races with its fetch loop, which drops
        anything below the offsets it already delivered). The engine must see every
        message in order, so it reads the missing ones itself. Faust commits an offset
        only after the acknowledged ones, so telling it about the gap (after these
        messages are applied) keeps its commits behind the checkpoints.
        """
        log.warning(
            "aggregates skipped by the consumer: reading them", extra={"from": start, "to": stop}
        )
        self.metrics.aggregates_refetched.inc(stop - start)
        async for msg in self._aggregates(start, stop):
            self._report_missing(msg.offset)
            await self._apply(msg.offset, msg.key, msg.value)
        if self._needed() < stop:
            self._report_missing(stop)
            self.machine.position = stop - 1  # type: ignore[union-attr]
        await self.app.consumer._add_gap(tp, start, stop - 1)

    async def _aggregates(self, start: int, stop: int) -> AsyncIterator[Any]:
        """The aggregates topic's messages ``start`` to ``stop - 1`` (those that exist)."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=MAX_MESSAGE_BYTES,
            **s.kafka_security(),
        )
        await consumer.start()
        try:
            own = TopicPartition(s.topic_aggregates, 0)
            consumer.assign([own])
            consumer.seek(own, start)
            deadline = time.monotonic() + 60.0
            while await consumer.position(own) < stop:
                if time.monotonic() > deadline:
                    raise TopicError(f"could not read {own.topic} offsets {start} to {stop - 1}")
                got = await consumer.getmany(own, timeout_ms=500)
                for msg in got.get(own, []):
                    if msg.offset >= stop:
                        return
                    yield msg
                high = consumer.highwater(own)
                if high is not None and high <= await consumer.position(own):
                    return  # the end of the topic: the rest does not exist
        finally:
            await consumer.stop()

    async def _rebuild_ledger(self) -> None:
        """Refill the ledger's rings (not in the checkpoint) from the aggregates topic."""
        machine = self.machine
        assert machine is not None
        ledger = machine.ledger
        start, stop = ledger.rebuilt_from, machine.position + 1
        async for msg in self._aggregates(start, stop):
            if msg.key == COMMANDS_KEY:
                continue
            try:
                batch = IngestBatch.from_bytes(msg.value or b"")
            except ContractError:
                continue
            for agg in batch.aggregates:
                if agg.hits:
                    ledger.add_tick(agg, msg.offset, False)
        ledger.position = machine.position
        wm = machine.watermark()
        if wm is not None:
            ledger.prune(wm)
        log.info(
            "ledger rebuilt",
            extra={"from": start, "to": stop - 1, "entries": ledger.size},
        )

    def _needed(self) -> int:
        assert self.machine is not None
        return self.machine.position + 1

    def _report_missing(self, offset: int) -> None:
        if offset > self._needed():
            log.error(
                "aggregates gone from the topic (retention?): skipped",
                extra={"from": self._needed(), "to": offset - 1},
            )

    async def checkpoint(self, stream: Any) -> None:
        """Write the machine to the table, then acknowledge what it covers."""
        machine = self.machine
        if machine is None:
            return
        blob = zlib.compress(
            orjson.dumps({"machine": machine.snapshot(), "outputs": self.out_next}), 1
        )
        # The changelog record is sent here and awaited, not left to the table: Faust
        # buffers a table's changelog writes, and its flush can return before they are
        # sent, so the acknowledgements below could run ahead of the checkpoint. Sent
        # alone, it is also never batched with the next one (tansu under-reports a
        # changelog's end after a batch of several records, and Faust would then
        # restore an older checkpoint).
        await self.app.producer.send_and_wait(
            self.table.changelog_topic.get_topic_name(), CHECKPOINT_KEY_JSON, blob, 0, None, None
        )
        self.table.data[CHECKPOINT_KEY] = blob  # the table's local copy, without a resend
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_bytes.set(len(blob))
        for event in self.pending:
            await stream.ack(event)
        self.pending = []
        self.checkpointed = machine.position
        log.debug("checkpoint written", extra={"position": machine.position, "bytes": len(blob)})
        self.published.prune(machine.position)
        self.last_checkpoint = time.monotonic()

    # ----- outputs -----
    async def _publish(self, records: list[Record], offset: int) -> None:
        s = self.settings
        for seq, rec in enumerate(records):
            headers = output_headers(offset, seq)
            key = rec.rule_id.encode()
            outputs = [(s.topic_alerts, rec.to_json())]
            if rec.is_transition:  # the rule state first: enforcement services obey it
                outputs.insert(0, (s.topic_rule_state, RuleStateMessage.of(rec).to_json()))
            for topic, value in outputs:
                if self.published.has(topic, offset, seq, value):
                    continue
                meta = await self.app.producer.send_and_wait(topic, key, value, None, None, headers)
                self._advance(topic, meta)

    async def _publish_control(self, applied: Applied) -> None:
        """Audit records and ledger records: many at a time, sent together. Their ids and
        keys are stable, so a record sent again after a crash is recognisable."""
        s = self.settings
        send = self.app.producer.send
        futures = [
            await send(s.topic_audit, a.rule_id.encode(), a.to_json(), None, None, None)
            for a in applied.audits
        ]
        futures += [
            await send(s.topic_affected, r.key, r.to_json(), None, None, None)
            for r in applied.ledger
        ]
        if futures:
            await asyncio.gather(*futures)
        n = sum(1 for r in applied.ledger if isinstance(r, AffectedAccount))
        if n:
            self.metrics.affected_accounts.inc(n)

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
        self._observe_records(records)
        m.ledger_entries.set(machine.ledger.size)

    def _observe_records(self, records: list[Record]) -> None:
        m = self.metrics
        for rec in records:
            if rec.is_transition:
                m.transitions.labels(rule_id=rec.rule_id, to=rec.to_state, reason=rec.reason).inc()
                m.set_rule_state(rec.rule_id, rec.to_state)
            else:
                m.alerts.labels(rule_id=rec.rule_id, reason=rec.reason).inc()
            share = rec.evidence.get("outside_share")
            if isinstance(share, float | int):
                m.rule_outside_share.labels(rule_id=rec.rule_id).set(share)

    def _observe_commands(self, applied: Applied) -> None:
        for a in applied.audits:
            if a.kind == "command":
                accepted = a.outcome != "rejected"
                self.metrics.commands.labels(
                    result="accepted" if accepted else "rejected",
                    reason=a.outcome if accepted else a.reason,
                ).inc()
