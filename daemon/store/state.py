"""The daemon's state on disk: cases, IMAP cursors and send intents, as TinyDB tables.

Why a lock: a pass of the daemon and a `relance paid` typed in a shell must never lose
each other's updates, so every change happens inside a transaction that holds an
exclusive `flock`. Why a log: rewriting the whole state for each change costs its size
(6.8 MB at 10k open cases), so a commit appends one checksummed line holding only the
documents it changed to `state.log` (one write, one fsync), and `state.json`, the
snapshot, is rewritten (temp file, fsync, `os.replace`: FIELD_NOTES measured 1 broken
file in 40 kills of an in-place rewrite) only when the log has grown. A kill at any
instant leaves a last line that fails its checksum: the commit that never happened.
The parsed state stays in memory between transactions while the files are as this
process left them. A send intent is committed before the mail leaves, so a crash between
"sent" and "recorded" is seen on restart and never turns into a second reminder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import tempfile
import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from tinydb.storages import Storage

from relance.core.thread import same_client
from relance.model import OPEN_STATES, Case, CaseState, StepRecord

log = logging.getLogger("relance")

SCHEMA_VERSION = 3
"""The format `state.json` is written in. Bump it with every change an older relance
could misread, and add the step from the previous version to MIGRATIONS."""
LOG_SINCE = 2
"""The first version whose commits go to `state.log`: a relance of version 1 would read
`state.json` alone and forget them, which is why 2 exists (an older relance refuses it)."""
STATE_FILE = "state.json"
LOG_FILE = "state.log"
COMPACT_MIN_BYTES = 1 << 20
"""The log is folded into `state.json` once it passes this or half the snapshot's size."""
_LOG_SEQ = "log_seq"  # in the snapshot's meta: the last commit it holds
COLD_FILE = "closed.jsonl"
"""Settled cases moved out of the hot state (see `ColdFile`)."""
LOCK_FILE = "state.lock"
DAEMON_LOCK_FILE = "daemon.lock"

SEND_STATUSES = frozenset({"intent", "sent", "unknown", "failed"})
"""intent: recorded, not yet handed to SMTP (or the process died around the send);
sent: the server accepted it; unknown: the SMTP exchange ended in the ambiguous window;
failed: the server refused it, so nothing left."""

_CASES, _CURSORS, _SENDS, _META = "cases", "cursors", "sends", "meta"


