"""The operator tooling against a real worker and a real broker: ``detector ctl`` and
``detector affected`` run as subprocesses, the way an operator runs them.

One worker per module judges the simulated incident of ``test_worker`` (the rule
``bot`` trips); a ``detector ctl watch`` process — a RuleGate in a process of its
own — follows the rule-state topic from before the trip. The tests then pause and
resume a rule from the command line, list and reinstate the trip's accounts, and
check the errors an operator meets.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from streamkit import Topics, WorkerProc, create_worker_topics, produce, read_topic, wait_for
from test_worker import CONFIG, HISTORY, INCIDENT, START, scenario

from detector.backtest import Backtest
from detector.broker import EmbeddedBroker, free_port
from detector.sim.events import GroundTruth
from detector.wire.affected import AffectedAccount, TripSummary, parse_ledger_record
from detector.wire.reinstate import ReinstatementRequest, request_id
from detector.wire.rulestate import RuleStateMessage
from detector.wire.timefmt import from_rfc3339

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

UNTIL = START + HISTORY + INCIDENT - 120


@dataclass(frozen=True)
class Ran:
    """A finished command line."""

    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)

    def one_line_error(self) -> str:
        """The error message; fails unless it is exactly one line, without a traceback."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in self.err, self.err
        return lines[0]


@dataclass
class Plane:
    """The module's broker, worker, watcher and the command line's environment."""

    broker: EmbeddedBroker
    topics: Topics
    worker: WorkerProc
    env: dict[str, str]
    """DETECTOR_* for the command line: the worker's broker, topics and key."""
    watch_log: Path
    values: list[bytes]
    truth: GroundTruth
    tmp: Path


def cli_env(bootstrap: str, topics: Topics, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update(topics.env())
    env["DETECTOR_BROKER"] = f"kafka://{bootstrap}"
    env["USER"] = "alice"
    env.update(extra)
    return env


async def detector(env: dict[str, str], *args: str, timeout: float = 60) -> Ran:
    """Run ``python -m detector ARGS``; killed by PID if it outlives ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "detector",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def watched(plane: Plane) -> list[dict[str, Any]]:
    """The watcher's lines so far."""
    text = plane.watch_log.read_text() if plane.watch_log.exists() else ""
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def seen(plane: Plane, rule: str, state: str) -> dict[str, Any] | None:
    """The watcher's first live (not replayed) change of ``rule`` to ``state``."""
    for row in watched(plane):
        if (row["event"], row.get("rule_id"), row.get("state"), row.get("replay")) == (
            "change",
            rule,
            state,
            False,
        ):
            return row
    return None


def stop_by_pid(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
async def plane(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Plane]:
    tmp = tmp_path_factory.mktemp("ctl")
    key_file = tmp / "command.key"
    key_file.write_bytes(os.urandom(32).hex().encode())  # generated here, never committed
    key_file.chmod(0o600)
    topics = Topics.unique("ctlcli")
    await create_worker_topics(broker, topics)
    env = cli_env(broker.bootstrap, topics, DETECTOR_COMMAND_KEY_FILE=str(key_file))
    watch_log = tmp / "watch.jsonl"
    with watch_log.open("wb") as out, (tmp / "watch.err").open("wb") as err:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "detector", "ctl", "watch", "--json"],
            env=env,
            stdout=out,
            stderr=err,
        )
    worker = WorkerProc(
        broker.bootstrap,
        topics,
        tmp,
        CONFIG,
        extra_env={"DETECTOR_COMMAND_KEY_FILE": str(key_file)},
    )
    try:
        values, keys, truth = scenario()
        plane = Plane(broker, topics, worker, env, watch_log, values, truth, tmp)
        # The gate must be following the topic before the trip, as a service's would be.
        await wait_for(
            lambda: any(r["event"] == "caught_up" for r in watched(plane)), 30, "the watcher"
        )
        await produce(broker.bootstrap, topics.actions, values, keys)
        worker.start()
        await wait_for(
            lambda: float((worker.health() or {}).get("watermark") or 0) > UNTIL + 60,
            90,
            "the worker to judge the incident",
        )
        yield plane
    finally:
        worker.stop()
        stop_by_pid(watcher)


async def ledger_records(plane: Plane) -> list[AffectedAccount | TripSummary]:
    """The ledger topic, the last record of each key."""
    last: dict[bytes, AffectedAccount | TripSummary] = {}
    for m in await read_topic(plane.broker.bootstrap, plane.topics.affected):
        last[m.key] = parse_ledger_record(m.value)
    return list(last.values())


