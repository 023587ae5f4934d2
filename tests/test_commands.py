"""Operator commands: the wire contract, the relay's checks, and how the state machine
applies them (exactly once, idempotently, audited, surviving a snapshot)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

import orjson
import pytest
from test_ledger import batches
from test_worker import CONFIG, HISTORY, START, scenario

from detector.errors import ContractError
from detector.metrics import Metrics
from detector.stream.machine import COMMAND_MEMORY_SECONDS, StateMachine
from detector.stream.relay import CommandRelay
from detector.stream.settings import Settings
from detector.wire.aggregates import CommandBatch, IngestBatch, ReceivedCommand
from detector.wire.commands import Command, load_key, parse_command

KEY = os.urandom(32)
NOW = 1_800_000_000.0


def command(kind: str, rule: str = "bot", cid: str | None = None, **kw: Any) -> Command:
    return Command.new(kind, rule, "alice", f"test {kind}", NOW, command_id=cid, **kw)


# ----- the contract -----
def test_a_signature_covers_the_command_as_sent() -> None:
    body = {
        "command_id": "c-1",
        "kind": "resume",
        "rule_id": "bot",
        "operator": "bob",
        "reason": "INC-1 fixed",
        "issued_at": "2026-03-01T12:00:05.123+01:00",
        "grace_seconds": 60,
        "ticket": "INC-1",
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    signed = {**body, "signature": hmac.new(KEY, canonical.encode(), hashlib.sha256).hexdigest()}
    cmd = parse_command(json.dumps(signed))
    assert cmd.verify(KEY) is None
    assert cmd.grace_seconds == 60
    for field, value in (("ticket", "INC-2"), ("rule_id", "spam"), ("grace_seconds", 61)):
        tampered = {**signed, field: value}
        assert parse_command(json.dumps(tampered)).verify(KEY) == "bad_signature"
    assert parse_command(json.dumps(body)).verify(KEY) == "unsigned"
    assert cmd.verify(os.urandom(32)) == "bad_signature"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "explode"}, "kind"),
        ({"reason": ""}, "reason"),
        ({"reason": None}, "reason"),
        ({"operator": 7}, "operator"),
        ({"issued_at": "yesterday"}, "issued_at"),
        ({"issued_at": 1700000000}, "issued_at"),
        ({"rule_id": "*"}, "rule_id"),
        ({"kind": "halt_all"}, "rule_id"),
        ({"grace_seconds": -1}, "grace_seconds"),
        ({"grace_seconds": True}, "grace_seconds"),
        ({"kind": "pause", "grace_seconds": 5}, "grace_seconds"),
        ({"signature": 5}, "signature"),
    ],
)
def test_malformed_commands_name_their_field(change: dict[str, Any], field: str) -> None:
    body = {**command("resume").to_dict(), **change}
    with pytest.raises(ContractError) as err:
        parse_command(orjson.dumps(body))
    assert err.value.reason == "malformed"
    assert err.value.field == field


@pytest.mark.parametrize("raw", [b"", b"not json", b"\xff\xfe", b"[1]", b"{}", b"x" * 20_000])
def test_unreadable_commands_are_malformed(raw: bytes) -> None:
    with pytest.raises(ContractError) as err:
        parse_command(raw)
    assert err.value.reason == "malformed"


def test_keys_are_checked_and_never_shown(tmp_path: Any) -> None:
    short = tmp_path / "short"
    short.write_text("s3cr3t-but-short")
    with pytest.raises(ValueError, match="at least 32 bytes") as err:
        load_key(str(short))
    assert "s3cr3t" not in str(err.value)
    good = tmp_path / "good"
    good.write_bytes(KEY.hex().encode() + b"\n")
    assert load_key(str(good)) == KEY.hex().encode()
    with pytest.raises(ValueError, match="cannot read"):
        load_key(str(tmp_path / "missing"))


# ----- the relay's checks -----
def relay(key: bytes | None = KEY, **settings: Any) -> CommandRelay:
    return CommandRelay(Settings(**settings), Metrics(), producer=None, key=key)


def test_the_relay_accepts_only_signed_fresh_commands() -> None:
    r = relay(command_max_age=300, command_max_skew=60)
    good = command("pause").signed(KEY)
    assert r.check(good.to_json(), NOW + 10)[1] is None
    assert r.check(command("pause").to_json(), NOW)[1] == "unsigned"
    assert r.check(command("pause").signed(os.urandom(32)).to_json(), NOW)[1] == "bad_signature"
    assert r.check(good.to_json(), NOW + 301)[1] == "stale"
    assert r.check(good.to_json(), NOW - 61)[1] == "from_future"
    assert r.check(b"{", NOW)[1] == "malformed"
    assert relay(key=None).check(good.to_json(), NOW)[1] == "no_key"


# ----- applying commands -----
@pytest.fixture(scope="module")
def history() -> list[IngestBatch]:
    """Two and a half hours of normal traffic (no incident yet), as ingest batches."""
    values, _, _ = scenario()
    cut = START + HISTORY - 30 * 60
    early = [v for v in values if orjson.loads(v)["occurred_at"] < _iso(cut)]
    return batches(early, partitions=2, per_batch=200)


def _iso(t: float) -> str:
    from detector.wire.timefmt import to_rfc3339

    return to_rfc3339(t)


class Driver:
    """A state machine fed like the daemon feeds it."""

    def __init__(self) -> None:
        self.machine = StateMachine(CONFIG)
        self.commands_offset = 0
        self.audits: list[Any] = []
        self.records: list[Any] = []

    def feed(self, msgs: list[IngestBatch]) -> None:
        for b in msgs:
            offset = self.machine.position + 1
            applied = self.machine.apply(IngestBatch.from_bytes(b.to_bytes()), offset)
            self.audits += applied.audits
            self.records += applied.records

    def send(self, *cmds: Command, offsets: list[int] | None = None) -> list[Any]:
        if offsets is None:
            offsets = list(range(self.commands_offset, self.commands_offset + len(cmds)))
            self.commands_offset += len(cmds)
        batch = CommandBatch(
            [ReceivedCommand(0, o, NOW, c.body or {}) for o, c in zip(offsets, cmds, strict=True)]
        )
        applied = self.machine.apply_commands(
            CommandBatch.from_json(batch.to_json()), self.machine.position + 1
        )
        self.audits += applied.audits
        self.records += applied.records
        return [a for a in applied.audits if a.kind == "command"]

    def state(self, rule: str = "bot") -> str:
        s = self.machine.engine.state_of(rule)
        assert s is not None
        return s.state


def test_an_operator_pause_holds_until_an_operator_resumes(history: list[IngestBatch]) -> None:
    d = Driver()
    d.feed(history[: len(history) // 2])
    (audit,) = d.send(command("pause"))
    assert (audit.outcome, audit.actor, audit.rule_id) == ("applied", "alice", "bot")
    assert d.state() == "forced_open"
    transition = [r for r in d.records if r.is_transition][-1]
    assert transition.evidence["operator"] == "alice"
    # Hours of event time pass: far beyond any cool-down, the detector lifts nothing.
    d.feed(history[len(history) // 2 :])
    assert d.state() == "forced_open"
    (again,) = d.send(command("pause"))
    assert again.outcome == "unchanged"  # idempotent
    (resume,) = d.send(command("resume", grace_seconds=600))
    assert resume.outcome == "applied"
    assert d.state() == "closed"
    assert d.machine.engine.rules["bot"].s.grace_until > d.machine.engine.now
    rec_audits = [a for a in d.audits if a.kind == "transition"]
    assert [a.actor for a in rec_audits[-2:]] == ["alice", "alice"]


def test_replays_and_resends_are_told_apart(history: list[IngestBatch]) -> None:
    d = Driver()
    d.feed(history[:50])
    pause = command("pause", cid="same-id")
    assert [a.outcome for a in d.send(pause)] == ["applied"]
    # The relay re-sends the same commands-topic offset after a crash: silently skipped.
    assert d.send(pause, offsets=[0]) == []
    # The same command id at a new offset is a replay: rejected and audited.
    (replay,) = d.send(pause)
    assert (replay.outcome, replay.reason) == ("rejected", "replayed")
    assert d.state() == "forced_open"


def test_commands_before_event_time_wait_for_it(history: list[IngestBatch]) -> None:
    d = Driver()
    assert d.send(command("pause")) == []  # no event time yet: deferred, not lost
    snap = orjson.loads(orjson.dumps(d.machine.snapshot()))
    d.machine = StateMachine.restore(snap, CONFIG)
    d.feed(history[:10])
    assert d.state() == "forced_open"
    assert [a.outcome for a in d.audits if a.kind == "command"] == ["applied"]


def test_global_halt_and_baseline_reset(history: list[IngestBatch]) -> None:
    d = Driver()
    d.feed(history)
    (halt,) = d.send(command("halt_all", rule="*"))
    assert halt.outcome == "applied" and d.state("*") == "forced_open"
    (res,) = d.send(command("resume_all", rule="*"))
    assert res.outcome == "applied" and d.state("*") == "closed"
    assert not d.machine.engine.rules["spam"].s.warm
    (reset,) = d.send(command("reset_baseline", rule="spam"))
    assert reset.outcome == "applied"
    assert d.machine.engine.rules["spam"].s.warm
    for kind, state in (("disable", "disabled"), ("enable", "closed"), ("shadow", "shadow")):
        d.send(command(kind, rule="fraud"))
        assert d.state("fraud") == state


def test_command_bookkeeping_survives_a_snapshot(history: list[IngestBatch]) -> None:
    d = Driver()
    d.feed(history[:20])
    d.send(command("pause", cid="c1"))
    restored = StateMachine.restore(orjson.loads(orjson.dumps(d.machine.snapshot())), CONFIG)
    assert restored.command_marks == {0: 0}
    assert set(restored.seen_commands) == {"c1"}
    d.machine = restored
    (replay,) = d.send(command("resume", cid="c1"))
    assert replay.reason == "replayed"
    assert d.state() == "forced_open"
    # Ids are forgotten only long after a relay would reject them as stale anyway.
    assert Settings().command_max_age * 10 < COMMAND_MEMORY_SECONDS
