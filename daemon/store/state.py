"""The daemon's state on disk: cases, IMAP cursors and send intents in one TinyDB file.

Why one file and a lock: a pass of the daemon and a `relance paid` typed in a shell must
never lose each other's updates, and a kill at any instant must leave either the old or
the new state, never half of each. So every change happens inside a transaction that holds
an exclusive `flock`, reads `state.json` once, and writes it back once through a temp file,
fsync and `os.replace` (plain TinyDB rewrites in place: FIELD_NOTES measured 1 broken file
in 40 kills). A send intent is committed before the mail leaves, so a crash between "sent"
and "recorded" is seen on restart and never turns into a second reminder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from relance.model import Case, CaseState, StepRecord

log = logging.getLogger("relance")

SCHEMA_VERSION = 1
"""The format `state.json` is written in. Bump it with every change an older relance
could misread, and add the step from the previous version to MIGRATIONS."""
STATE_FILE = "state.json"
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
            f"{self.path}: {reason}; relance will not overwrite it. Move the file aside: "
            f"the state can be rebuilt from the journal ({self.path.parent / 'journal.jsonl'})"
            " and the mailbox."
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
        """Replace the file with `data` atomically and durably."""
        self.write_bytes(json.dumps(data, **self._dump_kwargs).encode("utf-8"))

    def write_bytes(self, encoded: bytes) -> None:
        """Replace the file with `encoded` atomically and durably."""
        directory = self.path.parent
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(encoded)
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


class _SnapshotStorage(Storage):
    """The tables of one transaction, in memory: TinyDB edits them, the commit writes once."""

    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.changed = False

    def read(self) -> dict[str, dict[str, Any]]:
        return self.data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.changed = True


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


Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {0: _v0_to_v1}
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


def case_from_doc(doc: Mapping[str, Any]) -> Case:
    """The inverse of case_to_doc; a field missing from an older file takes its default.

    Raises ValueError naming the case and the field when the document is unusable.
    """
    number = doc.get("number", "?")
    field = "number"
    try:
        kwargs: dict[str, Any] = {
            "number": number,
            "client_addrs": tuple(doc["client_addrs"]),
            "subject": doc["subject"],
            "root_message_id": doc["root_message_id"],
        }
        optional: dict[str, Any] = {
            "root_references": tuple,
            "client_name": str,
            "amount": lambda v: None if v is None else _decimal_from_str(v),
            "paid": _decimal_from_str,
            "credited": _decimal_from_str,
            "credit_notes": tuple,
            "currency": str,
            "issue_date": _opt_date_from_str,
            "due_date": _opt_date_from_str,
            "state": CaseState,
            "thread_ids": tuple,
            "steps": lambda v: tuple(step_from_doc(s) for s in v),
            "last_contact_at": _opt_instant_from_str,
            "paused_until": _opt_instant_from_str,
            "reason": str,
            "invoice_folder": str,
            "invoice_uid": int,
            "language": str,
            "opened_at": _opt_instant_from_str,
            "instalments": lambda v: tuple(
                (date.fromisoformat(d), _decimal_from_str(a)) for d, a in v
            ),
        }
        for field, convert in optional.items():
            if field in doc:
                kwargs[field] = convert(doc[field])
        return Case(**kwargs)
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


def _case_message_ids(doc: Mapping[str, Any]) -> list[str]:
    """Every Message-ID that belongs to a case's thread: the invoice, the thread, our steps.

    The invoice's own References are left out: they name earlier mail (a quote, another
    invoice) that is not this case's.
    """
    ids = [doc["root_message_id"], *doc.get("thread_ids", ())]
    ids.extend(step["message_id"] for step in doc.get("steps", ()))
    return list(dict.fromkeys(i for i in ids if i))


# --- views -----------------------------------------------------------------------------


class StateView:
    """Read access to one consistent snapshot of the state file.

    Built once per transaction from the tables read under the lock; the indexes make a
    lookup by number, folder or Message-ID a dict access instead of a table scan.
    """

    def __init__(self, path: Path, data: dict[str, dict[str, Any]]) -> None:
        self._path = path
        self._storage = _SnapshotStorage(data)
        self._db = TinyDB(storage=lambda: self._storage)
        self._cases_table: Table = self._db.table(_CASES, cache_size=0)
        self._cursors_table: Table = self._db.table(_CURSORS, cache_size=0)
        self._sends_table: Table = self._db.table(_SENDS, cache_size=0)
        self._meta_table: Table = self._db.table(_META, cache_size=0)
        self._decoded: dict[str, Case] = {}
        self._case_ids: dict[str, int] = {}
        self._cursor_ids: dict[str, int] = {}
        self._send_ids: dict[str, int] = {}
        self._by_message_id: dict[str, list[str]] = {}
        self._build_indexes(data)

    def _corrupt(self, reason: str) -> StateCorrupt:
        return StateCorrupt(self._path, reason)

    def _build_indexes(self, data: dict[str, dict[str, Any]]) -> None:
        version = schema_version(data, self._path)
        if version > SCHEMA_VERSION:
            raise StateTooNew(self._path, version, SCHEMA_VERSION)
        if data.get(_META) and version != SCHEMA_VERSION:
            raise self._corrupt(
                f"schema version {version}, this relance reads version {SCHEMA_VERSION}; "
                "the store upgrades files before reading them"
            )
        try:
            for doc_id, doc in data.get(_CASES, {}).items():
                number = doc["number"]
                if number in self._case_ids:
                    raise self._corrupt(f"case {number} is stored twice")
                self._case_ids[number] = int(doc_id)
                self._index_case_ids(number, _case_message_ids(doc))
            for doc_id, doc in data.get(_CURSORS, {}).items():
                self._cursor_ids[doc["folder"]] = int(doc_id)
            for doc_id, doc in data.get(_SENDS, {}).items():
                self._send_ids[doc["message_id"]] = int(doc_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(f"a document lacks its key or is malformed ({exc!r})") from exc

    def _index_case_ids(self, number: str, message_ids: list[str]) -> None:
        for message_id in message_ids:
            numbers = self._by_message_id.setdefault(message_id, [])
            if number not in numbers:
                numbers.append(number)

    def _unindex_case_ids(self, number: str, message_ids: list[str]) -> None:
        for message_id in message_ids:
            numbers = self._by_message_id.get(message_id, [])
            if number in numbers:
                numbers.remove(number)
            if not numbers:
                self._by_message_id.pop(message_id, None)

    def _raw_case(self, number: str) -> dict[str, Any] | None:
        doc_id = self._case_ids.get(number)
        return None if doc_id is None else self._storage.data[_CASES][str(doc_id)]

    def _decode_case(self, number: str, raw: Mapping[str, Any]) -> Case:
        """Decode once per snapshot: a pass asks for the same case several times."""
        case = self._decoded.get(number)
        if case is None:
            try:
                case = case_from_doc(raw)
            except ValueError as exc:
                raise self._corrupt(str(exc)) from exc
            self._decoded[number] = case
        return case

    def get_case(self, number: str) -> Case | None:
        """The case for an invoice number, or None."""
        raw = self._raw_case(number)
        return None if raw is None else self._decode_case(number, raw)

    def cases(self) -> dict[str, Case]:
        """Every stored case by invoice number (decoding all of them: a full pass)."""
        return {
            doc["number"]: self._decode_case(doc["number"], doc)
            for doc in self._storage.data.get(_CASES, {}).values()
        }

    def find_cases_by_message_id(self, message_id: str) -> list[Case]:
        """All cases whose thread holds this Message-ID (one mail may carry two invoices)."""
        return [c for n in self._by_message_id.get(message_id, ()) if (c := self.get_case(n))]

    def find_case_by_message_id(self, message_id: str) -> Case | None:
        """The first stored case whose thread holds this Message-ID, or None."""
        found = self.find_cases_by_message_id(message_id)
        return found[0] if found else None

    def cursor(self, folder: str) -> Cursor | None:
        """Where reading of an IMAP folder stopped, or None if it was never read."""
        doc_id = self._cursor_ids.get(folder)
        if doc_id is None:
            return None
        return _cursor_from_doc(self._storage.data[_CURSORS][str(doc_id)])

    def send(self, message_id: str) -> SendRecord | None:
        """The send record for one Message-ID, or None."""
        doc_id = self._send_ids.get(message_id)
        if doc_id is None:
            return None
        return _send_from_doc(self._storage.data[_SENDS][str(doc_id)])

    def meta(self, key: str) -> Any:
        """A fact kept with `Transaction.set_meta`, or None."""
        doc = self._meta_table.get(doc_id=1)
        return None if doc is None else doc.get(key)  # type: ignore[union-attr]

    def sends(self, status: str | None = None) -> list[SendRecord]:
        """Send records in the order their intents were made, optionally of one status."""
        if status is not None and status not in SEND_STATUSES:
            raise ValueError(f"unknown send status {status!r}; expected one of {_statuses()}")
        try:
            return [
                _send_from_doc(doc)
                for doc in self._storage.data.get(_SENDS, {}).values()
                if status is None or doc["status"] == status
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(f"a send record is damaged ({type(exc).__name__}: {exc})") from exc


def _statuses() -> str:
    return ", ".join(sorted(SEND_STATUSES))


class Transaction(StateView):
    """A StateView that also records changes; StateStore commits them in one write."""

    @property
    def changed(self) -> bool:
        """Whether anything was written to the tables in this transaction."""
        return self._storage.changed

    def put_case(self, case: Case) -> None:
        """Insert or replace the case stored under `case.number`; a no-op if unchanged."""
        doc = case_to_doc(case)
        old = self._raw_case(case.number)
        if old == doc:
            self._decoded[case.number] = case
            return
        if old is None:
            doc_id = self._cases_table.insert(doc)
            self._case_ids[case.number] = doc_id
        else:
            self._unindex_case_ids(case.number, _case_message_ids(old))
            self._cases_table.update(_replace_with(doc), doc_ids=[self._case_ids[case.number]])
        self._index_case_ids(case.number, _case_message_ids(doc))
        self._decoded[case.number] = case

    def set_cursor(self, cursor: Cursor) -> None:
        """Insert or replace the cursor of `cursor.folder`."""
        doc = _cursor_to_doc(cursor)
        doc_id = self._cursor_ids.get(cursor.folder)
        if doc_id is None:
            self._cursor_ids[cursor.folder] = self._cursors_table.insert(doc)
        elif self._storage.data[_CURSORS][str(doc_id)] != doc:
            self._cursors_table.update(_replace_with(doc), doc_ids=[doc_id])

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
        self._send_ids[message_id] = self._sends_table.insert(_send_to_doc(record))
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
        record = SendRecord(
            message_id=existing.message_id,
            number=existing.number,
            step_index=existing.step_index,
            step_name=existing.step_name,
            status=status,
            created_at=existing.created_at,
            smtp_reply=smtp_reply,
            recorded_at=at,
        )
        doc_id = self._send_ids[message_id]
        self._sends_table.update(_replace_with(_send_to_doc(record)), doc_ids=[doc_id])
        return record

    def set_meta(self, key: str, value: str | int | None) -> None:
        """Keep one small fact about the daemon itself (e.g. when the digest last went)."""
        if key == "schema_version":
            raise ValueError("schema_version is set by migrations only")
        if not self._meta_table.contains(doc_id=1):
            self._meta_table.insert(Document({"schema_version": SCHEMA_VERSION}, doc_id=1))
        if self._meta_table.get(doc_id=1).get(key) != value:  # type: ignore[union-attr]
            self._meta_table.update({key: value}, doc_ids=[1])

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
        doc_id = self._send_ids[message_id]
        self._sends_table.update(_replace_with(_send_to_doc(record)), doc_ids=[doc_id])
        return record

    def _data_to_commit(self) -> dict[str, dict[str, Any]]:
        """The tables to write, stamped with the schema version on first write."""
        if not self._meta_table.contains(doc_id=1):
            self._meta_table.insert(Document({"schema_version": SCHEMA_VERSION}, doc_id=1))
        return self._storage.data


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


def _replace_with(new: dict[str, Any]) -> Any:
    """A TinyDB update that replaces a document whole (plain update only merges keys)."""

    def replace(doc: dict[str, Any]) -> None:
        doc.clear()
        doc.update(new)

    return replace


# --- the store -------------------------------------------------------------------------

_held = threading.local()


def _held_locks() -> set[str]:
    locks: set[str] | None = getattr(_held, "paths", None)
    if locks is None:
        locks = _held.paths = set()
    return locks


class StateStore:
    """The state directory: `state.json`, its lock, and the daemon's single-instance lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / STATE_FILE
        self.lock_path = self.state_dir / LOCK_FILE
        self.daemon_lock_path = self.state_dir / DAEMON_LOCK_FILE
        self._storage = AtomicJSONStorage(self.path)
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

        Writes the file once at exit if anything changed; an exception writes nothing.
        """
        with self._flock(fcntl.LOCK_EX):
            if not self._swept_temps:
                self._sweep_temps()
            tx = Transaction(self.path, self._upgraded(self._storage.read() or {}))
            yield tx
            if tx.changed:
                self._storage.write(tx._data_to_commit())

    @contextlib.contextmanager
    def reading(self) -> Iterator[StateView]:
        """A read-only snapshot, read under a shared lock.

        The lock is released once the file is read: the view is in memory, so a long
        `relance status` never holds up the daemon's next pass.
        """
        with self._flock(fcntl.LOCK_SH):
            data, _found = migrate(self._storage.read() or {}, self.path)
            view = StateView(self.path, data)
        yield view

    def upgrade(self) -> int | None:
        """Bring `state.json` to the current format now; the version it had, or None
        when it was current. The daemon calls it at start so the upgrade is logged once."""
        with self._flock(fcntl.LOCK_EX):
            raw = self._storage.read() or {}
            before = schema_version(raw, self.path)
            self._upgraded(raw)
        return None if before == SCHEMA_VERSION else before

    def _upgraded(self, data: dict[str, Any]) -> dict[str, Any]:
        """`data` in the current format; an older file is backed up and rewritten first.

        Call with the exclusive lock held. The backup (`state.json.vN.bak`) is the file
        byte for byte, so going back to the older relance is a copy away.
        """
        data, found = migrate(data, self.path)
        if found != SCHEMA_VERSION:
            backup = self.path.with_name(f"{self.path.name}.v{found}.bak")
            if not backup.exists():
                AtomicJSONStorage(backup).write_bytes(self.path.read_bytes())
            self._storage.write(data)
            log.info("event=state-upgraded file=%s from=%d to=%d backup=%s",
                     self.path, found, SCHEMA_VERSION, backup)
        return data

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


def _read_pid(fd: int) -> int | None:
    """The PID the lock holder wrote, or None if it has not written it yet."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (ValueError, UnicodeDecodeError):
        return None
