"""The operator tooling's pure parts: what ``ctl`` and ``affected`` compute from the
topics' messages, reinstatement requests, the printed forms and the help texts."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
from typing import Any

import orjson
import pytest

from detector.cli import build_parser
from detector.commands.affected import COLUMNS, rows
from detector.commands.ctl import EXAMPLES, WRITES
from detector.control.render import ago, highlights
from detector.control.views import (
    Ledger,
    command_outcome,
    parse_audit,
    plan_reinstatements,
    requested_events,
    rule_history,
)
from detector.errors import ContractError
from detector.wire.affected import AffectedAccount, TripSummary
from detector.wire.audit import AuditRecord
from detector.wire.reinstate import ReinstatementRequest, request_id

T0 = 1_767_571_200.0


def audit(aid: str, rule: str, at: float, kind: str = "transition", **detail: Any) -> AuditRecord:
    outcome = "applied" if kind == "command" else "recorded"
    return AuditRecord(aid, kind, at, rule, "detector", outcome, "why", detail)


def account(
    trip: str,
    event: str,
    who: str,
    at: float = T0,
    phase: str = "incident",
    rule: str | None = None,
) -> Any:
    rule = rule or trip.partition("#")[0]
    return AffectedAccount(trip, rule, who, event, "deactivate_account", at, phase)


def msg(rec: AffectedAccount | TripSummary) -> tuple[bytes, bytes]:
    return rec.key, rec.to_json()


# --- audit ------------------------------------------------------------------------
def test_history_is_one_rules_records_each_id_once_in_topic_order() -> None:
    records = [
        audit("rec:5:0", "a", T0 + 5),
        audit("rec:1:0", "b", T0 + 1),
        audit("cmd:0:1", "a", T0 + 9e6, "command"),  # wall clock, far ahead of event time
        audit("rec:1:0", "a", T0 + 1),
        audit("rec:5:0", "a", T0 + 99),  # the same id written again after a crash
        audit("rec:3:0", "a", T0 + 1),
    ]
    got = rule_history(records, "a")
    assert [(r.audit_id, r.at) for r in got] == [
        ("rec:5:0", T0 + 5),
        ("cmd:0:1", T0 + 9e6),
        ("rec:1:0", T0 + 1),
        ("rec:3:0", T0 + 1),
    ]
    assert rule_history(records, "nobody") == []


def test_a_commands_outcome_is_found_by_its_id_inside_the_detail() -> None:
    records = [
        audit("rec:1:0", "a", T0, command_id="c-1"),  # a transition's evidence names it too
        audit("cmd:0:1", "a", T0, "command", command={"command_id": "c-2", "kind": "pause"}),
        audit("cmd:0:2", "a", T0, "command", raw="not json", bytes=8),
        audit("cmd:0:3", "a", T0, "command", command={"command_id": "c-1", "kind": "pause"}),
    ]
    found = command_outcome(records, "c-1")
    assert found is not None and found.audit_id == "cmd:0:3"
    assert command_outcome(records, "c-9") is None


def test_unreadable_audit_messages_are_counted() -> None:
    good = audit("rec:1:0", "a", T0).to_json()
    records, bad = parse_audit([good, None, b"nope", b'{"kind": "transition"}'])
    assert [r.audit_id for r in records] == ["rec:1:0"]
    assert bad == 3


# --- the ledger -----------------------------------------------------------------
def test_the_ledger_keeps_the_last_record_of_each_key() -> None:
    summary = TripSummary("bot#1", "bot", T0, T0 + 60, "surge_with_shift")
    closed = TripSummary("bot#1", "bot", T0, T0 + 60, "surge_with_shift", "closed", T0 + 600)
    late = account("bot#1", "e2", "u2", T0 + 10)
    ledger = Ledger.fold(
        [
            msg(summary),
            msg(account("bot#1", "e1", "u1", T0 + 20)),
            msg(late),
            msg(account("bot#1", "e3", "u3", T0 + 30)),
            (account("bot#1", "e3", "u3").key, None),  # a tombstone deletes
            msg(closed),
            (None, account("bot#1", "e4", "u4", T0 + 40).to_json()),  # no key: its own
            (b"x", b"not a record"),
            (None, None),
            msg(account("spam#2", "e9", "u9")),
        ]
    )
    assert ledger.trip("bot#1") == closed
    assert [a.event_id for a in ledger.accounts_of("bot#1")] == ["e2", "e1", "e4"]
    assert ledger.skipped == 2
    assert ledger.knows("spam#2") and not ledger.knows("spam#1")
    assert ledger.trip("spam#2") is None


def test_unknown_trips_get_suggestions_of_the_same_rule_first() -> None:
    trips = [
        TripSummary("bot#1", "bot", T0, T0 + 1, "r"),
        TripSummary("bot#4", "bot", T0, T0 + 4, "r"),
        TripSummary("spam#2", "spam", T0, T0 + 9, "r"),
    ]
    ledger = Ledger.fold([msg(t) for t in trips])
    assert ledger.similar("bot#9") == ["bot#4", "bot#1", "spam#2"]
    assert ledger.similar("bot#9", limit=1) == ["bot#4"]
    assert Ledger.fold([]).similar("bot#9") == []


# --- reinstatements -------------------------------------------------------------
def test_request_ids_are_the_hash_of_the_ledger_key() -> None:
    assert request_id("bot#1", "e1") == hashlib.sha256(b"bot#1/e1").hexdigest()
    assert request_id("bot#1", "e1") != request_id("bot#2", "e1")


def test_a_plan_requests_each_entry_once() -> None:
    accounts = [
        account("bot#1", "e1", "u1"),
        account("bot#1", "e2", "u1"),  # the same account deactivated twice
        account("bot#1", "e3", "u3"),
    ]
    first = plan_reinstatements("bot#1", accounts, set(), "alice", "INC-1", T0)
    assert (first.entries, first.accounts, first.already_requested) == (3, 2, 0)
    assert [r.reverses_event_id for r in first.to_send] == ["e1", "e2", "e3"]
    topic = [r.to_json() for r in first.to_send[:2]]
    already, bad = requested_events([*topic, b"junk", None])
    assert bad == 2
    again = plan_reinstatements("bot#1", accounts, already, "bob", "again", T0 + 60)
    assert again.already_requested == 2
    assert [r.request_id for r in again.to_send] == [first.to_send[2].request_id]


def test_a_deactivation_two_trips_list_is_requested_once() -> None:
    """A global halt's trip lists what the rule's own trip lists too."""
    own = ReinstatementRequest.for_account(account("bot#2", "e3", "u3"), "bob", "x", T0)
    already, _ = requested_events([own.to_json()])
    accounts = [account("*#1", "e3", "u3", rule="bot"), account("*#1", "e4", "u4", rule="spam")]
    plan = plan_reinstatements("*#1", accounts, already, "alice", "INC-2", T0)
    assert plan.already_requested == 1
    assert [(r.trip_id, r.rule_id, r.reverses_event_id) for r in plan.to_send] == [
        ("*#1", "spam", "e4")
    ]


def test_a_request_round_trips() -> None:
    req = ReinstatementRequest.for_account(account("bot#1", "e1", "u1"), "alice", "INC-1", T0)
    assert ReinstatementRequest.from_json(req.to_json()) == req
    assert req.key == b"u1"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"request_id": None}, "request_id"),
        ({"account_id": ""}, "account_id"),
        ({"operator": 7}, "operator"),
        ({"requested_at": "yesterday"}, "requested_at"),
    ],
)
def test_a_bad_request_names_its_field(change: dict[str, Any], field: str) -> None:
    req = ReinstatementRequest.for_account(account("bot#1", "e1", "u1"), "alice", "INC-1", T0)
    with pytest.raises(ContractError) as err:
        ReinstatementRequest.from_json(orjson.dumps({**req.to_dict(), **change}))
    assert err.value.field == field


# --- what is printed ------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s ago"),
        (89, "89 s ago"),
        (120, "2 min ago"),
        (5 * 3600, "5.0 h ago"),
        (3 * 86400, "3.0 d ago"),
        (-30, "in 30 s"),
    ],
)
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text


def test_highlights_put_the_numbers_first() -> None:
    evidence = {
        "observed": 120,
        "expected": 20.0,
        "outside_share": 0.6,
        "usual_outside_share": 0.05,
        "operator": "alice",
        "ignored": [1, 2],
    }
    assert highlights(evidence) == (
        "120 / 20 expected (6.0x); 60% outside usual population (usual 5%); by alice"
    )
    assert highlights({}) == ""


def test_affected_rows_as_csv_and_jsonl() -> None:
    accounts = [account("bot#1", "e1", "u,1"), account("bot#1", "e2", "u2", T0 + 1, "probe")]
    table = list(csv.reader(io.StringIO(rows(accounts, "csv"))))
    assert table[0] == list(COLUMNS)
    assert table[1] == ["bot#1", "bot", "u,1", "e1", "deactivate_account", table[1][5], "incident"]
    assert len(table) == 3
    lines = rows(accounts, "jsonl").splitlines()
    assert [orjson.loads(line) for line in lines] == [a.to_dict() for a in accounts]
    assert rows([], "csv") == ",".join(COLUMNS) + "\n"


# --- help -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "action", [*WRITES, "status", "history", "reinstate", "watch"], ids=lambda a: a
)
def test_every_ctl_subcommand_explains_itself_with_examples(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["ctl", action, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"detector ctl {action} " in text
    assert EXAMPLES[action].splitlines()[0].strip() in text


@pytest.mark.parametrize("argv", [["ctl"], ["affected"]], ids=["ctl", "affected"])
def test_ctl_and_affected_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "exit codes:" in text


def parsers(parser: argparse.ArgumentParser, path: str = "detector") -> list[tuple[str, Any]]:
    """Every (sub)command's parser, with its command line."""
    out: list[tuple[str, Any]] = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += parsers(sub, f"{path} {name}")
    return out


