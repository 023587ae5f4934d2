"""Helpers for end-to-end tests of ``detector worker`` against the embedded broker.

A :class:`WorkerProc` is a real ``detector worker`` process with its own app id
and topics (so tests never see each other's data), stopped by PID at the end.
Waiting is always for a condition with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from detector.broker import free_port
from detector.config import EngineConfig
from detector.topics import read_to_end

FAST = {"DETECTOR_SESSION_TIMEOUT": "2", "DETECTOR_HEARTBEAT_INTERVAL": "0.5"}


@dataclass
class Topics:
    """One test's topic names and app id."""

    app_id: str
    actions: str
    dlq: str
    aggregates: str
    rule_state: str
    alerts: str
    progress: str
    commands: str = ""
    audit: str = ""
    affected: str = ""
    reinstatements: str = ""

    @classmethod
    def unique(cls, label: str) -> Topics:
        tag = f"{label}-{uuid.uuid4().hex[:8]}"
        return cls(
            f"app-{tag}",
            f"actions-{tag}",
            f"dlq-{tag}",
            f"aggregates-{tag}",
            f"rule-state-{tag}",
            f"alerts-{tag}",
            f"progress-{tag}",
            f"commands-{tag}",
            f"audit-{tag}",
            f"affected-{tag}",
            f"reinstatements-{tag}",
        )

    def env(self) -> dict[str, str]:
        """The worker's environment for these topics."""
        return {
            "DETECTOR_APP_ID": self.app_id,
            "DETECTOR_TOPIC_ACTIONS": self.actions,
            "DETECTOR_TOPIC_DLQ": self.dlq,
            "DETECTOR_TOPIC_AGGREGATES": self.aggregates,
            "DETECTOR_TOPIC_RULE_STATE": self.rule_state,
            "DETECTOR_TOPIC_ALERTS": self.alerts,
            "DETECTOR_TOPIC_PROGRESS": self.progress,
            "DETECTOR_TOPIC_COMMANDS": self.commands or "detector.commands",
            "DETECTOR_TOPIC_AUDIT": self.audit or "detector.audit",
            "DETECTOR_TOPIC_AFFECTED": self.affected or "detector.affected",
            "DETECTOR_TOPIC_REINSTATEMENTS": self.reinstatements or "enforcement.reinstatements",
        }


@dataclass
class WorkerProc:
    """A ``detector worker`` subprocess."""

    bootstrap: str
    topics: Topics
    workdir: Path
    engine_config: EngineConfig | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = "w"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self) -> WorkerProc:
        """Launch the worker (returns at once; use :meth:`wait_ready`)."""
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
        env.update(FAST)
        env.update(self.topics.env())
        env.update(
            {
                "DETECTOR_BROKER": f"kafka://{self.bootstrap}",
                "DETECTOR_WEB_PORT": str(self.port),
                "DETECTOR_DATA_DIR": str(self.workdir / f"data-{self.name}"),
                "DETECTOR_INPUT_PARTITIONS": "4",
                "DETECTOR_CHECKPOINT_INTERVAL": "1",
                "DETECTOR_SHUTDOWN_TIMEOUT": "15",
            }
        )
        if self.engine_config is not None:
            path = self.workdir / "engine.json"
            path.write_bytes(orjson.dumps(self.engine_config.to_mapping()))
            env["DETECTOR_ENGINE_CONFIG"] = str(path)
        env.update(self.extra_env)
        log = (self.workdir / f"worker-{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detector", "worker"], env=env, stdout=log, stderr=log
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> bytes | None:
        """GET a page of the worker's web server (``None`` if it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                body: bytes = r.read()
                return body
        except OSError:
            return None

    def health(self) -> dict[str, Any] | None:
        body = self.get("/health")
        return orjson.loads(body) if body else None

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's samples (optionally only those whose labels contain ``labels``)."""
        body = self.get("/metrics") or b""
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rules(self) -> dict[str, dict[str, Any]]:
        body = self.get("/rules")
        if not body:
            return {}
        return {r["rule_id"]: r for r in orjson.loads(body)["rules"]}

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        """Exit code, or ``None`` if still running after ``timeout`` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait_exit(20) is None:
                self.signal(signal.SIGKILL)
                self.wait_exit(10)

    def log(self) -> str:
        path = self.workdir / f"worker-{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


async def create_worker_topics(broker: Any, topics: Topics, partitions: int = 4) -> None:
    """Create a test's topics as the worker would (so events can be sent before it starts)."""
    from detector.stream.app import topic_specs
    from detector.stream.settings import Settings
    from detector.topics import create_topics

    settings = Settings(
        broker=f"kafka://{broker.bootstrap}",
        app_id=topics.app_id,
        topic_actions=topics.actions,
        topic_dlq=topics.dlq,
        topic_aggregates=topics.aggregates,
        topic_rule_state=topics.rule_state,
        topic_alerts=topics.alerts,
        topic_progress=topics.progress,
        topic_commands=topics.commands or "detector.commands",
        topic_audit=topics.audit or "detector.audit",
        topic_affected=topics.affected or "detector.affected",
        topic_reinstatements=topics.reinstatements or "enforcement.reinstatements",
        input_partitions=partitions,
    )
    await create_topics(broker.bootstrap, topic_specs(settings, partitions))


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str, every: float = 0.2
) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


async def produce(
    bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes | None] | None = None
) -> int:
    """Send values (keys optional); returns how many."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, linger_ms=5
    )
    await producer.start()
    n = 0
    try:
        key_iter = iter(keys) if keys is not None else None
        futures = []
        for value in values:
            key = next(key_iter) if key_iter is not None else None
            futures.append(await producer.send(topic, value, key=key))
            n += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


async def read_topic(bootstrap: str, topic: str, idle_ms: int = 500) -> list[Any]:
    """Every message of ``topic`` (all partitions), from the beginning to its end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        await read_to_end(consumer, tps, out.append, poll_ms=idle_ms)
        return out
    finally:
        await consumer.stop()


def records_of(messages: list[Any]) -> list[dict[str, Any]]:
    """Decision records (the alerts topic's values), in publication order."""
    return [orjson.loads(m.value) for m in sorted(messages, key=lambda m: (m.partition, m.offset))]
