"""The command relay: operator commands from ``detector.commands`` to the engine.

One worker at a time (a consumer group of its own over the single-partition
commands topic) reads the commands, checks each one — it parses, its HMAC
signature is right, it is neither stale nor from the future by the wall clock —
and forwards the accepted ones, in order, as one :class:`CommandBatch` message on
the aggregates topic. That puts them in the same log as the ingest batches, so
the state stage applies them at a definite point of event time, exactly once
(it remembers the commands offsets it applied), and identically when it replays
after a crash. The state stage also rejects replays (a command id seen before).

Rejections are audited here, with the reason, and counted; nothing rejected
reaches the engine. The key is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer

from detector.errors import ContractError
from detector.metrics import Metrics
from detector.stream.settings import Settings
from detector.wire.aggregates import COMMANDS_KEY, CommandBatch, ReceivedCommand
from detector.wire.audit import AuditRecord
from detector.wire.commands import Command, parse_command
from detector.wire.events import GLOBAL_RULE_ID

log = logging.getLogger(__name__)

MAX_RECORDS = 2000
"""Commands read per poll (a flood is handled in slices, never all at once)."""
RAW_PREVIEW = 512
"""Bytes of a malformed command kept in its audit record."""


class CommandRelay:
    """Reads, checks and forwards operator commands; one per worker process."""

    def __init__(
        self, settings: Settings, metrics: Metrics, producer: Any, key: bytes | None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.producer = producer
        self._key = key
        self.stopping = False
        if key is None:
            log.warning("no command key configured: every operator command will be rejected")

    def check(self, raw: bytes | None, now: float) -> tuple[Command | None, str | None, str]:
        """``(command, None, "")`` when accepted, else ``(command or None, reason, error)``."""
        try:
            cmd = parse_command(raw)
        except ContractError as exc:
            return None, "malformed", str(exc)
        if self._key is None:
            return cmd, "no_key", "the detector has no command key"
        bad = cmd.verify(self._key)
        if bad is not None:
            return cmd, bad, "the signature does not match" if bad == "bad_signature" else ""
        s = self.settings
        if now - cmd.issued_at > s.command_max_age:
            return cmd, "stale", f"issued {now - cmd.issued_at:.0f} s ago"
        if cmd.issued_at - now > s.command_max_skew:
            return cmd, "from_future", f"issued {cmd.issued_at - now:.0f} s in the future"
        return cmd, None, ""

    async def run(self) -> None:
        """Relay until stopped."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=f"{s.app_id}-commands",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            fetch_max_wait_ms=int(s.fetch_max_wait * 1000),
            **s.kafka_security(),
        )
        consumer.subscribe([s.topic_commands])
        await consumer.start()
        try:
            while not self.stopping:
                got = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
                if got:
                    await self.relay([m for msgs in got.values() for m in msgs])
                    await consumer.commit()
        finally:
            await consumer.stop()

    async def relay(self, messages: list[Any]) -> None:
        """Check a slice of command messages: audit the rejected, forward the rest."""
        s = self.settings
        now = time.time()
        accepted: list[ReceivedCommand] = []
        audits = []
        for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
            cmd, reason, error = self.check(m.value, now)
            if reason is None:
                assert cmd is not None
                accepted.append(ReceivedCommand(m.partition, m.offset, now, cmd.body or {}))
                continue
            self.metrics.commands.labels(result="rejected", reason=reason).inc()
            audits.append(_rejection(m, cmd, reason, error, now))
        sends = [
            await self.producer.send(
                s.topic_audit, a.rule_id.encode(), a.to_json(), None, None, None
            )
            for a in audits
        ]
        if accepted:
            sends.append(
                await self.producer.send(
                    s.topic_aggregates,
                    COMMANDS_KEY,
                    CommandBatch(accepted).to_json(),
                    0,
                    None,
                    None,
                )
            )
        if sends:
            await asyncio.gather(*sends)
        if audits:
            log.warning(
                "operator commands rejected",
                extra={"count": len(audits), "reasons": sorted({a.reason for a in audits})},
            )
        for rc in accepted:
            log.info(
                "operator command forwarded",
                extra={
                    "command_id": rc.command.get("command_id"),
                    "kind": rc.command.get("kind"),
                    "rule_id": rc.command.get("rule_id"),
                    "operator": rc.command.get("operator"),
                },
            )


def _rejection(m: Any, cmd: Command | None, reason: str, error: str, now: float) -> AuditRecord:
    if cmd is not None:
        detail: dict[str, Any] = {"command": cmd.body or cmd.to_dict()}
        rule_id, actor = cmd.rule_id, cmd.operator
    else:
        raw = m.value or b""
        detail = {"raw": raw[:RAW_PREVIEW].decode("utf-8", "replace"), "bytes": len(raw)}
        rule_id = (m.key or b"").decode("utf-8", "replace")[:200] or GLOBAL_RULE_ID
        actor = "unknown"
    if error:
        detail["error"] = error
    return AuditRecord(
        f"cmd:{m.partition}:{m.offset}", "command", now, rule_id, actor, "rejected", reason, detail
    )