async def bot_trip(plane: Plane) -> str:
    trips = [r for r in await ledger_records(plane) if isinstance(r, TripSummary)]
    return next(t.trip_id for t in trips if t.rule_id == "bot")


# --- the gate in another process ------------------------------------------------
async def test_a_gate_in_another_process_sees_the_trip_within_a_second(plane: Plane) -> None:
    """Done-when: the detector's own trip of ``bot``, published on the rule-state topic,
    is seen by a RuleGate in another process less than a second later. The delay is
    from the record's timestamp (set by the worker's producer when it sent the trip)
    to the moment the gate applied it."""
    await wait_for(lambda: seen(plane, "bot", "open") is not None, 10, "the watcher to see it")
    row = seen(plane, "bot", "open")
    assert row is not None
    assert (row["decision"], row["answer"]) == ("hold", "hold")
    published = [
        m
        for m in await read_topic(plane.broker.bootstrap, plane.topics.rule_state)
        if m.key == b"bot" and RuleStateMessage.from_json(m.value).evidence.get("trigger") == "trip"
    ]
    assert published, "the detector did not trip bot: the test proves nothing"
    assert row["version"] == RuleStateMessage.from_json(published[0].value).version
    assert row["message_timestamp"] == pytest.approx(published[0].timestamp / 1000, abs=1e-3)
    assert 0 <= row["lag_seconds"] < 1.0, row


# --- pause, status, resume --------------------------------------------------------
async def test_pause_status_resume_from_the_command_line(plane: Plane) -> None:
    env = plane.env
    status = await detector(env, "ctl", "status", "fraud", "--json")
    before = status.json()["rule"]["state"] if status.rc == 0 else None
    assert before in (None, "closed"), status

    paused = await detector(
        env, "ctl", "pause", "fraud", "--reason", "INC-1: test pause", "--wait", "30", "--json"
    )
    assert paused.rc == 0, paused.err
    pause = paused.json()
    assert pause["outcome"]["outcome"] == "applied"
    assert pause["command"]["operator"] == "alice"
    assert "signature" in pause["command"]

    status = await detector(env, "ctl", "status", "fraud", "--json")
    assert status.rc == 0, status.err
    assert (status.json()["rule"]["state"], status.json()["decision"]) == ("forced_open", "hold")
    everything = (await detector(env, "ctl", "status", "--json")).json()
    states = {r["rule_id"]: r["state"] for r in everything["rules"]}
    assert states["fraud"] == "forced_open"
    assert "bot" in states  # it has a state since its trip
    table = await detector(env, "ctl", "status")
    assert table.rc == 0 and "fraud" in table.out and "forced_open" in table.out

    # The watcher (a gate in another process) holds the rule within a second.
    await wait_for(lambda: seen(plane, "fraud", "forced_open") is not None, 10, "the gate")
    row = seen(plane, "fraud", "forced_open")
    assert row is not None and row["answer"] == "hold" and row["lag_seconds"] < 1.0

    again = await detector(env, "ctl", "pause", "fraud", "--reason", "INC-1", "--wait", "30")
    assert again.rc == 0, again.err
    assert "unchanged" in again.out  # commands are idempotent

    resumed = await detector(
        env, "ctl", "resume", "fraud", "--reason", "INC-1 fixed", "--wait", "30", "--json"
    )
    assert resumed.rc == 0, resumed.err
    assert resumed.json()["outcome"]["outcome"] == "applied"
    status = await detector(env, "ctl", "status", "fraud", "--json")
    assert (status.json()["rule"]["state"], status.json()["decision"]) == ("closed", "allow")
    await wait_for(lambda: seen(plane, "fraud", "closed") is not None, 10, "the gate to allow")

    history = await detector(env, "ctl", "history", "fraud", "--json")
    assert history.rc == 0, history.err
    records = history.json()["records"]
    commands = [
        (r["outcome"], r["detail"]["command"]["kind"]) for r in records if r["kind"] == "command"
    ]
    assert commands == [("applied", "pause"), ("unchanged", "pause"), ("applied", "resume")]
    assert {r["actor"] for r in records} == {"alice"}
    assert [r["detail"]["trigger"] for r in records if r["kind"] == "transition"] == [
        "operator_pause",
        "operator_resume",
    ]
    table = await detector(env, "ctl", "history", "fraud")
    assert table.rc == 0 and "operator_pause" in table.out


