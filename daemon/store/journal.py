"""The journal: an append-only record of every decision, one JSON object per line.

It is evidence (what the daemon decided, when, and what the SMTP server said) and the
source from which a lost state file can be rebuilt, so each entry is durable before the
call returns, or, inside `batch()`, before the batch ends (one fsync for a chunk of mail
instead of one per entry; the caller ends the batch before the state commits). Each line
goes out in one `os.write` on an `O_APPEND` descriptor, which the
kernel applies whole at the end of the file: the daemon and a `relance paid` typed in a
shell can append at once without interleaving their lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
from collections.abc import Collection, Iterator
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from relance.store.state import fsync_dir

JOURNAL_FILE = "journal.jsonl"
_RESERVED = frozenset({"at", "case", "event"})


class JournalError(OSError):
    """An entry could not be written whole (a short write: the disk is full)."""


def _encode_default(value: Any) -> Any:
    """JSON for the values decisions carry: money and days as strings, never floats."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"cannot write {type(value).__name__} to the journal: {value!r}")


class Journal:
    """`journal.jsonl` in the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / JOURNAL_FILE
        self.skipped_lines: list[int] = []
        """Line numbers the last full read of `entries` could not parse (torn by a crash)."""
        # Where each case's entries are (offset, length, event), read once and extended
        # with what was appended since: a pass asks for one case's entries many times
        # (each evidence bundle), and reading the whole journal each time grew with it.
        self._index: dict[str, list[tuple[int, int, str]]] = {}
        self._indexed: tuple[int, int] = (0, 0)  # (inode, bytes read)
        self._batch = threading.local()  # depth, and whether an fsync is owed at its end

    @contextlib.contextmanager
    def batch(self) -> Iterator[Journal]:
        """Defer the fsync of every `append` in the block to its end: one fsync instead
        of one per entry (3 ms each). Each line is still written at once, whole. Nested
        batches sync at the end of the outermost; the sync happens even if the block
        raises, since the lines are already in the file."""
        depth = getattr(self._batch, "depth", 0)
        self._batch.depth = depth + 1
        if depth == 0:
            self._batch.owed = self._batch.created = False
        try:
            yield self
        except BaseException:
            self._batch.depth = depth
            if depth == 0 and self._batch.owed:
                with contextlib.suppress(OSError):  # the block's own error is the one to see
                    self._sync(created=self._batch.created)
            raise
        self._batch.depth = depth
        if depth == 0 and self._batch.owed:
            self._sync(created=self._batch.created)

    def _sync(self, *, created: bool) -> None:
        """fsync the journal (any descriptor of a file flushes all of its written data)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.state_dir)

    @property
    def skipped(self) -> int:
        """How many lines the last full read skipped."""
        return len(self.skipped_lines)

    def append(
        self, event: str, *, at: datetime, case: str | None = None, **details: Any
    ) -> dict[str, Any]:
        """Write one entry durably and return it as it will read back.

        `at` is a parameter, not the clock: the shell passes its `now`, so tests and the
        demo's simulated clock write the journal they expect.
        """
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"journal entry {event!r}: naive datetime {at.isoformat()}")
        clash = _RESERVED & details.keys()
        if clash:
            raise ValueError(f"journal entry {event!r}: details may not be named {sorted(clash)}")
        entry = {"at": at, "case": case, "event": event, **details}
        line = json.dumps(entry, default=_encode_default, ensure_ascii=False)
        data = (line + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # The lock makes the torn-line check exact: without it, fstat may see another
            # process's append half-way and add a needless empty line.
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            # An empty file may be one this call created: its directory entry is synced
            # (once more than needed if it was already there, empty).
            created = size == 0
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A crash left half a line; start ours on a fresh line so it stays whole.
                data = b"\n" + data
            written = os.write(fd, data)
            fcntl.flock(fd, fcntl.LOCK_UN)
            if written != len(data):
                raise JournalError(
                    f"{self.path}: wrote {written} of {len(data)} bytes of entry {event!r}"
                )
            if getattr(self._batch, "depth", 0):
                self._batch.owed = True
                self._batch.created = self._batch.created or created
                created = False
            else:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.state_dir)
        result: dict[str, Any] = json.loads(line)
        return result

    def entries(self, case: str | None = None) -> Iterator[dict[str, Any]]:
        """Every entry in order (only those of `case` if given).

        A line that does not parse, normally the last one torn by a kill mid-write, is
        skipped; a full read keeps their numbers in `skipped_lines` once it finishes.
        """
        if case is not None:
            yield from self._entries_of(case)
            return
        skipped: list[int] = []
        try:
            with self.path.open("rb") as journal:
                for lineno, raw in enumerate(journal, start=1):
                    if not raw.strip():
                        continue
                    try:
                        entry = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        skipped.append(lineno)
                        continue
                    if not isinstance(entry, dict) or "event" not in entry:
                        skipped.append(lineno)
                        continue
                    yield entry
        except FileNotFoundError:
            pass
        self.skipped_lines = skipped


    def identity(self) -> str | None:
        """What tells the journal changed without reading it (inode, size, mtime), or
        None when there is none yet: sealing skips a journal that did not change since a
        scan that left nothing to do, instead of indexing years of it at each start."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    def events_by_case(self) -> dict[str, list[str]]:
        """Each case's event names, in order: what deciding which cases to seal needs,
        without reading every entry again."""
        self._refresh_index()
        return {case: [event for _o, _l, event in found] for case, found in self._index.items()}

    def cases_with(self, events: Collection[str]) -> list[str]:
        """The cases that have an entry of one of these `events`, from the index: the
        weekly digest asks which invoices were paid, and parsing every line of a 100k
        first read's journal for that was the peak of its memory."""
        self._refresh_index()
        return [case for case, found in self._index.items()
                if any(event in events for _o, _l, event in found)]

    def _entries_of(self, case: str) -> Iterator[dict[str, Any]]:
        self._refresh_index()
        places = list(self._index.get(case, ()))
        if not places:
            return
        with self.path.open("rb") as journal:
            for offset, length, _event in places:
                journal.seek(offset)
                yield json.loads(journal.read(length))

    def _refresh_index(self) -> None:
        """Extend the per-case index with the lines appended since the last look (whole
        lines only: a line being written is read next time)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._index, self._indexed = {}, (0, 0)
            return
        inode, done = self._indexed
        if stat.st_ino != inode or stat.st_size < done:
            self._index, done = {}, 0  # replaced or cut: read it again
        if stat.st_size > done:
            with self.path.open("rb") as journal:
                journal.seek(done)
                # Line by line: the journal of a first read at 100k messages is tens of
                # MB, and reading it whole was the peak of that pass's memory.
                for raw in journal:
                    if not raw.endswith(b"\n"):
                        break  # a line being written: indexed next time
                    _index_line(self._index, raw, done)
                    done += len(raw)
        self._indexed = (stat.st_ino, done)


def _index_line(index: dict[str, list[tuple[int, int, str]]], raw: bytes, offset: int) -> None:
    """Add one journal line to the per-case index; a torn or foreign line is passed over,
    as a full read passes over it."""
    if not raw.strip():
        return
    try:
        entry = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return
    if isinstance(entry, dict) and isinstance(entry.get("case"), str) and "event" in entry:
        # Event names interned: a few dozen kinds, repeated on every line.
        index.setdefault(entry["case"], []).append(
            (offset, len(raw), sys.intern(str(entry["event"]))))
