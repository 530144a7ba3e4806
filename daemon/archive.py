"""Closing a case in the mailbox: find its whole thread, file it under
`Relance/Archive/YYYY`, and seal it in an evidence bundle.

Built on the Mailbox adapter's imapclient connection (`mailbox.imap`) for what the
adapter does not offer: searches across folders by thread headers, INTERNALDATE, MOVE
and its fallback. Folder names use the server's own hierarchy delimiter and personal
namespace prefix ("Relance.Archive.2026" on Dovecot, "INBOX.Relance.Archive.2026" on
Courier, "Relance/Archive/2026" on Gmail-like servers).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from relance.mailbox.imap import Mailbox
from relance.mailbox.parse import ParseFailure, header_block, parse_headers, parse_message
from relance.model import Attachment, Case, CaseState, Firm, Mail
from relance.store.evidence import (
    DnsFunc,
    ThreadMessage,
    Written,
    recorded_dkim,
    write_bundle,
)
from relance.store.journal import Journal

log = logging.getLogger("relance")

Record = Callable[..., object]  # (now, event, number, **details): Daemon.event's shape

RELANCE_ROOT = "Relance"
ARCHIVE = "Archive"
FETCH_BATCH = 200  # whole messages: keep each FETCH response bounded
SEARCH_KEYS_PER_COMMAND = 60  # HEADER keys OR-ed in one SEARCH
MAX_ROUNDS = 10  # replies to replies: each round follows one more step of the thread


@dataclass(frozen=True)
class Archived:
    """What `archive_thread` did with a thread's messages."""

    folder: str  # the archive folder, in the server's own syntax
    moved: int  # removed from where they were and now only in the archive
    copied: int  # copied, originals left in place (no MOVE and no UIDPLUS)
    already: int  # were in the archive folder before
    method: str  # "move" | "copy+expunge" | "copy" | "none"


@dataclass(frozen=True)
class Closed:
    """What `close_case` did: the sealed bundle and where the thread now lives."""

    bundle: Written
    archived: Archived | None
    messages: int
    invoice_pdfs: int


# -- folders ---------------------------------------------------------------------------


def hierarchy(mailbox: Mailbox) -> tuple[str, str]:
    """The personal namespace prefix and hierarchy delimiter, as the server says."""
    imap = mailbox.imap
    if imap.has_capability("NAMESPACE"):
        personal = imap.namespace().personal
        if personal:
            prefix, delimiter = personal[0]
            prefix = _text(prefix)
            delimiter = _text(delimiter) if delimiter else ""
            if delimiter:
                return prefix, delimiter
    listed = imap.list_folders("", "")
    for _flags, delimiter, _name in listed:
        if delimiter:
            return "", _text(delimiter)
    return "", "/"  # a flat server: any separator works, none is interpreted


def relance_folder(mailbox: Mailbox, *parts: str) -> str:
    """A folder under `Relance/` in the server's syntax: `relance_folder(mb, "Archive",
    "2026")` → "Relance.Archive.2026" on Dovecot."""
    prefix, delimiter = hierarchy(mailbox)
    for part in parts:
        if delimiter in part:
            raise ValueError(f"folder part {part!r} holds the delimiter {delimiter!r}")
    return prefix + delimiter.join((RELANCE_ROOT, *parts))


def ensure_folder_path(mailbox: Mailbox, name: str) -> None:
    """Create `name` and its missing parents, subscribed (some servers need parents)."""
    prefix, delimiter = hierarchy(mailbox)
    parts = name[len(prefix):].split(delimiter) if name.startswith(prefix) else [name]
    for depth in range(1, len(parts) + 1):
        mailbox.ensure_folder(prefix + delimiter.join(parts[:depth]))


def thread_folders(mailbox: Mailbox, case: Case) -> list[str]:
    """Where a case's messages may be: INBOX, Sent, the folder the invoice was seen in,
    and every selectable folder under `Relance/` (drop folders, earlier archives)."""
    found = ["INBOX"]
    with contextlib.suppress(LookupError):
        found.append(mailbox.sent_folder())
    if case.invoice_folder:
        found.append(case.invoice_folder)
    prefix, delimiter = hierarchy(mailbox)
    root = prefix + RELANCE_ROOT
    for flags, _delim, name in mailbox.imap.list_folders(root, "*"):
        if b"\\Noselect" in flags or b"\\NonExistent" in flags:
            continue
        if name == root or name.startswith(root + delimiter):
            found.append(name)
    return list(dict.fromkeys(found))