async def test_a_command_signed_with_another_key_is_rejected(plane: Plane) -> None:
    wrong = plane.tmp / "wrong.key"
    wrong.write_bytes(os.urandom(32).hex().encode())
    ran = await detector(
        plane.env, "ctl", "pause", "spam", "--reason", "x", "--key-file", str(wrong), "--wait", "30"
    )
    assert ran.rc == 5
    assert "bad_signature" in ran.one_line_error()
    status = await detector(plane.env, "ctl", "status", "spam", "--json")
    assert status.rc == 4 or status.json()["rule"]["state"] != "forced_open"


# --- the ledger and reinstatements ------------------------------------------------
async def test_affected_lists_the_trips_ledger_as_the_ground_truth(plane: Plane) -> None:
    trip = await bot_trip(plane)
    ran = await detector(plane.env, "affected", trip, "--format", "csv")
    assert ran.rc == 0, ran.err
    rows = list(csv.DictReader(io.StringIO(ran.out)))
    assert rows, "no affected accounts: the test proves nothing"

    # Exactly the ledger topic's accounts of the trip, field by field.
    ledger = [r for r in await ledger_records(plane) if isinstance(r, AffectedAccount)]
    want_rows = sorted(
        (
            {k: str(v) for k, v in a.to_dict().items() if k != "kind"}
            for a in ledger
            if a.trip_id == trip
        ),
        key=lambda d: (d["occurred_at"], d["event_id"]),
    )
    assert rows == want_rows

    # The backtest of the same events lists the same incident accounts ...
    backtest = Backtest(CONFIG, ledger=True).events(iter(plane.values)).ledger
    want = {(a.event_id, a.phase) for a in backtest if isinstance(a, AffectedAccount)}
    got = {(r["event_id"], r["phase"]) for r in rows}
    assert {e for e in got if e[1] == "incident"} == {e for e in want if e[1] == "incident"}
    assert {e for e in got if e[1] != "incident"} <= want  # probes and held stretches that ended
    # ... each row names the account the simulated event deactivated ...
    events = {d["event_id"]: d for d in map(orjson.loads, plane.values)}
    for r in rows:
        assert events[r["event_id"]]["account_id"] == r["account_id"]
        assert events[r["event_id"]]["rule_id"] == "bot"
    # ... and every wrongful deactivation of the simulated incident before the pause.
    summary = next(r for r in backtest if isinstance(r, TripSummary))
    wrongful = {
        e
        for e in plane.truth.wrongful_events
        if from_rfc3339(events[e]["occurred_at"]) < summary.paused_at
    }
    assert wrongful and wrongful <= {r["event_id"] for r in rows}

    jsonl = await detector(plane.env, "affected", trip, "--format", "jsonl")
    assert [
        {k: str(v) for k, v in orjson.loads(line).items() if k != "kind"}
        for line in jsonl.out.splitlines()
    ] == rows
    out_file = plane.tmp / "affected.csv"
    written = await detector(plane.env, "affected", trip, "--output", str(out_file))
    assert written.rc == 0 and out_file.read_text() == ran.out
    table = await detector(plane.env, "affected", trip)
    assert table.rc == 0 and f"Affected accounts ({len(rows)})" in table.out

    # `ctl status` names the rule's trip, `ctl history` the transition that made it.
    status = (await detector(plane.env, "ctl", "status", "bot", "--json")).json()
    assert (status["trip"]["trip_id"], status["affected"]) == (trip, len(rows))
    assert f"{trip} (" in (await detector(plane.env, "ctl", "status")).out
    assert f"(trip {trip})" in (await detector(plane.env, "ctl", "history", "bot")).out