class StateCorrupt(Exception):
    """The state file exists but cannot be read back; never silently reset.

    Resetting would forget which reminders went out, and the next pass would send them
    again; the owner must move the file aside and let relance rebuild it.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"{self.path}: {reason}; relance will not overwrite it. Stop relance and run "
            f"`relance rebuild`: it rebuilds the state from the journal "
            f"({self.path.parent / 'journal.jsonl'}) and the mailbox, and moves the damaged "
            "files aside."
        )


class StateTooNew(StateCorrupt):
    """The state file was written by a newer relance: reading it could lose what it knows.

    Happens after a downgrade. Nothing is changed; the upgrade left a backup of the file
    as it was before (`state.json.vN.bak`), which this version can read.
    """

    def __init__(self, path: Path | str, found: int, known: int) -> None:
        self.path = Path(path)
        self.found = found
        self.known = known
        self.reason = f"schema version {found} is newer than this relance reads ({known})"
        backup = self.path.with_name(f"{self.path.name}.v{known}.bak")
        Exception.__init__(
            self,
            f"{self.path}: {self.reason}: it was written by a newer relance. Install that "
            f"version again, or stop relance and put back {backup} (the state as it was "
            "before the upgrade).",
        )


class AlreadyRunning(Exception):
    """Another daemon holds the state directory; two would chase the same cases twice."""

    def __init__(self, pid: int | None, lock_path: Path | str | None = None) -> None:
        self.pid = pid
        self.lock_path = None if lock_path is None else Path(lock_path)
        who = f"process {pid}" if pid is not None else "another process"
        where = f"{lock_path}: " if lock_path is not None else ""
        super().__init__(f"{where}relance is already running on this state directory ({who})")


class IntentExists(ValueError):
    """A send intent with this Message-ID is already recorded.

    Message-IDs are deterministic per case and step, so a second intent means the caller
    is about to send the same reminder twice: refuse instead.
    """


# --- storage ---------------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: the new directory entry is only safe once the directory is."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicJSONStorage(Storage):
    """A TinyDB storage whose write leaves either the old file or the new one, whole.

    Writes go to a temp file in the same directory (so `os.replace` is a rename on one
    filesystem), are fsynced, replace the target, and the directory is fsynced.
    """

    def __init__(self, path: str | Path, **dump_kwargs: Any) -> None:
        self.path = Path(path)
        dump_kwargs.setdefault("ensure_ascii", False)
        dump_kwargs.setdefault("separators", (",", ":"))
        self._dump_kwargs = dump_kwargs

    def read(self) -> dict[str, dict[str, Any]] | None:
        """The stored tables, or None for a missing or empty file (a fresh install)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.strip():
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StateCorrupt(
                self.path, f"line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"
            ) from exc
        except UnicodeDecodeError as exc:
            raise StateCorrupt(self.path, f"byte {exc.start}: not UTF-8") from exc
        if not isinstance(data, dict) or not all(
            isinstance(table, dict) for table in data.values()
        ):
            raise StateCorrupt(self.path, "expected an object of tables at the top level")
        return data

    def write(self, data: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the file with `data` atomically and durably.

        Written one document at a time: the whole file as one string (then as bytes) was
        two copies of the state in memory at each compaction, the peak of a first read."""
        if "indent" in self._dump_kwargs:
            self.write_bytes(json.dumps(data, **self._dump_kwargs).encode("utf-8"))
            return
        dumps = functools.partial(json.dumps, **self._dump_kwargs)

        def tables(out: BinaryIO) -> None:
            out.write(b"{")
            for t, (name, table) in enumerate(data.items()):
                out.write(f"{',' if t else ''}{dumps(name)}:{{".encode())
                for d, (doc_id, doc) in enumerate(table.items()):
                    out.write(f"{',' if d else ''}{dumps(str(doc_id))}:{dumps(doc)}".encode())
                out.write(b"}")
            out.write(b"}")

        self._replace(tables)

    def write_bytes(self, encoded: bytes) -> None:
        """Replace the file with `encoded` atomically and durably."""
        self._replace(lambda out: out.write(encoded))

    def _replace(self, fill: Callable[[BinaryIO], object]) -> None:
        """A temp file filled by `fill`, fsynced, renamed over the file, directory synced."""
        directory = self.path.parent
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as tmp:
                fill(tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        fsync_dir(directory)

    def close(self) -> None:
        """Nothing stays open between calls."""


# --- versions and migrations -----------------------------------------------------------


def schema_version(data: Mapping[str, Any], path: Path | str = STATE_FILE) -> int:
    """The format version of stored tables: `meta.schema_version`, 0 for a file from
    before the format carried one, the current version for an empty (new) state."""
    meta = data.get(_META) or {}
    versions = {doc.get("schema_version") for doc in meta.values() if isinstance(doc, dict)}
    versions.discard(None)
    if not versions:
        return 0 if data else SCHEMA_VERSION
    shown = ", ".join(sorted(map(repr, versions)))
    version = versions.pop() if len(versions) == 1 else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise StateCorrupt(path, f"schema version {shown}: expected one whole number")
    return version


def _v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v0, the files of the first builds, before the format carried a version: the same
    tables, some missing when empty. v1 has every table and `meta.schema_version`."""
    for table in (_CASES, _CURSORS, _SENDS):
        data.setdefault(table, {})
    return data


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v2 has the same tables; what changed is that commits after the snapshot live in
    `state.log`, which a v1 relance would not read. Nothing to convert."""
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """v3 may hold a settled case as a stub pointing into `closed.jsonl`, which a v2
    relance would read as a damaged case. A v2 file has no stubs: nothing to convert."""
    return data


Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {0: _v0_to_v1, 1: _v1_to_v2, 2: _v2_to_v3}
"""From version N to N+1: a function of the tables that returns the new tables.
`migrate` chains them and stamps the version; each one is tested on a file of version N."""


def _stamp(data: dict[str, Any], version: int) -> None:
    meta = data.setdefault(_META, {})
    doc = meta.get("1") if isinstance(meta.get("1"), dict) else {}
    meta.clear()
    meta["1"] = {**doc, "schema_version": version}


def migrate(data: dict[str, Any], path: Path | str = STATE_FILE) -> tuple[dict[str, Any], int]:
    """The tables brought to SCHEMA_VERSION, and the version they were in.

    Raises StateTooNew for a file from a newer relance, StateCorrupt when no path leads
    from its version to this one.
    """
    found = schema_version(data, path)
    if found > SCHEMA_VERSION:
        raise StateTooNew(path, found, SCHEMA_VERSION)
    version = found
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StateCorrupt(path, f"schema version {version}: this relance cannot upgrade it")
        try:
            data = step(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateCorrupt(
                path, f"upgrading schema version {version} to {version + 1}: {exc!r}"
            ) from exc
        version += 1
        _stamp(data, version)
    return data, found


# --- values stored besides cases ------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """How far the daemon has read an IMAP folder, so a restart resumes without re-reading.

    A different `uidvalidity` on the server means the UIDs were renumbered and the folder
    must be read again; `highestmodseq` is kept when the server speaks CONDSTORE.
    """

    folder: str
    uidvalidity: int
    last_uid: int
    highestmodseq: int | None = None


@dataclass(frozen=True)
class SendRecord:
    """One reminder the daemon meant to send, and what the SMTP server said about it."""

    message_id: str
    number: str
    step_index: int
    step_name: str
    status: str  # one of SEND_STATUSES
    created_at: datetime
    smtp_reply: str = ""
    recorded_at: datetime | None = None  # when the status last changed


# --- model <-> JSON documents --------------------------------------------------------


def _instant_to_str(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive instant would come back with no offset; after a DST change or a move
        # of the server it would mean another moment. Refuse it at the door.
        raise ValueError(f"naive datetime {value.isoformat()}: instants must carry an offset")
    return value.isoformat()


def _instant_from_str(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return parsed


def _opt_instant_to_str(value: datetime | None) -> str | None:
    return None if value is None else _instant_to_str(value)


def _opt_instant_from_str(value: str | None) -> datetime | None:
    return None if value is None else _instant_from_str(value)


def _opt_date_to_str(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _opt_date_from_str(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _decimal_from_str(value: str) -> Decimal:
    if not isinstance(value, str):
        # A float in the file would already have lost cents; do not guess.
        raise ValueError(f"{value!r} is not a decimal string")
    try:
        return Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a decimal") from exc


def step_to_doc(step: StepRecord) -> dict[str, Any]:
    """A StepRecord as JSON-ready data."""
    return {
        "index": step.index,
        "name": step.name,
        "at": _instant_to_str(step.at),
        "message_id": step.message_id,
        "outcome": step.outcome,
    }


def step_from_doc(doc: Mapping[str, Any]) -> StepRecord:
    """The inverse of step_to_doc."""
    return StepRecord(
        index=int(doc["index"]),
        name=doc["name"],
        at=_instant_from_str(doc["at"]),
        message_id=doc["message_id"],
        outcome=doc["outcome"],
    )


def case_to_doc(case: Case) -> dict[str, Any]:
    """A Case as JSON-ready data: Decimal as string, instants ISO-8601 with offset.

    Money as a string keeps every cent (a JSON number is a float to most readers).
    """
    return {
        "number": case.number,
        "client_addrs": list(case.client_addrs),
        "subject": case.subject,
        "root_message_id": case.root_message_id,
        "root_references": list(case.root_references),
        "client_name": case.client_name,
        "amount": None if case.amount is None else str(case.amount),
        "paid": str(case.paid),
        "credited": str(case.credited),
        "credit_notes": list(case.credit_notes),
        "currency": case.currency,
        "issue_date": _opt_date_to_str(case.issue_date),
        "due_date": _opt_date_to_str(case.due_date),
        "state": CaseState(case.state).value,
        "thread_ids": list(case.thread_ids),
        "steps": [step_to_doc(step) for step in case.steps],
        "last_contact_at": _opt_instant_to_str(case.last_contact_at),
        "paused_until": _opt_instant_to_str(case.paused_until),
        "reason": case.reason,
        "invoice_folder": case.invoice_folder,
        "invoice_uid": case.invoice_uid,
        "language": case.language,
        "opened_at": _opt_instant_to_str(case.opened_at),
        "instalments": [[d.isoformat(), str(a)] for d, a in case.instalments],
    }


_STATES_BY_VALUE = {state.value: state for state in CaseState}


def _state_from_str(value: str) -> CaseState:
    """`CaseState(value)` at a tenth of its cost (the Enum call), with its error."""
    try:
        return _STATES_BY_VALUE[value]
    except (KeyError, TypeError):
        raise ValueError(f"{value!r} is not a valid CaseState") from None


def _steps_from_docs(docs: Iterable[Mapping[str, Any]]) -> tuple[StepRecord, ...]:
    return tuple(step_from_doc(doc) for doc in docs)


def _instalments_from_docs(docs: Iterable[tuple[str, str]]) -> tuple[tuple[date, Decimal], ...]:
    return tuple((date.fromisoformat(day), _decimal_from_str(amount)) for day, amount in docs)


def _opt_decimal_from_str(value: str | None) -> Decimal | None:
    return None if value is None else _decimal_from_str(value)


# How each field of a stored case after the four required ones is read back. Built once:
# a restart decodes every open case.
_CASE_FIELD_READERS: dict[str, Callable[[Any], Any]] = {
    "root_references": tuple,
    "client_name": str,
    "amount": _opt_decimal_from_str,
    "paid": _decimal_from_str,
    "credited": _decimal_from_str,
    "credit_notes": tuple,
    "currency": str,
    "issue_date": _opt_date_from_str,
    "due_date": _opt_date_from_str,
    "state": _state_from_str,
    "thread_ids": tuple,
    "steps": _steps_from_docs,
    "last_contact_at": _opt_instant_from_str,
    "paused_until": _opt_instant_from_str,
    "reason": str,
    "invoice_folder": str,
    "invoice_uid": int,
    "language": str,
    "opened_at": _opt_instant_from_str,
    "instalments": _instalments_from_docs,
}


def case_from_doc(doc: Mapping[str, Any]) -> Case:
    """The inverse of case_to_doc; a field missing from an older file takes its default,
    a key this relance does not know is left alone.

    Raises ValueError naming the case and the field when the document is unusable.
    """
    number = doc.get("number", "?")
    field = "number"
    try:
        fields: dict[str, Any] = {
            "number": number,
            "client_addrs": tuple(doc["client_addrs"]),
            "subject": doc["subject"],
            "root_message_id": doc["root_message_id"],
        }
        for field, value in doc.items():
            read = _CASE_FIELD_READERS.get(field)
            if read is not None:
                fields[field] = read(value)
        return Case.from_fields(fields)
    except KeyError as exc:
        raise ValueError(f"case {number}: field {field}: missing {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"case {number}: field {field}: {exc}") from exc


def _cursor_to_doc(cursor: Cursor) -> dict[str, Any]:
    return {
        "folder": cursor.folder,
        "uidvalidity": cursor.uidvalidity,
        "last_uid": cursor.last_uid,
        "highestmodseq": cursor.highestmodseq,
    }


def _cursor_from_doc(doc: Mapping[str, Any]) -> Cursor:
    return Cursor(
        folder=doc["folder"],
        uidvalidity=int(doc["uidvalidity"]),
        last_uid=int(doc["last_uid"]),
        highestmodseq=None if doc.get("highestmodseq") is None else int(doc["highestmodseq"]),
    )


def _send_from_doc(doc: Mapping[str, Any]) -> SendRecord:
    return SendRecord(
        message_id=doc["message_id"],
        number=doc["number"],
        step_index=int(doc["step_index"]),
        step_name=doc["step_name"],
        status=doc["status"],
        created_at=_instant_from_str(doc["created_at"]),
        smtp_reply=doc.get("smtp_reply", ""),
        recorded_at=_opt_instant_from_str(doc.get("recorded_at")),
    )


# A stored case in memory: its document as read from disk until something first asks for
# it, then the decoded Case in its place. Never both: one representation per case. A
# settled case moved to `closed.jsonl` is a stub: its number, state, thread Message-IDs
# and where its document lies (`_COLD`), decoded from the cold file each time it is read.
CaseEntry = dict[str, Any] | Case
_COLD = "cold"  # in a stub: [offset, length] of the case's line in closed.jsonl
_COLD_IDS = "ids"  # in a stub: the thread's Message-IDs, so a late answer finds its case

COLD_STATES = frozenset({CaseState.PAID, CaseState.STOPPED, CaseState.DONE})
"""States a case may be moved to the cold file in: closed and owing nothing. A case in
formal notice stays hot: it is still owed, and the digest lists it."""


_COLD_VALUES = frozenset(state.value for state in COLD_STATES)


def _is_cold(entry: CaseEntry) -> bool:
    return not isinstance(entry, Case) and _COLD in entry


def _cold_place(stub: Mapping[str, Any]) -> tuple[int, int] | None:
    """(offset, length) of a stub's line, or None when the stub is damaged: checked when
    the case is read, not at load, where 30k stubs made it a tenth of a restart."""
    where = stub.get(_COLD)
    if (isinstance(where, list) and len(where) == 2
            and all(type(n) is int and n >= 0 for n in where)):
        return where[0], where[1]
    return None


def _entry_to_doc(value: Any) -> dict[str, Any]:
    """`json.dumps(default=...)` for the tables: a decoded case is written as its document."""
    if isinstance(value, Case):
        return case_to_doc(value)
    raise TypeError(f"cannot write {type(value).__name__} to the state")


def _case_message_ids(entry: CaseEntry) -> list[str]:
    """Every Message-ID that belongs to a case's thread: the invoice, the thread, our steps.

    The invoice's own References are left out: they name earlier mail (a quote, another
    invoice) that is not this case's.
    """
    if isinstance(entry, Case):
        ids = [entry.root_message_id, *entry.thread_ids,
               *(step.message_id for step in entry.steps)]
    elif _is_cold(entry):
        return list(entry[_COLD_IDS])  # deduplicated when the stub was made
    else:
        ids = [entry["root_message_id"], *entry.get("thread_ids", ()),
               *(step["message_id"] for step in entry.get("steps", ()))]
    return list(dict.fromkeys(i for i in ids if i))


def _address_keys(entry: CaseEntry) -> list[str]:
    """Each client address of a case, and "@domain" for each, for `open_cases_of`; none
    for a cold case, which is closed."""
    keys: list[str] = []
    if _is_cold(entry):
        return keys
    addresses = (entry.client_addrs if isinstance(entry, Case)
                 else entry.get("client_addrs", ()))
    for address in addresses:
        keys.extend((address, "@" + address.rpartition("@")[2]))
    return list(dict.fromkeys(keys))


# --- snapshots in memory ---------------------------------------------------------------

Index = dict[str, tuple[str, ...]]
# One Message-ID index serves both the thread lookups of a batch (`index`) and
# `find_cases_by_message_id`: a second index of the same ids was 6 MB at 100k messages.
_INDEXES: tuple[tuple[str, Callable[[CaseEntry], list[str]]], ...] = (
    ("thread_index", _case_message_ids),
    ("by_address", _address_keys),
)


class _Snapshot:
    """One committed state in memory: the tables as TinyDB documents and their indexes.

    Shared by every view and transaction that starts from it, so it is never changed once
    built, except that a case's document is replaced by the decoded Case the first time it
    is read (the same value, in the form the daemon uses: a first read of 100k messages
    held 15k cases twice, as documents and as Cases). A transaction forks it and copies a
    dict the first time it writes to it.

    The Message-ID and address indexes are built the first time something asks for them:
    only new mail does, and a restart on an unchanged mailbox never does (building them
    was a sixth of a restart at 10k open cases). A case write asks for them before it
    changes the table, so an index built late is built from the same table an eager one
    was, and then kept current the same way.
    """

    __slots__ = (
        "_by_address",
        "_thread_index",
        "case_ids",
        "cursor_ids",
        "found",
        "next_ids",
        "path",
        "send_ids",
        "tables",
    )

    tables: dict[str, dict[str, dict[str, Any]]]
    case_ids: dict[str, int]
    cursor_ids: dict[str, int]
    send_ids: dict[str, int]
    next_ids: dict[str, int]
    path: Path
    # `cases_in`'s answers for this snapshot, by the states asked (a pass asks for the
    # open cases three times); a transaction starts its own and empties it at each write.
    found: dict[frozenset[CaseState], dict[str, Case]]
    _thread_index: Index | None
    _by_address: Index | None

    def fork(self) -> _Snapshot:
        """A new snapshot sharing every dict with this one (for copy-on-write)."""
        twin = _Snapshot.__new__(_Snapshot)
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.found = {}
        return twin

    @property
    def thread_index(self) -> Index:
        """Message-ID → numbers of the cases whose thread holds it."""
        if self._thread_index is None:
            self._build_indexes()
        assert self._thread_index is not None
        return self._thread_index

    @thread_index.setter
    def thread_index(self, index: Index) -> None:
        self._thread_index = index

    @property
    def by_address(self) -> Index:
        """A client address, or "@domain" → numbers of the cases that list it."""
        if self._by_address is None:
            self._build_indexes()
        assert self._by_address is not None
        return self._by_address

    @by_address.setter
    def by_address(self, index: Index) -> None:
        self._by_address = index

    def _build_indexes(self) -> None:
        lists: dict[str, dict[str, list[str]]] = {name: {} for name, _ in _INDEXES}
        try:
            for entry in self.tables.get(_CASES, {}).values():
                number = entry.number if isinstance(entry, Case) else entry["number"]
                for name, keys_of in _INDEXES:
                    index = lists[name]
                    for key in keys_of(entry):
                        index.setdefault(key, []).append(number)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateCorrupt(self.path, f"a case's thread or addresses are malformed "
                                          f"({exc!r})") from exc
        for name, _ in _INDEXES:
            setattr(self, name, {key: tuple(numbers) for key, numbers in lists[name].items()})


def _next_id(table: Mapping[str, Any]) -> int:
    """TinyDB's rule for a new document id: one more than the largest."""
    return max((int(doc_id) for doc_id in table), default=0) + 1