# -- finding the thread ----------------------------------------------------------------


def collect_thread(
    mailbox: Mailbox, case: Case, folders: Sequence[str]
) -> list[ThreadMessage]:
    """Every message of the case's thread in `folders`, raw, with folder, UID and arrival.

    A message belongs when its Message-ID is one the case knows, or its References or
    In-Reply-To names a message that belongs (followed until nothing new turns up, so a
    reply to a reply is found even when its References were cut short). relance's own
    notices to the owner (`X-Relance-Notice`) are not the client's thread and are left out.
    """
    known = {mid for mid in (case.root_message_id, *case.thread_ids,
                             *(s.message_id for s in case.steps)) if mid}
    frontier = set(known)
    found: dict[tuple[str, int], ThreadMessage] = {}
    existing = _existing(mailbox, folders)
    for _round in range(MAX_ROUNDS):
        if not frontier:
            break
        new_ids: set[str] = set()
        for folder in existing:
            uids = _search_thread(mailbox, folder, sorted(frontier))
            fresh = [uid for uid in uids if (folder, uid) not in found]
            for message in _fetch(mailbox, folder, fresh):
                head = _head(message.raw)
                if head is not None and "x-relance-notice" in head.headers:
                    continue  # relance's own notices to the owner stay where they are
                found[(folder, message.uid)] = message
                message_id = head.message_id if head is not None else ""
                if message_id and message_id not in known:
                    known.add(message_id)
                    new_ids.add(message_id)
        frontier = new_ids
    return sorted(found.values(), key=lambda m: (m.folder, m.uid))


def _existing(mailbox: Mailbox, folders: Sequence[str]) -> list[str]:
    listed = {name for flags, _d, name in mailbox.imap.list_folders()
              if b"\\Noselect" not in flags and b"\\NonExistent" not in flags}
    return [f for f in dict.fromkeys(folders) if f in listed or f.upper() == "INBOX"]


def _search_thread(mailbox: Mailbox, folder: str, message_ids: Sequence[str]) -> list[int]:
    """UIDs in `folder` whose Message-ID, References or In-Reply-To holds one of the ids.

    IMAP HEADER search is a substring match: the angle brackets keep "<a@x>" from
    matching "<ba@x>".
    """
    imap = mailbox.imap
    mailbox.select(folder, readonly=True, refresh=True)
    keys = [["HEADER", header, mid] for mid in message_ids
            for header in ("Message-ID", "References", "In-Reply-To")]
    uids: set[int] = set()
    for start in range(0, len(keys), SEARCH_KEYS_PER_COMMAND):
        uids.update(imap.search(_or_all(keys[start:start + SEARCH_KEYS_PER_COMMAND])))
    return sorted(uids)


def _or_all(keys: Sequence[list[str]]) -> list[object]:
    """One search criterion matching any of `keys`: a balanced tree of ORs (IMAP's OR
    takes two keys), so the nesting stays shallow."""
    if len(keys) == 1:
        return list(keys[0])
    middle = len(keys) // 2
    return ["OR", _or_all(keys[:middle]), _or_all(keys[middle:])]


def _fetch(mailbox: Mailbox, folder: str, uids: Sequence[int]) -> list[ThreadMessage]:
    """Whole messages byte for byte, with the server's INTERNALDATE as an aware instant."""
    imap = mailbox.imap
    out: list[ThreadMessage] = []
    if not uids:
        return out
    mailbox.select(folder, readonly=True)
    normalise = imap.normalise_times
    imap.normalise_times = False  # keep the server's offset: evidence shows real instants
    try:
        for start in range(0, len(uids), FETCH_BATCH):
            batch = list(uids[start:start + FETCH_BATCH])
            response = imap.fetch(batch, [b"BODY.PEEK[]", b"INTERNALDATE"])
            for uid in batch:
                data = response.get(uid)
                if not data or data.get(b"BODY[]") is None:
                    continue  # expunged meanwhile
                received = data.get(b"INTERNALDATE")
                if isinstance(received, datetime) and received.tzinfo is None:
                    received = received.replace(tzinfo=UTC)
                out.append(ThreadMessage(folder, uid, bytes(data[b"BODY[]"]),
                                         received if isinstance(received, datetime) else None))
    finally:
        imap.normalise_times = normalise
    return out


def _head(raw: bytes) -> Mail | None:
    try:
        return parse_headers(header_block(raw))
    except (ParseFailure, ValueError, UnicodeError, LookupError):
        return None