async def test_reinstate_dry_run_writes_nothing_and_a_rerun_sends_nothing_new(
    plane: Plane,
) -> None:
    trip = await bot_trip(plane)
    accounts = [
        a
        for a in await ledger_records(plane)
        if isinstance(a, AffectedAccount) and a.trip_id == trip
    ]
    assert accounts
    reinstatements = plane.topics.reinstatements
    args = ("ctl", "reinstate", trip, "--reason", "INC-2: wrongful bans", "--json")

    dry = await detector(plane.env, *args, "--dry-run")
    assert dry.rc == 0, dry.err
    assert (dry.json()["to_send"], dry.json()["sent"]) == (len(accounts), 0)
    assert await read_topic(plane.broker.bootstrap, reinstatements) == []

    first = await detector(plane.env, *args)
    assert first.rc == 0, first.err
    assert (first.json()["sent"], first.json()["already_requested"]) == (len(accounts), 0)
    second = await detector(plane.env, *args)
    assert second.rc == 0, second.err
    assert (second.json()["sent"], second.json()["already_requested"]) == (0, len(accounts))

    sent = [
        ReinstatementRequest.from_json(m.value)
        for m in await read_topic(plane.broker.bootstrap, reinstatements)
    ]
    assert sorted(r.request_id for r in sent) == sorted(
        request_id(trip, a.event_id) for a in accounts
    )
    by_event = {a.event_id: a for a in accounts}
    for r in sent:
        assert (r.trip_id, r.account_id, r.operator) == (
            trip,
            by_event[r.reverses_event_id].account_id,
            "alice",
        )


# --- errors an operator meets -----------------------------------------------------
async def test_errors_are_one_line_with_an_exit_code(plane: Plane) -> None:
    env = plane.env
    unknown = await detector(env, "affected", "bot#999", "--format", "csv")
    assert unknown.rc == 4
    message = unknown.one_line_error()
    assert "unknown trip 'bot#999'" in message and await bot_trip(plane) in message
    assert unknown.out == ""
    assert (await detector(env, "ctl", "reinstate", "nope#1", "--reason", "x")).rc == 4
    assert (await detector(env, "ctl", "status", "never-seen")).rc == 4
    assert (await detector(env, "ctl", "history", "never-seen")).rc == 4

    nowhere = f"127.0.0.1:{free_port()}"
    for args in (
        ("ctl", "status"),
        ("affected", "bot#1"),
        ("ctl", "pause", "fraud", "--reason", "x"),
    ):
        ran = await detector(env, *args, "--broker", nowhere, "--timeout", "3")
        assert ran.rc == 3, (args, ran.err)
        assert f"cannot reach the broker kafka://{nowhere}" in ran.one_line_error()

    no_key = {k: v for k, v in env.items() if not k.startswith("DETECTOR_COMMAND_KEY")}
    ran = await detector(no_key, "ctl", "pause", "fraud", "--reason", "x")
    assert ran.rc == 2
    assert "no command key" in ran.one_line_error()
    short = "s3cr3t-but-short"
    ran = await detector(
        {**no_key, "DETECTOR_COMMAND_KEY": short}, "ctl", "halt-all", "--reason", "x"
    )
    assert ran.rc == 2
    assert "at least 32 bytes" in ran.one_line_error() and short not in ran.err
    ran = await detector(
        no_key, "ctl", "pause", "fraud", "--reason", "x", "--key-file", "/nonexistent"
    )
    assert ran.rc == 2 and "/nonexistent" in ran.one_line_error()

    # A missing topic is named, and asking does not create it.
    missing = f"rule-state-missing-{os.urandom(4).hex()}"
    ran = await detector({**env, "DETECTOR_TOPIC_RULE_STATE": missing}, "ctl", "status")
    assert ran.rc == 2
    assert missing in ran.one_line_error() and "DETECTOR_TOPIC_RULE_STATE" in ran.err
    ran = await detector({**env, "DETECTOR_TOPIC_RULE_STATE": missing}, "ctl", "status")
    assert ran.rc == 2, "the first call created the topic"
    ran = await detector({**env, "DETECTOR_TOPIC_RULE_STATE": missing}, "ctl", "watch")
    assert ran.rc == 2 and missing in ran.one_line_error()


async def test_no_answer_within_wait_is_its_own_exit_code(broker: EmbeddedBroker) -> None:
    """Topics without a worker: the command is sent, nobody audits it."""
    topics = Topics.unique("ctlnoworker")
    await create_worker_topics(broker, topics)
    key = "k" * 64
    env = cli_env(broker.bootstrap, topics, DETECTOR_COMMAND_KEY=key)
    started = time.monotonic()
    ran = await detector(env, "ctl", "pause", "fraud", "--reason", "x", "--wait", "1")
    assert ran.rc == 6
    assert "did not audit it within 1 s" in ran.one_line_error()
    assert time.monotonic() - started < 30
    commands = await read_topic(broker.bootstrap, topics.commands)
    assert [orjson.loads(m.value)["kind"] for m in commands] == ["pause"]
    assert key not in ran.out + ran.err
