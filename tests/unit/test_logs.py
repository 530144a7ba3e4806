"""Log lines: one event per line, key=value or JSON, with journald's priority prefix."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from relance.logs import (
    JournalPriority,
    JsonFormatter,
    KeyValueFormatter,
    make_formatter,
    parse_pairs,
    quote,
    setup,
    under_journald,
)


def record(message: str, *args: object, level: int = logging.INFO,
           name: str = "relance", exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize(("value", "written"), [
    ("F-2026-0042", "F-2026-0042"),
    ("", '""'),
    (None, '""'),
    ("Facture F-1", '"Facture F-1"'),
    ('a "quoted" word', '"a \\"quoted\\" word"'),
    ("two\nlines", '"two\\nlines"'),
    ("a=b", '"a=b"'),
])
def test_quote(value: object, written: str) -> None:
    assert quote(value) == written


@pytest.mark.parametrize(("message", "pairs"), [
    ("event=started mode=send", {"event": "started", "mode": "send"}),
    ("event=started ", {"event": "started"}),
    ('event=reload-failed reason="rules have errors" kept=previous',
     {"event": "reload-failed", "reason": "rules have errors", "kept": "previous"}),
    ('event=x subject="Re: \\"devis\\"\\nsuite"', {"event": "x", "subject": 'Re: "devis"\nsuite'}),
    ("case F-1: step relance-2 failed", None),
    ("", None),
])
def test_parse_pairs(message: str, pairs: dict[str, str] | None) -> None:
    assert parse_pairs(message) == pairs


def test_round_trip_of_quoted_values() -> None:
    tricky = 'Facture "F-1"\n= 1 250,00 € \\ TTC'
    assert parse_pairs(f"event=x subject={quote(tricky)}") == {"event": "x", "subject": tricky}


def test_text_line_for_an_event() -> None:
    line = KeyValueFormatter(timestamps=False).format(
        record("event=%s case=%s %s", "reminder-sent", "F-1", 'to="a@b.fr" step=2'))
    assert line == "level=info event=reminder-sent case=F-1 to=a@b.fr step=2"


def test_free_text_and_tracebacks_stay_on_one_line() -> None:
    line = KeyValueFormatter(timestamps=False).format(
        record("case %s: step failed", "F-1", level=logging.ERROR, exc=ValueError("bad\nvalue")))
    assert "\n" not in line
    assert line.startswith(
        'level=error msg="case F-1: step failed" error="ValueError: bad\\nvalue"')
    assert "traceback=" in line


def test_text_line_has_a_timestamp_outside_journald() -> None:
    line = KeyValueFormatter().format(record("event=started"))
    assert line.startswith("ts=20") and " level=info event=started" in line


def test_json_line_has_the_same_keys() -> None:
    line = JsonFormatter().format(
        record('event=reload-failed reason="x y"', level=logging.ERROR, name="relance.app"))
    data = json.loads(line)
    assert data["level"] == "error"
    assert data["logger"] == "relance.app"
    assert (data["event"], data["reason"]) == ("reload-failed", "x y")
    assert "ts" in data


def test_journald_priority_prefix() -> None:
    formatter = JournalPriority(KeyValueFormatter(timestamps=False))
    assert formatter.format(record("event=x", level=logging.WARNING)) == "<4>level=warning event=x"
    assert formatter.format(record("event=x", level=logging.ERROR)).startswith("<3>")
    assert formatter.format(record("event=x")).startswith("<6>")


def test_under_journald_matches_the_stream_identity(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        stat = os.fstat(stream.fileno())
        assert under_journald(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        assert not under_journald(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"})
        assert not under_journald(stream, {})
        assert not under_journald(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_formatter_choice(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        stat = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert isinstance(make_formatter(stream, {}), KeyValueFormatter)
        assert isinstance(make_formatter(stream, {"RELANCE_LOG_FORMAT": "json"}), JsonFormatter)
        under = make_formatter(stream, journal)
        assert isinstance(under, JournalPriority)
        assert isinstance(under.inner, KeyValueFormatter) and not under.inner.timestamps


def test_setup_writes_one_line_per_event() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup(verbose=False, stream=stream, environ={"RELANCE_LOG_FORMAT": "json"})
        logging.getLogger("relance").info("event=started mode=%s", "send")
        logging.getLogger("relance").debug("event=hidden")
        logging.getLogger("imapclient").info("chatty")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["started"]