def _message_id(raw: bytes) -> str:
    head = _head(raw)
    return head.message_id if head is not None else ""


# -- archiving -------------------------------------------------------------------------


def archive_thread(
    mailbox: Mailbox,
    case: Case,
    year: int,
    messages: Sequence[ThreadMessage] | None = None,
) -> Archived:
    """Move the thread into `Relance/Archive/YYYY`, creating folders; nothing else goes.

    MOVE where the server has it (RFC 6851). Otherwise COPY, check the copies arrived,
    then flag the originals \\Deleted and UID EXPUNGE just them (UIDPLUS). A server with
    neither gets copies only: a plain EXPUNGE would also erase mail the user had marked
    deleted, so the originals stay and the count says so.
    """
    dest = relance_folder(mailbox, ARCHIVE, str(int(year)))
    if messages is None:
        messages = collect_thread(mailbox, case, thread_folders(mailbox, case))
    ensure_folder_path(mailbox, dest)
    imap = mailbox.imap
    by_folder: dict[str, list[ThreadMessage]] = {}
    already = 0
    for message in messages:
        if message.folder == dest:
            already += 1
        else:
            by_folder.setdefault(message.folder, []).append(message)
    has_move = imap.has_capability("MOVE")
    has_uidplus = imap.has_capability("UIDPLUS")
    moved = copied = 0
    method = "none"
    for folder, group in by_folder.items():
        uids = sorted({m.uid for m in group})
        mailbox.select(folder, readonly=False)
        if has_move:
            imap.move(uids, dest)
            moved += len(uids)
            method = "move"
            continue
        imap.copy(uids, dest)
        ids = [mid for mid in (_message_id(m.raw) for m in group) if mid]
        if not has_uidplus or not _all_present(mailbox, dest, ids):
            copied += len(uids)
            method = "copy"
            mailbox.select(folder, readonly=True)
            continue
        mailbox.select(folder, readonly=False)
        imap.add_flags(uids, [b"\\Deleted"], silent=True)
        imap.uid_expunge(uids)
        moved += len(uids)
        method = "copy+expunge"
    return Archived(dest, moved, copied, already, method)


def _all_present(mailbox: Mailbox, folder: str, message_ids: Iterable[str]) -> bool:
    ids = list(message_ids)
    if not ids:
        return False  # nothing to check the copy by: keep the originals
    imap = mailbox.imap
    mailbox.select(folder, readonly=True)
    return all(imap.search(["HEADER", "Message-ID", mid]) for mid in ids)


# -- closing ---------------------------------------------------------------------------


def invoice_pdfs(case: Case, messages: Sequence[ThreadMessage]) -> list[Attachment]:
    """The PDFs attached to the invoice mail itself (the thread's root)."""
    for message in messages:
        if _message_id(message.raw) != case.root_message_id:
            continue
        try:
            mail = parse_message(message.raw, message.folder, message.uid)
        except ParseFailure:
            return []
        return [a for a in mail.attachments
                if a.content_type == "application/pdf" or a.filename.lower().endswith(".pdf")]
    return []


def bundle_case(
    mailbox: Mailbox,
    case: Case,
    journal: Journal,
    evidence_dir: Path,
    now: datetime,
    *,
    firm: Firm | None = None,
    documents: Sequence[Attachment] = (),
    dnsfunc: DnsFunc | None = None,
    tz: tzinfo | None = None,
    record: Record | None = None,
) -> tuple[Written, list[ThreadMessage]]:
    """Seal the case's thread as it stands, without moving anything (`evidence export`
    of an open case). Writing twice with nothing new gives the same bundle back.

    `record(now, event, number, **details)` writes a journal entry (the daemon passes
    its `event`, which also logs it); by default `journal.append`.
    """
    messages = collect_thread(mailbox, case, thread_folders(mailbox, case))
    entries = list(journal.entries(case.number))
    written = write_bundle(
        evidence_dir, case, messages, entries, invoice_pdfs(case, messages),
        recorded_dkim(entries), now, firm=firm, documents=documents, dnsfunc=dnsfunc, tz=tz,
    )
    if written.new:
        _recorder(journal, record)(
            now, "evidence-written", case.number, bundle=written.path.name,
            manifest_sha256=written.manifest_sha256, ledger_line=written.ledger_line,
            ledger_hash=written.ledger_hash, messages=len(messages),
        )
    return written, messages