def test_every_option_of_every_command_says_what_it_does() -> None:
    commands = parsers(build_parser())
    assert len(commands) > 15
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{path}: {'/'.join(action.option_strings) or action.dest}"
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, path


# --- connection security settings (shared by the worker and the command line) -----
@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DETECTOR_SECURITY_PROTOCOL": "TLS"}, "DETECTOR_SECURITY_PROTOCOL"),
        ({"DETECTOR_SECURITY_PROTOCOL": "SASL_SSL"}, "DETECTOR_SASL_MECHANISM"),
        (
            {"DETECTOR_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DETECTOR_SASL_MECHANISM": "PLAIN"},
            "DETECTOR_SASL_USERNAME",
        ),
        (
            {"DETECTOR_SECURITY_PROTOCOL": "SSL", "DETECTOR_SSL_CAFILE": "/nonexistent/ca.pem"},
            "DETECTOR_SSL_CAFILE",
        ),
    ],
)
def test_bad_security_settings_stop_ctl_with_one_line_naming_the_variable(
    env: dict[str, str],
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from detector.cli import main

    for name in [k for k in os.environ if k.startswith("DETECTOR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["ctl", "status", "--broker", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and variable in err[0]


def test_sasl_settings_reach_the_clients_without_showing_the_password() -> None:
    from detector.stream.settings import Settings

    settings = Settings.from_env(
        {
            "DETECTOR_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "DETECTOR_SASL_MECHANISM": "SCRAM-SHA-256",
            "DETECTOR_SASL_USERNAME": "ops",
            "DETECTOR_SASL_PASSWORD": "hunter2-hunter2",
        }
    )
    assert settings.kafka_security() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "ops",
        "sasl_plain_password": "hunter2-hunter2",
    }
    assert "hunter2" not in repr(settings)
