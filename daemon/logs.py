"""Log lines an operator can grep and a collector can parse: one event per line.

The program logs `event=NAME key=value ...` messages. This module only decides how a
record is written:

- text (default): `level=info event=reloaded rules=3`, with a `ts=` in front when a
  terminal or a file reads it (journald stamps lines itself);
- JSON (`RELANCE_LOG_FORMAT=json`): `{"ts": ..., "level": "info", "event": "reloaded",
  "rules": "3"}`, the same keys;
- under journald (systemd sets `$JOURNAL_STREAM` to stderr's device and inode), each line
  starts with `<N>`, the syslog priority, so `journalctl -p warning` finds the problems.

A message that is not `key=value` (a library's, a traceback's) is kept whole under
`msg=`; newlines are escaped so that one record is always one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

FORMAT_VARIABLE = "RELANCE_LOG_FORMAT"
LIBRARY_NOISE = ("pypdf", "pypdf._reader", "factur-x", "facturx", "flufl.bounce")
QUIET_LOGGERS = ("imapclient", "mail-parser", "mailparser", "aiosmtplib", "mail.log")

# One `key=value` or `key="quoted \" value"` pair; keys as the program writes them.
_PAIR = re.compile(r'\s*([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?=\s|$)')
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
    logging.DEBUG: 7,
}


def quote(value: Any) -> str:
    """A value as it goes after `key=`: bare when it can be, else double-quoted."""
    text = "" if value is None else str(value)
    if text and not any(c in text for c in ' "=\\\n\r\t'):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def parse_pairs(message: str) -> dict[str, str] | None:
    """The `key=value` pairs of a whole message, or None when it is free text."""
    pairs: dict[str, str] = {}
    position = 0
    while position < len(message):
        match = _PAIR.match(message, position)
        if match is None:
            return None if message[position:].strip() else pairs or None
        key, value = match[1], match[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(
                m[1], m[1]), value[1:-1])
        pairs[key] = value
        position = match.end()
    return pairs or None


def _level(record: logging.LogRecord) -> str:
    return record.levelname.lower()


def _fields(record: logging.LogRecord) -> dict[str, str]:
    message = record.getMessage()
    fields = parse_pairs(message)
    return {"msg": message} if fields is None else fields


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class KeyValueFormatter(logging.Formatter):
    """`[ts=...] level=info event=... key=value`, always one line."""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            parts.append("ts=" + _timestamp(record))
        parts.append("level=" + _level(record))
        if record.name not in ("relance", "root"):
            parts.append("logger=" + quote(record.name))
        parts.extend(f"{k}={quote(v)}" for k, v in _fields(record).items())
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append("error=" + quote(f"{type(exc).__name__}: {exc}"))
            parts.append("traceback=" + quote(self.formatException(record.exc_info)))
        return _one_line(" ".join(parts))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the same keys as the text format."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": _timestamp(record), "level": _level(record)}
        if record.name not in ("relance", "root"):
            data["logger"] = record.name
        data.update(_fields(record))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data["error"] = f"{type(exc).__name__}: {exc}"
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class JournalPriority(logging.Formatter):
    """Puts `<N>` before another formatter's line: journald reads it as the priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{self.inner.format(record)}"


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).astimezone().isoformat(
        timespec="milliseconds")


def under_journald(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journald stream systemd connected (`$JOURNAL_STREAM`)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (stat.st_dev, stat.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


def make_formatter(
    stream: TextIO, environ: Mapping[str, str] | None = None
) -> logging.Formatter:
    """The formatter for `stream`, chosen by `$RELANCE_LOG_FORMAT` and journald."""
    env = os.environ if environ is None else environ
    journal = under_journald(stream, env)
    kind = env.get(FORMAT_VARIABLE, "text").strip().lower()
    formatter: logging.Formatter = (
        JsonFormatter() if kind == "json" else KeyValueFormatter(timestamps=not journal)
    )
    return JournalPriority(formatter) if journal else formatter


def setup(verbose: bool = False, stream: TextIO | None = None,
          environ: Mapping[str, str] | None = None) -> None:
    """Route every log record to stderr, one event per line."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(stream, environ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Libraries that narrate every damaged attachment or DSN they read: relance says what
    # matters itself (an `extraction-notes` or `message-skipped` event, with the case).
    for chatty in LIBRARY_NOISE:
        logging.getLogger(chatty).setLevel(logging.CRITICAL)
