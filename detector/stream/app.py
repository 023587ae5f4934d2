"""The Faust application of ``detector worker``: built by a factory, never at import.

One worker process runs both stages:

- the ingest stage (:mod:`detector.stream.ingest`) on every worker, splitting the
  input topic's partitions between workers through its consumer group;
- the state stage (:mod:`detector.stream.state`), a Faust agent on the
  single-partition aggregates topic, with the engine checkpointed in a Faust
  table: exactly one worker owns it at a time; when that worker stops, the
  partition (with its table) moves to another.

The web server serves ``/metrics`` (Prometheus), ``/health`` and ``/rules``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import faust
from mode import Service

from detector.config import EngineConfig
from detector.metrics import Metrics
from detector.stream.ingest import Ingest
from detector.stream.relay import CommandRelay
from detector.stream.settings import MAX_MESSAGE_BYTES, Settings
from detector.stream.state import CHECKPOINT_KEY, StateStage
from detector.topics import TopicSpec

log = logging.getLogger(__name__)

CHECKPOINT_TABLE = "engine-checkpoint"


def topic_specs(settings: Settings, input_partitions: int) -> list[TopicSpec]:
    """Every topic the worker uses, with its partitions and configs."""
    s = settings
    compact = {"cleanup.policy": "compact"}
    return [
        TopicSpec(s.topic_actions, input_partitions),
        TopicSpec(s.topic_dlq, input_partitions),
        TopicSpec(s.topic_progress, input_partitions, compact),
        TopicSpec(s.topic_aggregates, 1),
        TopicSpec(s.topic_rule_state, 1, compact),
        TopicSpec(s.topic_alerts, 1),
        TopicSpec(s.topic_commands, 1),
        TopicSpec(s.topic_audit, 1),
        TopicSpec(s.topic_affected, 1, compact),
        TopicSpec(s.topic_reinstatements, input_partitions),
        TopicSpec(
            f"{s.app_id}-{CHECKPOINT_TABLE}-changelog",
            1,
            {**compact, "max.message.bytes": str(MAX_MESSAGE_BYTES)},
        ),
    ]


@dataclass
class Daemon:
    """The app and the two stages, wired together."""

    settings: Settings
    config: EngineConfig
    metrics: Metrics
    app: faust.App
    state: StateStage
    ingest: Ingest | None = None
    relay: CommandRelay | None = None


def _cap_faust_fetch_wait(seconds: float) -> None:
    """Faust creates its consumer with ``fetch_max_wait_ms=1500`` (not a setting). A broker
    that does not answer a waiting fetch as soon as data arrives (the embedded tansu)
    then adds up to 1.5 s to every message on the state stage's topic; cap it."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "_capped", False):
        return

    def capped(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = int(seconds * 1000)  # read when the consumer starts
        return consumer

    capped._capped = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = capped  # type: ignore[method-assign]


def create_app(settings: Settings, metrics: Metrics | None = None) -> Daemon:
    """Build the Faust app with its agent, table, ingest service and web pages."""
    s = settings
    config = s.engine()
    _cap_faust_fetch_wait(s.fetch_max_wait)
    registry = metrics or Metrics()
    security: dict[str, Any] = {}
    if s.security_protocol != "PLAINTEXT":
        security = _faust_security(s)
    app = faust.App(
        s.app_id,
        broker=s.broker,
        store=s.store,
        datadir=s.data_dir,
        topic_partitions=1,
        topic_allow_declare=False,
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=s.heartbeat_interval,
        broker_rebalance_timeout=max(s.session_timeout, 6.0),
        producer_max_request_size=MAX_MESSAGE_BYTES,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        web_enabled=True,
        web_bind=s.web_host,
        web_host=s.web_host,
        web_port=s.web_port,
        processing_guarantee="at_least_once",
        # The engine acknowledges messages only once a checkpoint covers them; a
        # rebalance or a stop must not wait for that (a new owner replays from the
        # checkpoint instead).
        stream_wait_empty=False,
        **security,
    )
    aggregates = app.topic(
        s.topic_aggregates,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=1,
    )
    table = app.Table(
        CHECKPOINT_TABLE,
        default=None,
        partitions=1,
        key_type=str,
        value_type=bytes,  # keys as json, values raw: see CHECKPOINT_KEY_JSON
    )
    state = StateStage(s, config, registry, app, table)
    daemon = Daemon(s, config, registry, app, state)

    @app.agent(aggregates, concurrency=1)
    async def engine(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            await state.handle(manual, event)

    def on_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        state.on_assignment_changed()

    app.on_partitions_assigned.connect(on_rebalance)

    @app.on_before_shutdown.connect
    async def final_checkpoint(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await state.close()

    app.on_partitions_revoked.connect(on_rebalance)

    class IngestService(Service):
        """Runs the ingest loop beside Faust's own consumer."""

        async def on_start(self) -> None:
            daemon.ingest = Ingest(s, config, registry, app.producer)
            daemon.relay = CommandRelay(s, registry, app.producer, s.command_signing_key())
            self.add_future(self._run("ingest", daemon.ingest.run))
            self.add_future(self._run("command relay", daemon.relay.run))

        async def _run(self, name: str, loop: Any) -> None:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(f"{name} crashed; stopping the worker")
                await app.stop()

        async def on_stop(self) -> None:
            if daemon.ingest is not None:
                daemon.ingest.stopping = True
            if daemon.relay is not None:
                daemon.relay.stopping = True

    app.service(IngestService)
    _pages(app, daemon)
    return daemon


def _pages(app: faust.App, daemon: Daemon) -> None:
    @app.page("/metrics")
    async def metrics(self: Any, request: Any) -> Any:
        return self.bytes(daemon.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(self: Any, request: Any) -> Any:
        machine = daemon.state.machine
        return self.json(
            {
                "status": "ok",
                "owns_engine": machine is not None and not daemon.state.stale,
                "watermark": machine.watermark() if machine else None,
            }
        )

    @app.page("/rules")
    async def rules(self: Any, request: Any) -> Any:
        machine = daemon.state.machine
        out = []
        if machine is not None:
            engine = machine.engine
            states = [r.s for r in engine.rules.values()]
            if engine.glob is not None:
                states.append(engine.glob.s)
            for rs in sorted(states, key=lambda x: x.rule_id):
                out.append(
                    {
                        "rule_id": rs.rule_id,
                        "state": rs.state,
                        "since": rs.since,
                        "reason": rs.reason,
                        "version": rs.version,
                        "expected_per_bucket": rs.mu,
                        "warming_up": rs.warm,
                        "counted": rs.counted,
                    }
                )
        return self.json({"rules": out})


def _faust_security(s: Settings) -> dict[str, Any]:
    """Faust's ``broker_credentials`` for TLS and SASL."""
    from faust.auth import SASLCredentials, SSLCredentials

    ssl_context = s.kafka_security().get("ssl_context")
    if s.security_protocol.startswith("SASL"):
        assert s.sasl_password is not None
        return {
            "broker_credentials": SASLCredentials(
                username=s.sasl_username,
                password=s.sasl_password.reveal(),
                mechanism=s.sasl_mechanism,
                ssl_context=ssl_context,
            )
        }
    return {"broker_credentials": SSLCredentials(ssl_context)}


__all__ = ["CHECKPOINT_KEY", "Daemon", "create_app", "topic_specs"]