def close_case(
    mailbox: Mailbox,
    case: Case,
    journal: Journal,
    evidence_dir: Path,
    now: datetime,
    *,
    firm: Firm | None = None,
    documents: Sequence[Attachment] = (),
    archive: bool = True,
    dnsfunc: DnsFunc | None = None,
    tz: tzinfo | None = None,
    record: Record | None = None,
) -> Closed:
    """A case closed (paid, stopped, formal notice prepared): file its thread under
    `Relance/Archive/<invoice year>` and seal it in a bundle.

    Moves first, then reads the thread back from where it now lives, so the bundle names
    the folder and UIDs that hold each message from now on, and its journal includes the
    move. Safe to call again (after an IMAP error, or when the case moves on): messages
    already archived stay, and an unchanged thread gives the same bundle.
    """
    archived = None
    if archive:
        year = case.issue_date.year if case.issue_date else now.year
        before = collect_thread(mailbox, case, thread_folders(mailbox, case))
        archived = archive_thread(mailbox, case, year, before)
        if archived.moved or archived.copied:
            _recorder(journal, record)(
                now, "thread-archived", case.number, folder=archived.folder,
                moved=archived.moved, copied=archived.copied, method=archived.method,
            )
    written, messages = bundle_case(mailbox, case, journal, evidence_dir, now, firm=firm,
                                    documents=documents, dnsfunc=dnsfunc, tz=tz, record=record)
    pdfs = invoice_pdfs(case, messages)
    log.info("event=case-closed case=%s bundle=%s messages=%d ledger=%s", case.number,
             written.path.name, len(messages), written.ledger_hash[:16])
    return Closed(written, archived, len(messages), len(pdfs))


def _recorder(journal: Journal, record: Record | None) -> Record:
    if record is not None:
        return record

    def append(now: datetime, event: str, number: str | None = None, **details: Any) -> None:
        journal.append(event, at=now, case=number, **details)

    return append


# Closed for good: the thread is archived and sealed. DONE and STOPPED cases that were
# never chased (an old invoice adopted as done, a never-chase client) have nothing since
# their `invoice-found` entry and are left where they are.
SEAL_STATES = frozenset(
    {CaseState.PAID, CaseState.STOPPED, CaseState.FORMAL_NOTICE, CaseState.DONE}
)
COLD_AFTER = timedelta(days=90)
"""A settled case stays in the hot state this long after its last step or contact at
least (see `cases_to_chill`): a late "merci, c'est réglé" or a question about a paid
invoice comes within weeks, and reading it from the cold file is slower."""
# Journal events that are not news about a case: they never call for a new seal.
_NOT_NEWS = frozenset({"evidence-written", "thread-archived", "owner-notified",
                       "would-notify", "notice-failed", "evidence-failed", "notice-deferred",
                       "notice-unknown", "notice-refused", "outbox-damaged", "copy-refused"})


def cases_to_seal(
    cases: Mapping[str, Case], entries: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Numbers of closed cases whose journal has news since their last seal (or that
    were never sealed): what a pass should `close_case`. One read of the journal."""
    pending = _news_since_seal(cases, entries)
    return [n for n, news in pending.items() if news and _sealable(cases[n])]


def cases_to_chill(
    settled: Sequence[str], cases: Mapping[str, Case], entries: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Of the settled cases (paid, stopped or done, quiet for a while), those the journal
    has no news about since their seal (or since they were found), and those relance
    never seals: what may leave the hot state for the cold file. A case with news waits
    for its seal, so the cold file never holds a case whose evidence is behind."""
    pending = _news_since_seal(frozenset(settled), entries)
    return [n for n in settled if not pending.get(n) or not _sealable(cases[n])]


def _news_since_seal(
    known: Collection[str], entries: Iterable[Mapping[str, Any]]
) -> dict[str, bool]:
    """For each case of `known` the journal names: whether it has news since its last
    `evidence-written` (or since `invoice-found` when never sealed)."""
    pending: dict[str, bool] = {}
    for entry in entries:
        number = entry.get("case")
        if not isinstance(number, str) or number not in known:
            continue
        event = entry.get("event")
        if event == "evidence-written":
            pending[number] = False
        elif event == "invoice-found":
            pending.setdefault(number, False)
        elif event not in _NOT_NEWS:
            pending[number] = True
    return pending


def _sealable(case: Case) -> bool:
    """A closed case relance chased. An invoice adopted as history (too old when first
    seen, never chased) is not relance's to archive or seal, even when its client writes
    in its thread: moving such a thread out of the inbox would surprise the firm."""
    if case.state is CaseState.DONE and not case.steps:
        return False
    return case.state in SEAL_STATES


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
