"""``detector backtest`` on input with nothing to judge: a clear error and its exit code,
never a traceback."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from detector.cli import main
from detector.config import EngineConfig
from detector.engine.core import Engine

GOOD = orjson.dumps(
    {
        "event_id": "e1",
        "occurred_at": "2026-03-01T12:00:05Z",
        "rule_id": "spam",
        "action": "deactivate_account",
        "account_id": "a1",
    }
)


def test_an_engine_without_event_time_judges_nothing() -> None:
    engine = Engine(EngineConfig())
    assert engine.advance(-math.inf) == []
    assert engine.watermark == -math.inf


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", "is empty"),
        (b"\n\n", "holds no valid line"),
        (b'not json\n{"event_id": "e"}\n', "holds no valid line"),
    ],
    ids=["empty", "blank", "all-bad"],
)
def test_input_without_a_valid_event_is_an_error(
    content: bytes, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    rejects = tmp_path / "rejects.jsonl"
    assert main(["backtest", str(path), "--quiet", "--rejects", str(rejects)]) == 1
    out, err = capsys.readouterr()
    assert "accepted 0" in out
    assert err.strip() == f"detector backtest: error: {path} {what}: nothing was judged"
    bad = content.count(b"{") + content.count(b"not json")
    assert len(rejects.read_bytes().splitlines()) == bad


def test_one_valid_event_is_a_backtest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"not json\n" + GOOD + b"\n")
    assert main(["backtest", str(path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "accepted 1; rejected 1 (not_json: 1)" in out
    assert err == ""


def test_strict_stops_at_the_first_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(GOOD + b"\nnot json\n" + GOOD + b"\n")
    assert main(["backtest", str(path), "--quiet", "--strict"]) == 2
    assert "line 2: not_json" in capsys.readouterr().err