def build_snapshot(data: dict[str, dict[str, Any]], path: Path) -> _Snapshot:
    """Index tables already brought to SCHEMA_VERSION; StateCorrupt when they cannot be."""
    version = schema_version(data, path)
    if version > SCHEMA_VERSION:
        raise StateTooNew(path, version, SCHEMA_VERSION)
    if data.get(_META) and version != SCHEMA_VERSION:
        raise StateCorrupt(
            path,
            f"schema version {version}, this relance reads version {SCHEMA_VERSION}; "
            "the store upgrades files before reading them",
        )
    snap = _Snapshot.__new__(_Snapshot)
    snap.tables = data
    snap.path = path
    snap._thread_index = snap._by_address = None  # built when first asked for
    snap.found = {}
    snap.case_ids, snap.cursor_ids, snap.send_ids = {}, {}, {}
    try:
        for doc_id, doc in data.get(_CASES, {}).items():
            number = doc["number"]
            if number in snap.case_ids:
                raise StateCorrupt(path, f"case {number} is stored twice")
            snap.case_ids[number] = int(doc_id)
        for doc_id, doc in data.get(_CURSORS, {}).items():
            snap.cursor_ids[doc["folder"]] = int(doc_id)
        for doc_id, doc in data.get(_SENDS, {}).items():
            snap.send_ids[doc["message_id"]] = int(doc_id)
        snap.next_ids = {name: _next_id(table) for name, table in data.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateCorrupt(path, f"a document lacks its key or is malformed ({exc!r})") from exc
    return snap


# --- views -----------------------------------------------------------------------------


class StateView:
    """Read access to one consistent snapshot of the state.

    The snapshot is shared with the store's cache and never changes under the view: a
    transaction committed later makes a new one. The indexes make a lookup by number,
    folder or Message-ID a dict access instead of a table scan.
    """

    def __init__(self, path: Path, snapshot: _Snapshot, identity: str | None = None) -> None:
        self._path = path
        self._s = snapshot
        self.identity = identity
        """Which committed state this is, as files and commit number: equal identities
        are the same state (None in a transaction, which is not committed yet)."""
        self._cold = ColdFile(path.with_name(COLD_FILE))

    def _corrupt(self, reason: str) -> StateCorrupt:
        return StateCorrupt(self._path, reason)

    def _case_entry(self, number: str) -> CaseEntry | None:
        doc_id = self._s.case_ids.get(number)
        return None if doc_id is None else self._s.tables[_CASES][str(doc_id)]

    def _decoded(self, doc_id: int, entry: CaseEntry) -> Case:
        """The Case of a table entry, decoded once: the document is replaced by it for as
        long as the cached snapshot lives (the value is the same, so views sharing the
        table see no change)."""
        if isinstance(entry, Case):
            return entry
        if _is_cold(entry):
            place = self._cold_stub_place(entry)
            return self._cold_case(entry, self._cold.read(*place))
        try:
            case = case_from_doc(entry)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from exc
        self._s.tables[_CASES][str(doc_id)] = case
        return case

    def _cold_stub_place(self, stub: Mapping[str, Any]) -> tuple[int, int]:
        place = _cold_place(stub)
        if place is None:
            raise self._corrupt(f"case {stub.get('number')}: its stub for {COLD_FILE} is "
                                f"damaged ({_COLD}: {stub.get(_COLD)!r})")
        return place

    def _cold_case(self, stub: Mapping[str, Any], line: bytes) -> Case:
        """The Case a stub's line in the cold file holds. Not kept in memory: the stub
        stays in the table (it is what the state writes), and cold cases are read rarely
        (`status --all`, a late answer, a payment of an old invoice)."""
        number = stub.get("number")
        where = f"{self._cold.path} at byte {stub[_COLD][0]}"
        decoded = _decode_log_line(line.rstrip(b"\n"))
        doc = None if decoded is None else decoded[1].get(_CASES, {}).get(number)
        if doc is None:
            raise StateCorrupt(self._cold.path, f"case {number}: its line at byte "
                               f"{stub[_COLD][0]} is missing or damaged")
        try:
            return case_from_doc(doc)
        except ValueError as exc:
            raise StateCorrupt(self._cold.path, f"{where}: {exc}") from exc

    def get_case(self, number: str) -> Case | None:
        """The case for an invoice number, or None."""
        doc_id = self._s.case_ids.get(number)
        if doc_id is None:
            return None
        return self._decoded(doc_id, self._s.tables[_CASES][str(doc_id)])

    def cases_in(self, states: Collection[CaseState]) -> dict[str, Case]:
        """The cases in one of `states` by number, in the order they were first stored,
        decoding only those: a pass asks for the open ones, and years of closed cases are
        left as they are stored (decoding 10k of them cost a restart 0.44 s)."""
        key = frozenset(states)
        found = self._s.found.get(key)
        if found is None:
            wanted = {state.value for state in key}
            found = self._decoded_where(lambda _entry, state: state in wanted)
            if not key & COLD_STATES:  # cold cases are read from their file each time
                self._s.found[key] = found
        return dict(found)

    def open_states(self) -> list[CaseState]:
        """The state of each open case, read without decoding any (the status line's
        counts, at a restart that decodes nothing)."""
        table = self._s.tables.get(_CASES, {})
        states = []
        for doc_id in self._s.case_ids.values():
            value = _state_of(table[str(doc_id)])
            if value in _OPEN_VALUES:
                states.append(_STATES_BY_VALUE[value])
        return states

    def closed_cases_since(self, instant: datetime) -> dict[str, Case]:
        """The cases not in OPEN_STATES with a step or a contact at or after `instant`,
        decoding only those: the per-client gap still counts a reminder of last week
        about an invoice paid since."""
        open_values = {state.value for state in OPEN_STATES}
        return self._decoded_where(lambda entry, state: state not in open_values
                                   and _touched_since(entry, instant))

    def _decoded_where(self, keep: Callable[[CaseEntry, str], bool]) -> dict[str, Case]:
        """The cases `keep(entry, stored state)` accepts, decoded, in stored order; one
        whose stored state is unknown is decoded too, so the damage is reported."""
        table = self._s.tables.get(_CASES, {})
        found: dict[str, Case] = {}
        cold: bytes | None = None
        for number, doc_id in self._s.case_ids.items():
            entry = table[str(doc_id)]
            state = _state_of(entry)
            if state in _KNOWN_STATES and not keep(entry, state):
                continue
            if _is_cold(entry):
                if cold is None:  # `status --all`: one read of the cold file, not one each
                    cold = self._cold.contents()
                offset, length = self._cold_stub_place(entry)
                found[number] = self._cold_case(entry, cold[offset:offset + length])
            else:
                found[number] = self._decoded(doc_id, entry)
        return found

    def settled_numbers(self, quiet_since: datetime) -> list[str]:
        """The hot cases in COLD_STATES with no step and no contact since `quiet_since`,
        without decoding any: what may move to the cold file once the journal says their
        evidence is sealed."""
        wanted = {state.value for state in COLD_STATES}
        table = self._s.tables.get(_CASES, {})
        found = []
        for number, doc_id in self._s.case_ids.items():
            entry = table[str(doc_id)]
            if (not _is_cold(entry) and _state_of(entry) in wanted
                    and not _touched_since(entry, quiet_since)):
                found.append(number)
        return found

    def cold_count(self) -> int:
        """How many cases live in the cold file."""
        table = self._s.tables.get(_CASES, {})
        return sum(1 for entry in table.values() if _is_cold(entry))

    def any_case_in(self, states: Collection[CaseState]) -> bool:
        """Whether some case is in one of `states`, without decoding any."""
        wanted = {state.value for state in states}
        table = self._s.tables.get(_CASES, {})
        return any(_state_of(entry) in wanted for entry in table.values())

    def case_map(self) -> Mapping[str, Case]:
        """Every case by number, each decoded only when it is looked up."""
        return _CaseMap(self)

    def cases(self) -> dict[str, Case]:
        """Every stored case by invoice number, in the order they were first stored (a new
        dict the caller may change)."""
        return self._decoded_where(lambda _entry, _state: True)

    def find_cases_by_message_id(self, message_id: str) -> list[Case]:
        """All cases whose thread holds this Message-ID (one mail may carry two invoices)."""
        return [c for n in self._s.thread_index.get(message_id, ()) if (c := self.get_case(n))]

    def find_case_by_message_id(self, message_id: str) -> Case | None:
        """The first stored case whose thread holds this Message-ID, or None."""
        found = self.find_cases_by_message_id(message_id)
        return found[0] if found else None

    def thread_index(self) -> Mapping[str, tuple[str, ...]]:
        """Message-ID → case numbers, as `core.thread.thread_index` would build it from
        every case (the invoice, the thread, our steps), kept up to date, not rebuilt."""
        return MappingProxyType(self._s.thread_index)

    @property
    def index(self) -> Mapping[str, tuple[str, ...]]:
        """`thread_index()` that stays current through this transaction's own writes (a
        write copies the index, so a mapping taken earlier would go stale): what
        `core.thread.cases_for` reads while a batch of messages is decided."""
        return _LiveThreadIndex(self)

    def open_cases_of(self, address: str) -> list[Case]:
        """The open cases of the client writing from `address` (see `same_client`),
        decoding only those the address index names."""
        found = (self.get_case(n) for n in self.case_numbers_for_address(address))
        return [c for c in found if c is not None
                and c.state in OPEN_STATES and same_client(address, c.client_addrs)]

    def case_numbers_for_address(self, address: str) -> tuple[str, ...]:
        """Numbers of the cases that list `address`, or an address of its domain, as a
        client address (a superset of `same_client`; the caller filters), in the order
        the cases were stored."""
        domain_key = "@" + address.rpartition("@")[2]
        found = self._s.by_address.get(address, ()) + self._s.by_address.get(domain_key, ())
        return tuple(sorted(set(found), key=self._s.case_ids.__getitem__))

    def cursor(self, folder: str) -> Cursor | None:
        """Where reading of an IMAP folder stopped, or None if it was never read."""
        doc_id = self._s.cursor_ids.get(folder)
        if doc_id is None:
            return None
        return _cursor_from_doc(self._s.tables[_CURSORS][str(doc_id)])

    def send(self, message_id: str) -> SendRecord | None:
        """The send record for one Message-ID, or None."""
        doc_id = self._s.send_ids.get(message_id)
        if doc_id is None:
            return None
        return _send_from_doc(self._s.tables[_SENDS][str(doc_id)])

    def meta(self, key: str) -> Any:
        """A fact kept with `Transaction.set_meta`, or None."""
        doc = self._s.tables.get(_META, {}).get("1")
        return None if doc is None else doc.get(key)

    def sends(self, status: str | None = None) -> list[SendRecord]:
        """Send records in the order their intents were made, optionally of one status."""
        if status is not None and status not in SEND_STATUSES:
            raise ValueError(f"unknown send status {status!r}; expected one of {_statuses()}")
        try:
            return [
                _send_from_doc(doc)
                for doc in self._s.tables.get(_SENDS, {}).values()
                if status is None or doc["status"] == status
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(f"a send record is damaged ({type(exc).__name__}: {exc})") from exc


def _statuses() -> str:
    return ", ".join(sorted(SEND_STATUSES))


def _reindex(index: Index, number: str, old: list[str], new: list[str]) -> None:
    """Move `number` from the keys `old` to the keys `new`, in place; a key in both keeps
    its position (the order cases were filed in is the order lookups return them)."""
    new_set = set(new)
    for key in old:
        if key not in new_set:
            left = tuple(n for n in index.get(key, ()) if n != number)
            if left:
                index[key] = left
            else:
                index.pop(key, None)
    for key in new:
        known = index.get(key, ())
        if number not in known:
            index[key] = (*known, number)


_KNOWN_STATES = frozenset(state.value for state in CaseState)
_OPEN_VALUES = frozenset(state.value for state in OPEN_STATES)


def _state_of(entry: CaseEntry) -> str:
    """A stored case's state as stored, read without decoding the case."""
    if isinstance(entry, Case):
        state = entry.state
        return state.value if type(state) is CaseState else CaseState(state).value
    return str(entry.get("state", CaseState.CHASING.value))


def _touched_since(entry: CaseEntry, instant: datetime) -> bool:
    """Whether a stored case has a step or a contact at or after `instant`. A document
    whose instants do not read says yes: decoding it then reports the damage. A cold case
    says no: it went cold untouched for longer than any window a pass looks back over."""
    if _is_cold(entry):
        return False
    if isinstance(entry, Case):
        moments = [step.at for step in entry.steps]
        if entry.last_contact_at is not None:
            moments.append(entry.last_contact_at)
        return any(moment >= instant for moment in moments)
    try:
        texts = [step["at"] for step in entry.get("steps", ())]
        if entry.get("last_contact_at"):
            texts.append(entry["last_contact_at"])
        return any(_instant_from_str(text) >= instant for text in texts)
    except (KeyError, TypeError, ValueError):
        return True


class _CaseMap(Mapping[str, Case]):
    """Number → Case over a view, decoding a case only when it is asked for."""

    def __init__(self, view: StateView) -> None:
        self._view = view

    def __getitem__(self, number: str) -> Case:
        case = self._view.get_case(number)
        if case is None:
            raise KeyError(number)
        return case

    def __contains__(self, number: object) -> bool:
        return number in self._view._s.case_ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._view._s.case_ids)

    def __len__(self) -> int:
        return len(self._view._s.case_ids)


class _LiveThreadIndex(Mapping[str, tuple[str, ...]]):
    """Message-ID → case numbers of a view, always as of now."""

    def __init__(self, view: StateView) -> None:
        self._view = view

    def __getitem__(self, message_id: str) -> tuple[str, ...]:
        return self._view.thread_index()[message_id]

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._view.thread_index()

    def __iter__(self) -> Iterator[str]:
        return iter(self._view.thread_index())

    def __len__(self) -> int:
        return len(self._view.thread_index())


class Transaction(StateView):
    """A StateView that also records changes; StateStore commits them in one write.

    Writes go into this transaction's own copies of the dicts it touches (copied on first
    write), never into the snapshot it started from: views of that snapshot, and the
    store's cache if this transaction raises, stay exactly as they were.
    """

    def __init__(self, path: Path, base: _Snapshot) -> None:
        super().__init__(path, base.fork())
        self._owned: set[str] = set()
        self._dirty: dict[str, dict[str, None]] = {}
        self._closed = False

    @property
    def changed(self) -> bool:
        """Whether anything was written to the tables in this transaction."""
        return bool(self._dirty)

    def _own(self, name: str) -> Any:
        """This transaction's copy of one of the snapshot's dicts, made on first write."""
        if self._closed:
            raise RuntimeError(f"{self._path}: this transaction is over; open a new one")
        if name not in self._owned:
            setattr(self._s, name, dict(getattr(self._s, name)))
            self._owned.add(name)
        return getattr(self._s, name)

    def _write_doc(self, table: str, doc_id: int, doc: dict[str, Any] | Case) -> None:
        """Put one whole document: O(1), and remembered for the commit's log line."""
        tables = self._own("tables")
        key = f"table:{table}"
        if key not in self._owned:
            tables[table] = dict(tables.get(table, {}))
            self._owned.add(key)
        tables[table][str(doc_id)] = doc
        self._dirty.setdefault(table, {})[str(doc_id)] = None
        if table == _CASES:
            self._s.found.clear()

    def _new_id(self, table: str) -> int:
        next_ids = self._own("next_ids")
        doc_id: int = next_ids.get(table, 1)
        next_ids[table] = doc_id + 1
        return doc_id

    def put_case(self, case: Case) -> None:
        """Insert or replace the case stored under `case.number`; a no-op if unchanged."""
        old = self._case_entry(case.number)
        if old is not None and _is_cold(old):
            # A cold case changed (a late answer, a payment of an old invoice) is hot
            # again; its line in the cold file is left behind, no stub points to it.
            if self.get_case(case.number) == case:
                return
        elif old is not None and (old == case if isinstance(old, Case)
                                  else old == case_to_doc(case)):
            return
        doc_id = self._s.case_ids.get(case.number)
        if doc_id is None:
            doc_id = self._new_id(_CASES)
            self._own("case_ids")[case.number] = doc_id
        for name, keys_of in _INDEXES:
            _reindex(self._own(name), case.number, [] if old is None else keys_of(old),
                     keys_of(case))
        self._write_doc(_CASES, doc_id, case)

    def _put_cold_stub(self, number: str, stub: dict[str, Any]) -> None:
        """Replace a hot case by its stub (its document is in the cold file already); the
        thread's Message-IDs stay indexed, its addresses do not (it is closed)."""
        doc_id = self._s.case_ids[number]
        old = self._s.tables[_CASES][str(doc_id)]
        for name, keys_of in _INDEXES:
            _reindex(self._own(name), number, keys_of(old), keys_of(stub))
        self._write_doc(_CASES, doc_id, stub)

    def set_cursor(self, cursor: Cursor) -> None:
        """Insert or replace the cursor of `cursor.folder`."""
        doc = _cursor_to_doc(cursor)
        doc_id = self._s.cursor_ids.get(cursor.folder)
        if doc_id is None:
            doc_id = self._new_id(_CURSORS)
            self._own("cursor_ids")[cursor.folder] = doc_id
        elif self._s.tables[_CURSORS][str(doc_id)] == doc:
            return
        self._write_doc(_CURSORS, doc_id, doc)

    def _put_send(self, record: SendRecord) -> None:
        doc_id = self._s.send_ids.get(record.message_id)
        if doc_id is None:
            doc_id = self._new_id(_SENDS)
            self._own("send_ids")[record.message_id] = doc_id
        self._write_doc(_SENDS, doc_id, _send_to_doc(record))

    def send_intent(
        self, message_id: str, number: str, step_index: int, step_name: str, at: datetime
    ) -> SendRecord:
        """Record that a reminder with this Message-ID is about to be sent.

        Commit this transaction before handing the mail to SMTP: the intent on disk is
        what tells a restarted daemon to look in Sent instead of sending again.
        """
        existing = self.send(message_id)
        if existing is not None:
            raise IntentExists(
                f"send {message_id} (case {existing.number}, step {existing.step_index}) "
                f"is already recorded as {existing.status!r}"
            )
        record = SendRecord(
            message_id=message_id,
            number=number,
            step_index=step_index,
            step_name=step_name,
            status="intent",
            created_at=at,
            recorded_at=at,
        )
        self._put_send(record)
        return record

    def send_result(
        self, message_id: str, status: str, smtp_reply: str = "", *, at: datetime
    ) -> SendRecord:
        """Record what became of a send: "sent", "unknown" or "failed".

        A "sent" record is never changed again: downgrading it could let a later pass
        send the same reminder a second time.
        """
        if status not in SEND_STATUSES - {"intent"}:
            raise ValueError(
                f"send {message_id}: status {status!r}; expected sent, unknown or failed"
            )
        existing = self.send(message_id)
        if existing is None:
            raise KeyError(f"send {message_id}: no intent recorded for this Message-ID")
        if existing.status == "sent" and status != "sent":
            raise ValueError(f"send {message_id}: already sent, cannot become {status!r}")
        record = replace(existing, status=status, smtp_reply=smtp_reply, recorded_at=at)
        self._put_send(record)
        return record

    def set_meta(self, key: str, value: str | int | None) -> None:
        """Keep one small fact about the daemon itself (e.g. when the digest last went)."""
        if key in ("schema_version", _LOG_SEQ):
            raise ValueError(f"{key} is set by the store only")
        doc = self._s.tables.get(_META, {}).get("1") or {"schema_version": SCHEMA_VERSION}
        if key not in doc or doc[key] != value:
            self._write_doc(_META, 1, {**doc, key: value})

    def retry_intent(self, message_id: str, *, at: datetime) -> SendRecord:
        """Turn a "failed" send (the server certainly refused it) back into an intent
        before trying again, so a crash during the retry is resolved like any other."""
        existing = self.send(message_id)
        if existing is None or existing.status != "failed":
            raise ValueError(
                f"send {message_id}: only a failed send can be retried, "
                f"not {existing.status if existing else 'a missing one'!r}"
            )
        record = replace(existing, status="intent", recorded_at=at)
        self._put_send(record)
        return record

    def _changes(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The documents this transaction wrote, whole, stamped with the schema version
        on the state's first write: what one log line carries."""
        if "1" not in self._s.tables.get(_META, {}):
            self._write_doc(_META, 1, {"schema_version": SCHEMA_VERSION})
        tables = self._s.tables
        return {table: {doc_id: tables[table][doc_id] for doc_id in ids}
                for table, ids in self._dirty.items()}

    def _close(self) -> _Snapshot:
        """End the transaction: its snapshot becomes shared, so no write may follow."""
        self._closed = True
        return self._s


def _send_to_doc(record: SendRecord) -> dict[str, Any]:
    return {
        "message_id": record.message_id,
        "number": record.number,
        "step_index": record.step_index,
        "step_name": record.step_name,
        "status": record.status,
        "created_at": _instant_to_str(record.created_at),
        "smtp_reply": record.smtp_reply,
        "recorded_at": _opt_instant_to_str(record.recorded_at),
    }


# --- the log of commits ----------------------------------------------------------------

FileId = tuple[int, int, int, int] | None
"""What tells a file changed without reading it: inode, size, mtime and ctime (ns)."""


def file_id(path: Path) -> FileId:
    """The identity of `path` now, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _fd_id(fd: int) -> FileId:
    st = os.fstat(fd)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class LogRead:
    """What replaying `state.log` found."""

    changes: list[dict[str, dict[str, Any]]]  # the lines after the snapshot's, in order
    last_seq: int  # the seq of the last commit, in the snapshot or the log
    valid_end: int  # bytes up to the end of the last whole, valid line
    size: int  # the file's size (more than valid_end when a torn line ends it)


def encode_log_line(seq: int, changes: Mapping[str, Any]) -> bytes:
    """`CRC32<TAB>SEQ<TAB>JSON\\n`: the checksum covers the seq and the documents, so a
    line half on disk after a crash is told from a whole one."""
    text = json.dumps(changes, ensure_ascii=False, separators=(",", ":"), default=_entry_to_doc)
    body = f"{seq}\t{text}"
    encoded = body.encode("utf-8")
    return b"%08x\t%s\n" % (zlib.crc32(encoded), encoded)


def _decode_log_line(line: bytes) -> tuple[int, dict[str, dict[str, Any]]] | None:
    """(seq, changed documents) of one line, or None when it is not whole and valid."""
    crc, sep, body = line.partition(b"\t")
    if not sep or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        seq_text, _, payload = body.partition(b"\t")
        seq = int(seq_text)
        changes = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(changes, dict) or not all(
        isinstance(docs, dict) and all(isinstance(d, dict) or d is None for d in docs.values())
        for docs in changes.values()
    ):
        return None
    return seq, changes


class StateLog:
    """`state.log`: one line per commit since the last snapshot, holding the documents
    that commit changed. Appending one line and one fsync is what makes a commit cheap
    at any size of state; a crash mid-append leaves a last line that fails its checksum,
    which is the commit that never happened."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, after_seq: int) -> LogRead:
        """The commits after `after_seq` (the snapshot's stamp).

        Raises StateCorrupt naming the line when a damaged line has valid lines after it
        (that is not a torn append but a broken file) or when a commit is missing.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return LogRead([], after_seq, 0, 0)
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        changes: list[dict[str, dict[str, Any]]] = []
        last_seq, offset, valid_end = after_seq, 0, 0
        for lineno, line in enumerate(complete, start=1):
            offset += len(line) + 1
            decoded = _decode_log_line(line)
            if decoded is None:
                if lineno == len(complete) and not tail:
                    break  # the last line, torn: a commit that never finished
                raise StateCorrupt(
                    self.path, f"line {lineno}: damaged (bad checksum or framing) and "
                    "followed by later commits")
            seq, docs = decoded
            if seq > after_seq:
                if seq != last_seq + 1:
                    raise StateCorrupt(
                        self.path, f"line {lineno}: commit {seq} follows commit {last_seq}; "
                        "the commits between are missing")
                changes.append(docs)
                last_seq = seq
            valid_end = offset
        return LogRead(changes, last_seq, valid_end, len(raw))

    def append(self, seq: int, changes: Mapping[str, Any], valid_end: int) -> FileId:
        """Write one commit durably: cut a torn tail first, then one `os.write` on an
        O_APPEND descriptor and one fsync. On failure the line is cut away again, so a
        commit that raised is not on disk. Returns the file's identity after the write."""
        line = encode_log_line(seq, changes)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size > valid_end:
                os.ftruncate(fd, valid_end)  # a killed writer's half line
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, f"{self.path}: wrote {written} of "
                                  f"{len(line)} bytes", str(self.path))
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, valid_end)
                raise
            identity = _fd_id(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        return identity

    def truncate(self) -> FileId:
        """Empty the log once a snapshot holds all of it."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
            return _fd_id(fd)
        finally:
            os.close(fd)


# --- the cold file ---------------------------------------------------------------------


class ColdFile:
    """`closed.jsonl`: settled cases, one checksummed line each, appended, never rewritten.

    Why: years of paid invoices kept whole in `state.json` made every restart parse and
    index them (10k closed cases took a restart from 0.43 to 0.94 s and 176 MB). Once a
    case is settled and its evidence sealed, the hot state keeps a stub (number, state,
    the thread's Message-IDs, where its line is) and the document lives here, read only
    when asked for. A line is written and fsynced before the commit that puts its stub in
    the state: a kill between the two leaves a line no stub points to, never a stub
    without its line. A case that changes again is hot again; its old line stays, unused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, offset: int, length: int) -> bytes:
        """The bytes of one line (empty when the file is missing)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def contents(self) -> bytes:
        """The whole file (empty when missing): one read when many cold cases are asked."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def append(self, docs: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, int]]:
        """Write one line per (number, document), durably, in one write and one fsync;
        returns each line's (offset, length). On failure the file is cut back to where it
        was, so nothing of a failed append is left to point to."""
        lines = [encode_log_line(0, {_CASES: {number: doc}}) for number, doc in docs]
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            start = os.fstat(fd).st_size
            # A killed writer's half line is ended here: no stub points to it.
            lead = b"\n" if start and os.pread(fd, 1, start - 1) != b"\n" else b""
            placed, offset = [], start + len(lead)
            for line in lines:
                placed.append((offset, len(line)))
                offset += len(line)
            try:
                data = memoryview(lead + b"".join(lines))
                while data:
                    written = os.write(fd, data)
                    if not written:
                        raise OSError(errno.ENOSPC, f"{self.path}: no room to append",
                                      str(self.path))
                    data = data[written:]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        return placed


# --- the store -------------------------------------------------------------------------

_held = threading.local()


def _held_locks() -> set[str]:
    locks: set[str] | None = getattr(_held, "paths", None)
    if locks is None:
        locks = _held.paths = set()
    return locks


@dataclass(frozen=True)
class _Cached:
    """The state as this process last read or wrote it, and how the files looked then."""

    snapshot: _Snapshot
    files: tuple[FileId, FileId]  # state.json, state.log
    seq: int  # the last commit's seq
    log_end: int  # where the next log line goes (a torn tail beyond it is cut first)
    snapshot_size: int


class StateStore:
    """The state directory: `state.json` and `state.log`, their lock, and the daemon's
    single-instance lock.

    The parsed state is kept in memory between transactions and reused while the files
    are as this process left them (checked with one stat each, under the lock), so a pass
    made of many small transactions reads the files once.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / STATE_FILE
        self.log_path = self.state_dir / LOG_FILE
        self.lock_path = self.state_dir / LOCK_FILE
        self.daemon_lock_path = self.state_dir / DAEMON_LOCK_FILE
        self._storage = AtomicJSONStorage(self.path, default=_entry_to_doc)
        self._log = StateLog(self.log_path)
        self._cold = ColdFile(self.state_dir / COLD_FILE)
        self._cache: _Cached | None = None
        self._swept_temps = False

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        """Hold `state.lock`; refuse nesting, which would wait on itself forever."""
        key = str(self.lock_path.resolve())
        held = _held_locks()
        if key in held:
            raise RuntimeError(
                f"{self.state_dir}: a transaction or reading is already open in this thread; "
                "nesting them would deadlock on the file lock"
            )
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        held.add(key)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            held.discard(key)
            os.close(fd)  # closing the descriptor releases the lock

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Read, change and write the state as one step, exclusive of other processes.

        Commits once at exit if anything changed (one log line); an exception writes
        nothing and leaves the cache as it was.
        """
        with self._flock(fcntl.LOCK_EX):
            if not self._swept_temps:
                self._sweep_temps()
            cached, _found = self._current(upgrade=True)
            tx = Transaction(self.path, cached.snapshot)
            yield tx
            if tx.changed:
                self._commit(cached, tx)

    @contextlib.contextmanager
    def reading(self) -> Iterator[StateView]:
        """A read-only snapshot, read under a shared lock.

        The lock is released once the state is read: the view is in memory, so a long
        `relance status` never holds up the daemon's next pass, and later commits make a
        new snapshot instead of changing this one.
        """
        with self._flock(fcntl.LOCK_SH):
            cached, _found = self._current(upgrade=False)
        yield StateView(self.path, cached.snapshot, f"{cached.files}#{cached.seq}")

    def move_cold(self, numbers: Iterable[str], batch: int = 2000) -> list[str]:
        """Move these cases to the cold file, those that are hot and in COLD_STATES (the
        caller checked that their evidence is sealed and nothing happened lately); the
        numbers moved. Each batch: its lines appended and fsynced, then one commit of
        their stubs."""
        moved: list[str] = []
        moved_bytes = 0
        pending = list(dict.fromkeys(numbers))
        for start in range(0, len(pending), batch):
            with self.transaction() as tx:
                docs = []
                for number in pending[start:start + batch]:
                    entry = tx._case_entry(number)
                    if entry is None or _is_cold(entry) or _state_of(entry) not in _COLD_VALUES:
                        continue
                    case = tx.get_case(number)  # a damaged document is reported, not moved
                    assert case is not None
                    docs.append((number, case_to_doc(case)))
                if not docs:
                    continue
                placed = self._cold.append(docs)
                for (number, doc), (offset, length) in zip(docs, placed, strict=True):
                    tx._put_cold_stub(number, {
                        "number": number, "state": doc["state"], _COLD: [offset, length],
                        _COLD_IDS: _case_message_ids(doc)})
                    moved_bytes += length
            moved.extend(number for number, _doc in docs)
        cached = self._cache
        if cached is not None and moved_bytes > cached.snapshot_size // 4:
            # The stubs are in the log, the whole documents still in `state.json`: the next
            # start would read both. Fold them now that it pays (a quarter of the snapshot).
            try:
                self.compact()
            except OSError as exc:
                log.warning("event=state-compaction-failed file=%s reason=%s", self.path, exc)
        return moved

    def upgrade(self) -> int | None:
        """Bring the state to the current format now; the version it had, or None
        when it was current. The daemon calls it at start so the upgrade is logged once."""
        with self._flock(fcntl.LOCK_EX):
            _cached, found = self._current(upgrade=True)
        return None if found == SCHEMA_VERSION else found

    def compact(self) -> None:
        """Fold `state.log` into `state.json` now (commits do it when the log grows)."""
        with self._flock(fcntl.LOCK_EX):
            cached, _found = self._current(upgrade=True)
            if cached.log_end or file_id(self.log_path):
                self._cache = self._compacted(cached, cached.snapshot)

    # -- reading and writing, with the lock held --

    def _current(self, *, upgrade: bool) -> tuple[_Cached, int]:
        """The state now, from the cache when neither file changed since this process
        last saw them, else read again (another process committed). Returns the version
        the files were in."""
        files = (file_id(self.path), file_id(self.log_path))
        cached = self._cache
        if cached is not None and cached.files == files:
            return cached, SCHEMA_VERSION
        return self._load(files, upgrade=upgrade)

    def _load(self, files: tuple[FileId, FileId], *, upgrade: bool) -> tuple[_Cached, int]:
        """Read `state.json`, replay `state.log` over it, migrate; with `upgrade` (the
        exclusive lock held) an older format is backed up and rewritten."""
        raw = self._storage.read() or {}
        snapshot_version = schema_version(raw, self.path)
        if snapshot_version > SCHEMA_VERSION:
            raise StateTooNew(self.path, snapshot_version, SCHEMA_VERSION)
        snapshot_seq = _pop_log_seq(raw, self.path)
        if snapshot_version >= LOG_SINCE:
            replay = self._log.read(snapshot_seq)
        else:
            # A file from before the log: any state.log was left by a newer relance that
            # was then downgraded; it does not continue this file.
            replay = LogRead([], snapshot_seq, 0, 0)
        for changes in replay.changes:
            _apply(raw, changes)
        data, found = migrate(raw, self.path)
        snapshot = build_snapshot(data, self.path)
        size = files[0][1] if files[0] else 0
        cached = _Cached(snapshot, files, replay.last_seq, replay.valid_end, size)
        if found == SCHEMA_VERSION:
            self._cache = cached
        elif upgrade:
            cached = self._upgrade_files(cached, found, log_replayed=bool(replay.changes))
        return cached, found

    def _upgrade_files(self, cached: _Cached, found: int, *, log_replayed: bool) -> _Cached:
        """Keep the files of version `found` byte for byte as `*.vN.bak`, then write the
        state in the current format as a fresh snapshot."""
        backup = self.path.with_name(f"{self.path.name}.v{found}.bak")
        if not backup.exists():
            AtomicJSONStorage(backup).write_bytes(self.path.read_bytes())
            if log_replayed:
                AtomicJSONStorage(self.log_path.with_name(
                    f"{LOG_FILE}.v{found}.bak")).write_bytes(self.log_path.read_bytes())
        if found < LOG_SINCE and file_id(self.log_path):
            os.replace(self.log_path, self.log_path.with_name(f"{LOG_FILE}.stale"))
        self._cache = upgraded = self._compacted(cached, cached.snapshot)
        log.info("event=state-upgraded file=%s from=%d to=%d backup=%s",
                 self.path, found, SCHEMA_VERSION, backup)
        return upgraded

    def _commit(self, cached: _Cached, tx: Transaction) -> None:
        """Make the transaction durable, then make it the cache."""
        changes = tx._changes()
        snapshot = tx._close()
        if cached.files[0] is None:
            # The first commit writes the snapshot itself: a state.json always exists
            # beside a log, and stamps the format an older relance would refuse.
            self._cache = self._compacted(cached, snapshot)
            return
        seq = cached.seq + 1
        log_id = self._log.append(seq, changes, cached.log_end)
        assert log_id is not None
        committed = _Cached(snapshot, (cached.files[0], log_id), seq, log_id[1],
                            cached.snapshot_size)
        self._cache = committed
        if log_id[1] > max(COMPACT_MIN_BYTES, cached.snapshot_size // 2):
            try:
                self._cache = self._compacted(committed, snapshot)
            except OSError as exc:
                # The commit is durable in the log; the next one tries to compact again.
                log.warning("event=state-compaction-failed file=%s reason=%s", self.path, exc)

    def _compacted(self, cached: _Cached, snapshot: _Snapshot) -> _Cached:
        """Write every table to `state.json` stamped with the last seq, then empty the
        log. A crash between the two leaves log lines the stamp says to skip."""
        meta = dict(snapshot.tables.get(_META, {}).get("1") or {})
        meta.setdefault("schema_version", SCHEMA_VERSION)
        meta[_LOG_SEQ] = cached.seq
        data = {**snapshot.tables, _META: {"1": meta}}
        self._storage.write(data)
        snapshot_id = file_id(self.path)
        log_id = self._log.truncate()
        size = snapshot_id[1] if snapshot_id else 0
        return _Cached(snapshot, (snapshot_id, log_id), cached.seq, 0, size)

    def _sweep_temps(self) -> None:
        """Remove temp files a killed writer left behind (only ever under the lock)."""
        for leftover in self.state_dir.glob(f".{STATE_FILE}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        self._swept_temps = True

    @contextlib.contextmanager
    def lock_daemon(self) -> Iterator[int]:
        """Hold `daemon.lock` for as long as the daemon runs; yields our PID.

        Non-blocking: a second daemon on the same directory gets AlreadyRunning with the
        holder's PID. The kernel drops the lock when the holder dies, so a crash never
        leaves a stale lock. The file is never unlinked (that would race with a new holder).
        """
        fd = os.open(self.daemon_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyRunning(_read_pid(fd), self.daemon_lock_path) from None
            pid = os.getpid()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{pid}\n".encode(), 0)
            yield pid
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)


def _pop_log_seq(data: dict[str, Any], path: Path) -> int:
    """Take the snapshot's seq stamp out of `meta` (it describes the file, not the state)."""
    doc = (data.get(_META) or {}).get("1")
    if not isinstance(doc, dict) or _LOG_SEQ not in doc:
        return 0
    seq = doc.pop(_LOG_SEQ)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise StateCorrupt(path, f"{_LOG_SEQ} {seq!r}: expected a whole number")
    return seq


def _apply(data: dict[str, Any], changes: Mapping[str, Mapping[str, Any]]) -> None:
    """Replay one log line: each document replaced whole (None deletes it)."""
    for table, docs in changes.items():
        target = data.setdefault(table, {})
        for doc_id, doc in docs.items():
            if doc is None:
                target.pop(doc_id, None)
            else:
                target[doc_id] = doc


def _read_pid(fd: int) -> int | None:
    """The PID the lock holder wrote, or None if it has not written it yet."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (ValueError, UnicodeDecodeError):
        return None
