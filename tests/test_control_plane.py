"""The control plane against real worker processes and a real broker: signed commands
accepted, forged/replayed/stale ones rejected and audited, an operator pause that
survives restarts and is never lifted by the detector, and a flood of bad commands
that loses no valid one."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from streamkit import Topics, WorkerProc, produce, read_topic, wait_for
from test_worker import CONFIG, HISTORY, INCIDENT, START, scenario
from test_worker_reliability import first_part_running

from detector.broker import EmbeddedBroker
from detector.wire.audit import AuditRecord
from detector.wire.commands import Command
from detector.wire.rulestate import RuleStateMessage

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def traffic() -> Any:
    return scenario()


@pytest.fixture
def key(tmp_path: Path) -> tuple[bytes, dict[str, str]]:
    """A fresh command key, and the worker environment that points at it."""
    secret = os.urandom(32).hex().encode()
    path = tmp_path / "command.key"
    path.write_bytes(secret)
    path.chmod(0o600)
    return secret, {"DETECTOR_COMMAND_KEY_FILE": str(path)}


@pytest.fixture
def workers() -> Iterator[list[WorkerProc]]:
    procs: list[WorkerProc] = []
    yield procs
    for w in procs:
        w.stop()


def cmd(kind: str, rule: str, issued_at: float | None = None, **kw: Any) -> Command:
    now = time.time() if issued_at is None else issued_at
    return Command.new(kind, rule, "alice@example.com", f"test: {kind} {rule}", now, **kw)


async def send(bootstrap: str, topics: Topics, *values: bytes) -> None:
    await produce(bootstrap, topics.commands, list(values), [b"k"] * len(values))


async def audits(bootstrap: str, topics: Topics) -> list[AuditRecord]:
    """The audit trail, one record per id (a record re-sent after a crash counts once)."""
    seen: dict[str, AuditRecord] = {}
    for m in await read_topic(bootstrap, topics.audit):
        a = AuditRecord.from_json(m.value)
        seen.setdefault(a.audit_id, a)
    return list(seen.values())


def state(w: WorkerProc, rule: str) -> str | None:
    return (w.rules().get(rule) or {}).get("state")


async def test_commands_are_checked_applied_audited_and_survive_restarts(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: Any,
    key: tuple[bytes, dict[str, str]],
) -> None:
    secret, env = key
    topics, _, rest, w1 = await first_part_running(
        broker,
        workers,
        tmp_path,
        traffic,
        "ctl",
        START + HISTORY - 20 * 60,
        extra_env=env,
        name="w1",
    )
    await wait_for(lambda: state(w1, "spam") == "closed", 60, "the engine to start")

    pause = cmd("pause", "spam").signed(secret)
    await send(
        broker.bootstrap,
        topics,
        cmd("pause", "bot").signed(os.urandom(32)).to_json(),  # forged
        cmd("pause", "bot").to_json(),  # unsigned
        cmd("pause", "bot", issued_at=time.time() - 3600).signed(secret).to_json(),  # stale
        cmd("pause", "bot", issued_at=time.time() + 3600).signed(secret).to_json(),  # future
        b'{"kind": "pause", "rule_id": "bot"',  # malformed
        pause.to_json(),
        pause.to_json(),  # replayed: the same command id again
    )
    await wait_for(lambda: command_audits(broker, topics, 7), 30, "seven audited commands")
    trail = await audits(broker.bootstrap, topics)
    commands = [a for a in trail if a.kind == "command"]
    assert collections.Counter((a.outcome, a.reason) for a in commands) == {
        ("rejected", "bad_signature"): 1,
        ("rejected", "unsigned"): 1,
        ("rejected", "stale"): 1,
        ("rejected", "from_future"): 1,
        ("rejected", "malformed"): 1,
        ("applied", pause.reason): 1,
        ("rejected", "replayed"): 1,
    }
    assert state(w1, "spam") == "forced_open"
    assert state(w1, "bot") == "closed"
    assert w1.metric("detector_commands_total", 'reason="bad_signature",result="rejected"') == 1
    assert w1.metric("detector_commands_total", 'reason="applied",result="accepted"') == 1
    transition = next(a for a in trail if a.kind == "transition" and a.rule_id == "spam")
    assert (transition.actor, transition.detail["command_id"]) == (
        "alice@example.com",
        pause.command_id,
    )
    assert secret.decode() not in w1.log()

    # A clean restart, then a crash: the pause comes back each time.
    w1.signal(signal.SIGTERM)
    assert w1.wait_exit(20) == 0
    w2 = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, extra_env=env, name="w2")
    workers.append(w2.start())
    await wait_for(lambda: state(w2, "spam") is not None, 60, "the restart")
    assert state(w2, "spam") == "forced_open"
    w2.signal(signal.SIGKILL)
    assert w2.wait_exit(10) == -signal.SIGKILL
    w3 = WorkerProc(broker.bootstrap, topics, tmp_path, CONFIG, extra_env=env, name="w3")
    workers.append(w3.start())
    await wait_for(lambda: state(w3, "spam") is not None, 60, "the restart after a crash")
    assert state(w3, "spam") == "forced_open"

    # An hour of event time (and an incident on another rule) later, still paused.
    await produce(broker.bootstrap, topics.actions, *rest)
    end = START + HISTORY + INCIDENT
    await wait_for(lambda: float((w3.health() or {}).get("watermark") or 0) > end, 90, "the rest")
    assert state(w3, "spam") == "forced_open"
    assert state(w3, "bot") != "closed"  # the detector did trip the other rule
    spam_states = [
        RuleStateMessage.from_json(m.value)
        for m in await read_topic(broker.bootstrap, topics.rule_state)
        if m.key == b"spam"
    ]
    assert [(s.state, s.version) for s in spam_states] == [("forced_open", 1)]

    await send(broker.bootstrap, topics, cmd("resume", "spam").signed(secret).to_json())
    await wait_for(lambda: state(w3, "spam") == "closed", 30, "the resume")
    trail = await audits(broker.bootstrap, topics)
    assert [a.outcome for a in trail if a.kind == "command" and a.rule_id == "spam"] == [
        "applied",
        "rejected",
        "applied",
    ]


async def command_audits(broker: EmbeddedBroker, topics: Topics, n: int) -> bool:
    return len([a for a in await audits(broker.bootstrap, topics) if a.kind == "command"]) >= n


async def test_a_flood_of_bad_commands_loses_no_valid_one(
    broker: EmbeddedBroker,
    workers: list[WorkerProc],
    tmp_path: Path,
    traffic: Any,
    key: tuple[bytes, dict[str, str]],
) -> None:
    secret, env = key
    topics, _, _, w = await first_part_running(
        broker, workers, tmp_path, traffic, "flood", START + 2 * 3600, extra_env=env
    )
    await wait_for(lambda: state(w, "spam") == "closed", 60, "the engine to start")
    forged = [cmd("pause", f"r{i}").signed(b"x" * 32).to_json() for i in range(10_000)]
    valid = cmd("pause", "fraud").signed(secret).to_json()
    await send(broker.bootstrap, topics, *forged[:5000], valid, *forged[5000:])
    await wait_for(
        lambda: (
            w.metric("detector_commands_total", 'reason="bad_signature",result="rejected"')
            >= 10_000
        ),
        60,
        "every forged command to be rejected",
    )
    await wait_for(lambda: state(w, "fraud") == "forced_open", 30, "the valid command")
    trail = await audits(broker.bootstrap, topics)
    rejected = [a for a in trail if a.kind == "command" and a.outcome == "rejected"]
    assert len(rejected) == 10_000
    assert {a.rule_id for a in rejected} == {f"r{i}" for i in range(10_000)}
    assert [s for r, s in w.rules().items() if s["state"] != "closed" and r != "fraud"] == []
    assert orjson.loads(valid)["command_id"] in {
        a.detail["command"]["command_id"] for a in trail if a.outcome == "applied"
    }
