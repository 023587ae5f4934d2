"""The ingest stage: the hot path, on aiokafka directly, in batches.

Per-event Faust streaming manages ~4,000-12,000 events per second here; this
stage reads the input topic with ``getmany`` in its own consumer group,
validates and aggregates whole batches (:mod:`detector.stream.batcher`), and
sends one compact message per input partition and flush to the state stage.

Exactly-once counting, without Kafka transactions (which the embedded broker
lacks): before a batch is sent, its range ``lo..hi`` is written to the progress
topic; after it is sent, the input offset is committed. A worker that crashes
in between restarts from the committed offset, reads the progress record and
cuts its first batch at exactly ``hi`` again; the state stage, which remembers
the ranges it applied, skips the re-sent batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from detector.config import EngineConfig
from detector.metrics import Metrics
from detector.stream.batcher import DeadLetter, PartitionBatcher, TimeGuards
from detector.stream.settings import Settings
from detector.topics import read_to_end
from detector.wire.rulestate import (
    H_ERROR,
    H_FIELD,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TIMESTAMP,
    H_TOPIC,
)

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
OUTAGE_SECONDS = 5.0
YIELD_EVERY = 1000
"""Kafka not answering for this long counts as an outage (visible in metrics)."""


class Ingest:
    """Consumes the input topic, sends batches, commits; one per worker process."""

    def __init__(
        self, settings: Settings, config: EngineConfig, metrics: Metrics, producer: Any
    ) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.producer = producer
        self.guards = TimeGuards(settings.max_future, settings.max_event_age)
        self.batchers: dict[int, PartitionBatcher] = {}
        self.last_record: dict[int, float] = {}
        self.last_heartbeat: dict[int, float] = {}
        self.lag: dict[int, int] = {}
        self.reported: dict[int, bool] = {}
        """Whether each partition was last reported active to the state stage."""
        self.woke_at = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.last_ok = time.monotonic()
        self.outage = False
        self.stopping = False

    # ----- the loop -----
    async def run(self) -> None:
        """Consume until cancelled."""
        s = self.settings
        consumer = self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=f"{s.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=int(s.fetch_max_wait * 1000),
            fetch_max_bytes=64 * 1024 * 1024,
            **s.kafka_security(),
        )
        consumer.subscribe([s.topic_actions], listener=_Rebalance(self))
        await consumer.start()
        watchdog = asyncio.ensure_future(self._watch_outages())
        self.metrics.broker_reachable.labels(stage="ingest").set(1)
        try:
            while not self.stopping:
                await self._poll(consumer)
        finally:
            watchdog.cancel()
            await consumer.stop()

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        s = self.settings
        fetched = await consumer.getmany(
            timeout_ms=int(s.flush_interval * 1000), max_records=s.max_batch
        )
        now = time.time()
        if fetched and self.batchers and not any(self.reported.get(p, True) for p in self.batchers):
            # Records again after every partition went idle: a backlog may be arriving
            # on all of them. Report them all active before the first batch, so that the
            # first partition to deliver does not drag event time past the others.
            self.woke_at = now
            for p in list(self.batchers):
                if self.batchers[p].count == 0:
                    await self._heartbeat(p, now)
        for tp, msgs in fetched.items():
            batcher = self.batchers.get(tp.partition)
            if batcher is None:
                continue  # revoked meanwhile: its next owner reads from the committed offset
            self.last_record[tp.partition] = now
            self.metrics.events_consumed.labels(partition=str(tp.partition)).inc(len(msgs))
            i, n = 0, len(msgs)
            while i < n:
                i = batcher.add_many(msgs, i, min(n, i + YIELD_EVERY), now)
                if batcher.must_cut():
                    await self.flush(tp.partition)
                else:
                    # Let aiokafka's fetcher (same event loop) ask for the next records
                    # while these are processed: otherwise every poll waits a round trip.
                    await asyncio.sleep(0)
        due = [p for p, b in self.batchers.items() if b.due(now, s.flush_interval)]
        if due:
            await self.flush(*due)
        for p, batcher in list(self.batchers.items()):
            if p in due:
                pass
            elif batcher.count == 0 and now - self.last_heartbeat.get(p, 0.0) >= HEARTBEAT_SECONDS:
                await self._heartbeat(p, now)
            tp = TopicPartition(s.topic_actions, p)
            high = consumer.highwater(tp)
            if high is not None and tp in consumer.assignment():
                self.lag[p] = max(0, high - await consumer.position(tp))
                self.metrics.consumer_lag.labels(partition=str(p)).set(self.lag[p])

    # ----- sending -----
    async def flush(self, *partitions: int) -> None:
        """Send the partitions' batches: progress records, then dead letters and batches,
        then one commit. Each step's sends go out together (one round trip, not one per
        partition); the order of the steps is what makes a re-sent batch recognisable."""
        s = self.settings
        cuts = []
        for p in partitions:
            batch, dead = self.batchers[p].cut(active=True)
            self.reported[p] = True
            if batch.hi is not None and batch.lo is not None:
                cuts.append((p, batch, dead))
        if not cuts:
            return
        send = self.producer.send
        marks = [
            await send(
                s.topic_progress,
                str(p).encode(),
                orjson.dumps({"lo": b.lo, "hi": b.hi, "wm": b.watermark}),
                p,
                None,
                None,
            )
            for p, b, _ in cuts
        ]
        await asyncio.gather(*marks)
        sent = [await self._dead_letter(dead) for _, _, dead in cuts if dead]
        sent += [
            await send(s.topic_aggregates, str(p).encode(), b.to_bytes(), 0, None, None)
            for p, b, _ in cuts
        ]
        await asyncio.gather(*sent)
        assert self.consumer is not None
        await self.consumer.commit(
            {TopicPartition(s.topic_actions, p): b.hi + 1 for p, b, _ in cuts if b.hi is not None}
        )
        self.metrics.batches.labels(kind="records").inc(len(cuts))
        now = time.time()
        for p, _, _ in cuts:
            self.last_heartbeat[p] = now
        self._ok()

    async def _heartbeat(self, partition: int, now: float) -> None:
        """Report a partition without pending records (an empty batch); once it has had
        no records and no lag for ``idle_after``, it is idle and moves time on."""
        batcher = self.batchers[partition]
        idle_for = now - max(self.last_record.get(partition, now), self.woke_at)
        active = idle_for < self.settings.idle_after or self.lag.get(partition, 1) > 0
        self.reported[partition] = active
        if not active and not self.outage:
            # Capped: after a pause (an outage, a stalled loop) time must not jump by the
            # whole pause, past events that are only now arriving.
            elapsed = now - self.last_heartbeat.get(partition, now)
            batcher.idle_advance(min(elapsed, 2 * HEARTBEAT_SECONDS))
        batch, _ = batcher.cut(active=active)
        await self.producer.send_and_wait(
            self.settings.topic_aggregates, str(partition).encode(), batch.to_bytes(), 0, None, None
        )
        self.last_heartbeat[partition] = now
        self.metrics.batches.labels(kind="heartbeat").inc()
        self._ok()

    async def _dead_letter(self, dead: list[DeadLetter]) -> asyncio.Future[Any]:
        """Queue the dead letters; returns one future for all of them."""
        s = self.settings
        futures = []
        for d in dead:
            r = d.record
            headers = [
                (H_REASON, d.reason.encode()),
                (H_FIELD, (d.field or "").encode()),
                (H_ERROR, d.error.encode("utf-8", "replace")[:1000]),
                (H_TOPIC, r.topic.encode()),
                (H_PARTITION, str(r.partition).encode()),
                (H_OFFSET, str(r.offset).encode()),
                (H_TIMESTAMP, str(r.timestamp or "").encode()),
            ]
            futures.append(
                await self.producer.send(
                    s.topic_dlq, r.key, r.value if r.value is not None else b"", None, None, headers
                )
            )
            self.metrics.events_dead_lettered.labels(reason=d.reason).inc()
        return asyncio.gather(*futures)

    # ----- health -----
    def _ok(self) -> None:
        self.last_ok = time.monotonic()
        if self.outage:
            self.outage = False
            self.metrics.broker_reachable.labels(stage="ingest").set(1)
            log.warning("Kafka answers again", extra={"stage": "ingest"})

    async def _watch_outages(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self.outage and time.monotonic() - self.last_ok > OUTAGE_SECONDS:
                self.outage = True
                self.metrics.broker_reachable.labels(stage="ingest").set(0)
                self.metrics.broker_outages.labels(stage="ingest").inc()
                log.error(
                    "Kafka does not answer", extra={"stage": "ingest", "seconds": OUTAGE_SECONDS}
                )

    # ----- rebalancing -----
    async def assigned(self, tps: list[TopicPartition]) -> None:
        """New partitions: resume each one where its last (maybe unconfirmed) batch ended."""
        assert self.consumer is not None
        # aiokafka goes on fetching while this callback awaits: hold the partitions
        # until their batchers know where to cut.
        self.consumer.pause(*tps)
        progress = await self._last_progress([tp.partition for tp in tps])
        for tp in tps:
            committed = await self.consumer.committed(tp)
            last = progress.get(tp.partition)
            force = None
            if last is not None and (committed is None or committed <= last["hi"]):
                # The batch lo..hi may have been sent without the commit: cut it again.
                force = int(last["hi"])
            partitions = len(self.consumer.partitions_for_topic(tp.topic) or ()) or 1
            self.batchers[tp.partition] = PartitionBatcher(
                tp.partition,
                self.config,
                self.guards,
                partitions=partitions,
                max_records=self.settings.max_batch,
                force_cut_at=force,
                # Event time carries over: a partition that gets no new records still
                # moves time on when idle.
                watermark=None if last is None else last.get("wm"),
            )
            self.last_heartbeat[tp.partition] = 0.0
            self.last_record[tp.partition] = time.time()
            log.info(
                "input partition assigned",
                extra={"partition": tp.partition, "committed": committed, "recut_at": force},
            )
        self.consumer.resume(*tps)

    async def revoked(self, tps: list[TopicPartition]) -> None:
        """Partitions leave this worker: send what is pending first, then forget them."""
        for tp in tps:
            if tp.partition in self.batchers:
                try:
                    await self.flush(tp.partition)
                except Exception:  # the next owner re-reads from the committed offset
                    log.exception("flush on revoke failed", extra={"partition": tp.partition})
                del self.batchers[tp.partition]

    async def _last_progress(self, partitions: list[int]) -> dict[int, dict[str, Any]]:
        """The last progress record of each input partition (read in one pass)."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, enable_auto_commit=False, **s.kafka_security()
        )
        await consumer.start()
        try:
            tps = [TopicPartition(s.topic_progress, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            last: dict[int, dict[str, Any]] = {}

            def keep(msg: Any) -> None:
                last[msg.partition] = orjson.loads(msg.value)

            await read_to_end(consumer, tps, keep)
            return last
        finally:
            await consumer.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.ingest.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.ingest.assigned(list(assigned))
