"""Evidence bundles: one case's whole story, sealed so that a later edit shows.

A bundle is a directory `evidence_dir/<number>/` holding every message of the thread as
raw `.eml` (byte for byte as the server held it), the invoice PDF(s), the case's journal,
DKIM results for the client's mail, a readable `timeline.html`, `SHA256SUMS`, and
`manifest.json` (the SHA-256 of every other file plus the case's facts). The manifest's
own digest goes on a line of `evidence_dir/ledger.jsonl`, each line carrying the hash of
the line before it: removing, reordering or editing a bundle or a ledger line breaks the
chain at a place `verify` names.

A bundle, once written, is never changed: writing again for the same case with new
evidence makes a new bundle (`<number>.v2`, `.v3`...) and a new ledger line.

A chain only proves what an outsider can compare it with: the hash of the ledger's last
line (`ledger_head`) is worth sending somewhere the firm does not control (the owner's
notice does). Whoever can rewrite every file and the whole ledger can forge anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html
import io
import json
import logging
import os
import re
import shutil
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any, NamedTuple

from relance.core.compose import reply_excerpt
from relance.mailbox.parse import ParseFailure, header_block, parse_headers, parse_message
from relance.model import Attachment, Case, Firm, Mail
from relance.store.state import fsync_dir

LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".ledger.lock"
MANIFEST_FILE = "manifest.json"
SUMS_FILE = "SHA256SUMS"
JOURNAL_FILE = "journal.jsonl"
DKIM_FILE = "dkim.json"
TIMELINE_FILE = "timeline.html"
FORMAT = "relance-evidence/1"
GENESIS = "0" * 64  # the `prev` of the ledger's first line
_TMP_PREFIX = ".tmp-"
_NAME_JUNK = re.compile(r"[^\w.\-]+")
_MAX_NAME = 80

DnsFunc = Callable[..., bytes | None]


class EvidenceError(Exception):
    """A bundle could not be written or exported; the message says why and what to do."""


class ThreadMessage(NamedTuple):
    """One message of a case's thread, as fetched: where it was, and its exact bytes."""

    folder: str
    uid: int
    raw: bytes
    received_at: datetime | None = None  # the server's INTERNALDATE: when it arrived


@dataclass(frozen=True)
class Problem:
    """One thing `verify` found wrong, named as `PATH[:LINE]: what differs`."""

    path: str  # relative to evidence_dir, "/"-separated
    message: str
    line: int | None = None  # a ledger line, 1-based

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Written:
    """What `write_bundle` did: where the bundle is and what sealed it."""

    path: Path
    manifest_sha256: str
    ledger_hash: str
    ledger_line: int
    new: bool  # False when an identical bundle already held this evidence


# -- names -----------------------------------------------------------------------------


def safe_name(name: str, fallback: str = "file") -> str:
    """A file name that stays where it is put: no directory part, no leading dot, no
    control or shell-special characters, bounded length, extension kept.

    Attachment names come from mail the firm did not write ("../../.ssh/x", "CON",
    "\\x00.pdf"): only the last path component survives, and only word characters,
    dots and dashes of it.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(c if c.isprintable() else "_" for c in text)
    text = re.sub("_+", "_", _NAME_JUNK.sub("_", text)).strip("._ ")
    if not text:
        return fallback
    if len(text) > _MAX_NAME:
        stem, dot, ext = text.rpartition(".")
        ext = ext[:10] if dot and len(ext) <= 10 else ""
        text = (stem if dot else text)[: _MAX_NAME - len(ext) - 1].rstrip("._") + (
            f".{ext}" if ext else ""
        )
    return text


def bundle_base_name(number: str) -> str:
    """The directory name for an invoice number; a short hash tells apart numbers that
    only differ in characters a file name cannot hold ("F/1" and "F:1")."""
    cleaned = safe_name(re.sub(r"[/\\]", "_", number), "case")  # "F/2026/1": keep it all
    if cleaned == number:
        return cleaned
    digest = hashlib.sha256(number.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def _unique(name: str, taken: set[str]) -> str:
    candidate = name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    n = 2
    while candidate.lower() in taken:
        candidate = f"{stem}-{n}" + (f".{ext}" if ext else "")
        n += 1
    taken.add(candidate.lower())
    return candidate


def _inside(directory: Path, relative: str) -> Path:
    """`directory/relative`, refusing anything that would land outside it."""
    path = (directory / relative).resolve()
    root = directory.resolve()
    if path != root and root not in path.parents:
        raise EvidenceError(f"{relative!r} would be written outside {directory}")
    return path


# -- DKIM ------------------------------------------------------------------------------


class _Collect(logging.Handler):
    """Keeps what dkimpy logs: it reports why a signature failed only through a logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.messages.append(record.getMessage())


def dkim_check(raw: bytes, checked_at: datetime, dnsfunc: DnsFunc | None = None) -> dict[str, Any]:
    """Verify every DKIM signature of a message with dkimpy, as a JSON-ready record.

    `result` is "pass" when one signature verifies, "none" when the message is unsigned,
    "temperror" when a key could not be fetched, else "fail". Call it when a message
    arrives and keep the record (in the journal): a key rotated or withdrawn later turns
    a genuine signature into a failure.
    """
    import dkim  # lazy: dkimpy (and its DNS stack, ~11 MB) only once a message is checked

    signatures: list[dict[str, Any]] = []
    try:
        verifier_headers = [
            (k, v)
            for k, v in dkim.DKIM(raw).headers
            if k.lower() == b"dkim-signature"
        ]
    except Exception as exc:  # dkimpy raises its own and stdlib errors on broken mail
        return {"result": "permerror", "checked_at": checked_at.isoformat(),
                "signatures": [], "detail": f"{type(exc).__name__}: {exc}"}
    for idx in range(len(verifier_headers)):
        signatures.append(_check_signature(raw, idx, dnsfunc))
    results = {s["result"] for s in signatures}
    if not signatures:
        overall = "none"
    elif "pass" in results:
        overall = "pass"
    elif results <= {"temperror"}:
        overall = "temperror"
    else:
        overall = "fail"
    return {"result": overall, "checked_at": checked_at.isoformat(), "signatures": signatures}


def _check_signature(raw: bytes, idx: int, dnsfunc: DnsFunc | None) -> dict[str, Any]:
    import dkim  # lazy: see dkim_check

    logger = logging.Logger("relance.dkim")  # unregistered: one per check, then gone
    collected = _Collect()
    logger.addHandler(collected)
    dns_failed: list[str] = []

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        getter = dnsfunc if dnsfunc is not None else dkim.dnsplug.get_txt
        try:
            found = getter(name, timeout=timeout)
        except Exception as exc:
            dns_failed.append(f"{type(exc).__name__}: {exc}")
            raise
        if not found:
            dns_failed.append(f"no DKIM key published at {name.decode(errors='replace')}")
        return found

    record: dict[str, Any] = {}
    try:
        verifier = dkim.DKIM(raw, logger=logger)
        ok = bool(verifier.verify(idx=idx, dnsfunc=lookup))
        fields = verifier.signature_fields or {}
        record = {
            "d": _text(fields.get(b"d")),
            "s": _text(fields.get(b"s")),
            "a": _text(fields.get(b"a")),
            "h": _text(fields.get(b"h")),
        }
        if ok:
            record["result"] = "pass"
        elif dns_failed:
            record["result"] = "temperror"
            record["detail"] = dns_failed[-1]
        else:
            record["result"] = "fail"
            record["detail"] = "; ".join(collected.messages) or "signature does not verify"
    except Exception as exc:  # malformed signature, DNS timeout, broken key...
        record.setdefault("result", "temperror" if dns_failed else "permerror")
        record["detail"] = dns_failed[-1] if dns_failed else f"{type(exc).__name__}: {exc}"
    return record


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return "" if value is None else str(value)


def recorded_dkim(entries: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """DKIM records the daemon kept in the journal on arrival, by Message-ID.

    The convention: an entry with `message_id` and a `dkim` mapping (what `dkim_check`
    returned when the message came in).
    """
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        result = entry.get("dkim")
        message_id = entry.get("message_id")
        if isinstance(result, Mapping) and isinstance(message_id, str) and message_id:
            found.setdefault(message_id, dict(result))
    return found


# -- writing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _MessageInfo:
    file: str
    message: ThreadMessage
    head: Mail
    full: Mail | None
    sha256: str
    direction: str  # "firm" | "client" | "other"
    sort_key: tuple[datetime, str, int]
    authentication_results: tuple[str, ...]


def write_bundle(
    evidence_dir: Path,
    case: Case,
    messages: Sequence[ThreadMessage | tuple[str, int, bytes]],
    journal_entries: Sequence[Mapping[str, Any]],
    invoice_pdfs: Sequence[Attachment],
    dkim_results: Mapping[str, Mapping[str, Any]],
    now: datetime,
    *,
    firm: Firm | None = None,
    documents: Sequence[Attachment] = (),
    dnsfunc: DnsFunc | None = None,
    tz: tzinfo | None = None,
) -> Written:
    """Write one case's bundle and seal it on the ledger; see the module docstring.

    `dkim_results` are records kept when each client message arrived (`dkim_check`), by
    Message-ID; a client message without one is verified now and marked so. `documents`
    are other papers of the case (the formal-notice letter, a scanned receipt). `tz` is
    the firm's time zone (config.tz) for the timeline; `now`'s own zone by default, which
    is wrong across a daylight-saving change when `now` carries a fixed offset.
    """
    if now.tzinfo is None:
        raise ValueError("write_bundle: `now` must carry a time zone")
    evidence_dir = Path(evidence_dir)
    evidence_dir.mkdir(parents=True, exist_ok=True)
    with _ledger_lock(evidence_dir):
        _sweep_temps(evidence_dir)
        lines = _read_ledger_for_append(evidence_dir)
        infos = _message_infos(case, [ThreadMessage(*m) for m in messages], firm)
        files: dict[str, bytes] = {}
        for info in infos:
            files[info.file] = info.message.raw
        taken: set[str] = set()
        invoice_files = []
        for pdf in invoice_pdfs:
            name = "invoice/" + _unique(safe_name(pdf.filename, "invoice.pdf"), taken)
            files[name] = pdf.data
            invoice_files.append(name)
        previous = _latest_line(lines, case.number)
        if previous is not None:  # a new bundle never drops an earlier one's papers
            given = {d.data for d in documents}
            carried = _documents_of(evidence_dir, str(previous["bundle"]))
            documents = [*(d for d in carried if d.data not in given), *documents]
        document_files = []
        for doc in documents:
            name = "documents/" + _unique(safe_name(doc.filename, "document"), taken)
            files[name] = doc.data
            document_files.append(name)
        files[JOURNAL_FILE] = _journal_bytes(journal_entries)

        if previous is not None:
            same = _same_evidence(evidence_dir / previous["bundle"], files, journal_entries)
            if same:
                return Written(evidence_dir / previous["bundle"], previous["manifest_sha256"],
                               previous["hash"], previous["seq"], new=False)

        dkim_doc = _dkim_document(infos, dkim_results, now, dnsfunc)
        files[DKIM_FILE] = _json_bytes(dkim_doc)
        name = _bundle_name(evidence_dir, case.number, lines)
        files[TIMELINE_FILE] = render_timeline(
            case, infos, journal_entries, dkim_doc, firm, invoice_files, document_files, now,
            tz or now.tzinfo,
        ).encode()
        files[SUMS_FILE] = "".join(
            f"{_sha256(files[p])}  {p}\n" for p in sorted(files)
        ).encode()
        manifest = _manifest(name, case, infos, files, invoice_files, document_files, now)
        manifest_bytes = _json_bytes(manifest)
        files[MANIFEST_FILE] = manifest_bytes

        final = evidence_dir / name
        _write_directory(evidence_dir, name, files)
        manifest_digest = _sha256(manifest_bytes)
        entry = _append_ledger(evidence_dir, lines, name, case.number, manifest_digest, now)
        return Written(final, manifest_digest, entry["hash"], entry["seq"], new=True)


def _documents_of(evidence_dir: Path, bundle: str) -> list[Attachment]:
    """The papers of an earlier bundle, checked against its manifest before they are
    sealed again: carrying forward an altered file would launder it."""
    if safe_name(bundle, "") != bundle:
        raise EvidenceError(f"{LEDGER_FILE} names an unsafe bundle path {bundle!r}")
    directory = evidence_dir / bundle
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_bytes())
        listed = {p: v["sha256"] for p, v in manifest["files"].items()
                  if p.startswith("documents/")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    papers = []
    for relative, digest in sorted(listed.items()):
        try:
            data = _inside(directory, relative).read_bytes()
        except OSError:
            data = b""
        if _sha256(data) != digest:
            raise EvidenceError(f"{bundle}/{relative} does not match its manifest; not "
                                "carried into a new bundle (run `relance evidence verify`)")
        papers.append(Attachment(relative.removeprefix("documents/"),
                                 "application/octet-stream", data))
    return papers


def _message_infos(
    case: Case, messages: Sequence[ThreadMessage], firm: Firm | None
) -> list[_MessageInfo]:
    staged = []
    for message in messages:
        try:
            head = parse_headers(header_block(message.raw), message.folder, message.uid)
        except (ParseFailure, ValueError, UnicodeError, LookupError):
            head = Mail(message_id="", subject="", from_addr="", folder=message.folder,
                        uid=message.uid)
        try:
            full: Mail | None = parse_message(message.raw, message.folder, message.uid)
        except (ParseFailure, ValueError, UnicodeError, LookupError):
            full = None
        when = head.date or message.received_at or datetime(1970, 1, 1, tzinfo=UTC)
        staged.append((when, message, head, full))
    staged.sort(key=lambda s: (s[0].astimezone(UTC), s[1].folder, s[1].uid))
    infos = []
    for position, (when, message, head, full) in enumerate(staged, start=1):
        stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        file = f"messages/{position:02d}_{stamp}_{safe_name(message.folder, 'folder')}" \
               f"_uid{int(message.uid)}.eml"
        infos.append(_MessageInfo(
            file=file,
            message=message,
            head=head,
            full=full,
            sha256=_sha256(message.raw),
            direction=_direction(head.from_addr, case, firm),
            sort_key=(when, message.folder, message.uid),
            authentication_results=_auth_results(message.raw),
        ))
    return infos


def _direction(sender: str, case: Case, firm: Firm | None) -> str:
    sender = sender.lower()
    domain = sender.rpartition("@")[2]
    if firm is not None and sender in {*firm.addresses, *firm.owners}:
        return "firm"
    clients = {a.lower() for a in case.client_addrs}
    if sender in clients or (domain and domain in {a.rpartition("@")[2] for a in clients}):
        return "client"
    return "other" if firm is not None else "firm"


def _auth_results(raw: bytes) -> tuple[str, ...]:
    """The receiving servers' Authentication-Results headers, as written on arrival."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header_block(raw)[:256 * 1024])
    return tuple(" ".join(str(v).split()) for v in parsed.get_all("Authentication-Results", []))


def _dkim_document(
    infos: Sequence[_MessageInfo],
    recorded: Mapping[str, Mapping[str, Any]],
    now: datetime,
    dnsfunc: DnsFunc | None,
) -> dict[str, Any]:
    rows = []
    for info in infos:
        if info.direction == "firm":
            continue
        kept = recorded.get(info.head.message_id) if info.head.message_id else None
        if kept is not None:
            result, when = dict(kept), "on-arrival"
        else:
            result, when = dkim_check(info.message.raw, now, dnsfunc), "at-bundle-time"
        rows.append({
            "file": info.file,
            "message_id": info.head.message_id,
            "from": info.head.from_addr,
            "checked": when,
            **result,
            "authentication_results": list(info.authentication_results),
        })
    return {
        "note": (
            "DKIM verified with dkimpy. checked=on-arrival: the result the daemon recorded "
            "when the message came in. checked=at-bundle-time: no result was recorded on "
            "arrival, so the signature was verified when this bundle was written; a key "
            "the sender rotated or withdrew since then makes a genuine message fail or "
            "temperror. authentication_results: what the receiving server wrote on arrival."
        ),
        "messages": rows,
    }


def _manifest(
    name: str,
    case: Case,
    infos: Sequence[_MessageInfo],
    files: Mapping[str, bytes],
    invoice_files: Sequence[str],
    document_files: Sequence[str],
    now: datetime,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "bundle": name,
        "created_at": now.isoformat(),
        "case": _case_facts(case),
        "files": {path: {"sha256": _sha256(data), "bytes": len(data)}
                  for path, data in sorted(files.items())},
        "messages": [
            {
                "file": info.file,
                "folder": info.message.folder,
                "uid": info.message.uid,
                "received_at": info.message.received_at.isoformat()
                if info.message.received_at else None,
                "message_id": info.head.message_id,
                "date": info.head.date.isoformat() if info.head.date else None,
                "from": info.head.from_addr,
                "to": list(info.head.to_addrs),
                "cc": list(info.head.cc_addrs),
                "subject": info.head.subject,
                "direction": info.direction,
                "sha256": info.sha256,
                "attachments": [
                    {"filename": a.filename, "content_type": a.content_type,
                     "bytes": len(a.data), "sha256": _sha256(a.data)}
                    for a in (info.full.attachments if info.full else ())
                ],
            }
            for info in infos
        ],
        "invoice_files": list(invoice_files),
        "documents": list(document_files),
    }


def _case_facts(case: Case) -> dict[str, Any]:
    return {
        "number": case.number,
        "client_name": case.client_name,
        "client_addresses": list(case.client_addrs),
        "subject": case.subject,
        "amount": _str(case.amount),
        "paid": _str(case.paid),
        "balance": _str(case.balance),
        "currency": case.currency,
        "issue_date": _str(case.issue_date),
        "due_date": _str(case.due_date),
        "state": case.state.value,
        "reason": case.reason,
        "root_message_id": case.root_message_id,
        "thread_message_ids": list(case.thread_ids),
        "steps": [
            {"index": s.index, "name": s.name, "at": s.at.isoformat(),
             "message_id": s.message_id, "outcome": s.outcome}
            for s in case.steps
        ],
        "opened_at": _str(case.opened_at),
    }


def _str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _journal_bytes(entries: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(
        json.dumps(dict(e), ensure_ascii=False, default=_json_default) + "\n" for e in entries
    ).encode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True,
                       default=_json_default) + "\n").encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _same_evidence(
    bundle: Path, files: Mapping[str, bytes], entries: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether an earlier bundle already holds exactly these messages, PDFs and journal.

    The journal is compared without its "evidence-written" entries, which only record
    earlier seals: sealing the same thread twice must give the same bundle.
    """
    try:
        manifest = json.loads((bundle / MANIFEST_FILE).read_bytes())
        kept = {
            p: v["sha256"] for p, v in manifest["files"].items()
            if p.startswith(("messages/", "invoice/", "documents/"))
        }
        stored = (bundle / JOURNAL_FILE).read_bytes()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    wanted = {p: _sha256(d) for p, d in files.items()
              if p.startswith(("messages/", "invoice/", "documents/"))}
    return kept == wanted and _without_seals(stored) == _without_seals(_journal_bytes(entries))


def _without_seals(journal: bytes) -> list[bytes]:
    lines = []
    for line in journal.splitlines():
        try:
            if json.loads(line).get("event") == "evidence-written":
                continue
        except (ValueError, AttributeError):
            pass
        lines.append(line)
    return lines


def _bundle_name(evidence_dir: Path, number: str, lines: Sequence[Mapping[str, Any]]) -> str:
    base = bundle_base_name(number)
    used = {str(line.get("bundle")) for line in lines}
    name, version = base, 1
    while name in used or (evidence_dir / name).exists():
        version += 1
        name = f"{base}.v{version}"
    return name


def _write_directory(evidence_dir: Path, name: str, files: Mapping[str, bytes]) -> None:
    """All files into a hidden temp directory, fsynced, then renamed into place whole."""
    tmp = evidence_dir / f"{_TMP_PREFIX}{name}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        directories = {tmp}
        for relative, data in files.items():
            path = _inside(tmp, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            directories.add(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        for directory in directories:
            fsync_dir(directory)
        os.rename(tmp, evidence_dir / name)
        fsync_dir(evidence_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sweep_temps(evidence_dir: Path) -> None:
    """Temp directories a killed writer left behind (only ever under the ledger lock)."""
    for leftover in evidence_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


# -- the ledger ------------------------------------------------------------------------


@contextlib.contextmanager
def _ledger_lock(evidence_dir: Path) -> Iterator[None]:
    """One writer at a time: the daemon closing a case and `relance evidence export`."""
    fd = os.open(evidence_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def line_hash(entry: Mapping[str, Any]) -> str:
    """The hash of a ledger line: SHA-256 of its fields but `hash`, as canonical JSON."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return _sha256(canonical.encode("utf-8"))


def _read_ledger_lines(evidence_dir: Path) -> list[bytes] | None:
    try:
        data = (evidence_dir / LEDGER_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return data.splitlines()


def _read_ledger_for_append(evidence_dir: Path) -> list[dict[str, Any]]:
    """The ledger's entries, refusing to append to one that is damaged."""
    raw_lines = _read_ledger_lines(evidence_dir) or []
    entries = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
                raise ValueError("not a ledger entry")
        except ValueError:
            raise EvidenceError(
                f"{evidence_dir / LEDGER_FILE}:{number}: not a ledger entry; nothing is "
                "appended to a damaged ledger (run `relance evidence verify`)"
            ) from None
        entries.append(entry)
    return entries


def _latest_line(lines: Sequence[Mapping[str, Any]], number: str) -> dict[str, Any] | None:
    for entry in reversed(lines):
        if entry.get("number") == number:
            return dict(entry)
    return None


def _append_ledger(
    evidence_dir: Path,
    lines: Sequence[Mapping[str, Any]],
    bundle: str,
    number: str,
    manifest_digest: str,
    now: datetime,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "seq": len(lines) + 1,
        "at": now.isoformat(),
        "bundle": bundle,
        "number": number,
        "manifest_sha256": manifest_digest,
        "prev": lines[-1]["hash"] if lines else GENESIS,
    }
    entry["hash"] = line_hash(entry)
    data = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    path = evidence_dir / LEDGER_FILE
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise EvidenceError(f"{path}: short write (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(evidence_dir)
    return entry


def ledger_head(evidence_dir: Path) -> str | None:
    """The hash of the ledger's last line: the one value to keep outside the machine."""
    raw_lines = _read_ledger_lines(Path(evidence_dir)) or []
    for raw in reversed(raw_lines):
        with contextlib.suppress(ValueError, AttributeError):
            value = json.loads(raw).get("hash")
            if isinstance(value, str):
                return value
    return None


def latest_bundle(evidence_dir: Path, number: str) -> Path | None:
    """The newest bundle the ledger holds for an invoice number."""
    try:
        lines = _read_ledger_for_append(Path(evidence_dir))
    except EvidenceError:
        lines = []
        for raw in _read_ledger_lines(Path(evidence_dir)) or []:
            with contextlib.suppress(ValueError):
                entry = json.loads(raw)
                if isinstance(entry, dict):
                    lines.append(entry)
    entry = _latest_line(lines, number)
    if entry is None:
        return None
    name = str(entry.get("bundle", ""))
    if not name or safe_name(name, "") != name:
        raise EvidenceError(f"{LEDGER_FILE}: case {number} names an unsafe bundle path {name!r}")
    return Path(evidence_dir) / name


# -- verifying -------------------------------------------------------------------------


def verify(evidence_dir: Path, only: Iterable[str] | None = None) -> list[Problem]:
    """Check every bundle against its manifest and every manifest against the chain.

    Returns one Problem per difference, naming the file or ledger line: an altered byte
    (which file), a deleted or extra file, an edited manifest, bundles swapped or
    renamed, ledger lines edited, removed or reordered, a bundle not in the ledger.
    `only` limits the file checks to the named bundles (the chain is always checked).
    """
    evidence_dir = Path(evidence_dir)
    problems: list[Problem] = []
    wanted = None if only is None else set(only)
    raw_lines = _read_ledger_lines(evidence_dir)
    on_disk = sorted(
        p.name for p in evidence_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".")
    ) if evidence_dir.is_dir() else []
    if raw_lines is None:
        if on_disk:
            problems.append(Problem(LEDGER_FILE, "missing, yet bundles exist: the ledger was "
                                                 "deleted or moved"))
        for name in on_disk:
            if wanted is None or name in wanted:
                problems.append(Problem(name, "bundle is not in the ledger"))
        return problems

    entries: list[tuple[int, dict[str, Any]]] = []
    prev_hash: str | None = GENESIS
    seen_bundles: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError
        except ValueError:
            problems.append(Problem(LEDGER_FILE, "not a ledger entry (damaged or edited)",
                                    number))
            prev_hash = None
            continue
        missing = [k for k in ("seq", "bundle", "manifest_sha256", "prev", "hash")
                   if not isinstance(entry.get(k), (str, int))]
        if missing:
            problems.append(Problem(LEDGER_FILE, f"entry lacks {', '.join(missing)}", number))
            prev_hash = None
            continue
        if line_hash(entry) != entry["hash"]:
            problems.append(Problem(LEDGER_FILE, "line edited: its hash does not match its "
                                                 "content", number))
        if entry["seq"] != number:
            problems.append(Problem(
                LEDGER_FILE,
                f"holds entry #{entry['seq']} (bundle {entry['bundle']}) where entry "
                f"#{number} belongs: ledger lines removed, inserted or reordered", number))
        if prev_hash is not None and entry["prev"] != prev_hash:
            before = "the chain's start" if number == 1 else f"line {number - 1}'s hash"
            problems.append(Problem(
                LEDGER_FILE,
                f"chain broken: 'prev' does not match {before} (bundle {entry['bundle']}: "
                "a line before it was removed, inserted, edited, or lines were swapped)",
                number))
        prev_hash = entry["hash"]
        bundle = str(entry["bundle"])
        if bundle in seen_bundles:
            problems.append(Problem(LEDGER_FILE, f"bundle {bundle} is already on line "
                                                 f"{seen_bundles[bundle]}", number))
        seen_bundles.setdefault(bundle, number)
        entries.append((number, entry))

    by_digest = {str(e["manifest_sha256"]): (n, str(e["bundle"])) for n, e in entries}
    for number, entry in entries:
        bundle = str(entry["bundle"])
        if wanted is not None and bundle not in wanted:
            continue
        problems.extend(_verify_bundle(evidence_dir, number, entry, by_digest))
    for name in on_disk:
        if name not in seen_bundles and (wanted is None or name in wanted):
            problems.append(Problem(name, "bundle is not in the ledger (added or renamed by "
                                          "hand, or written when the ledger append failed)"))
    return problems


def _verify_bundle(
    evidence_dir: Path,
    line: int,
    entry: Mapping[str, Any],
    by_digest: Mapping[str, tuple[int, str]],
) -> list[Problem]:
    bundle = str(entry["bundle"])
    if safe_name(bundle, "") != bundle:
        return [Problem(LEDGER_FILE, f"names an unsafe bundle path {bundle!r}", line)]
    directory = evidence_dir / bundle
    if not directory.is_dir():
        return [Problem(bundle, f"bundle missing (listed on {LEDGER_FILE} line {line})")]
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError:
        return [Problem(f"{bundle}/{MANIFEST_FILE}", "missing: the bundle cannot be checked")]
    problems = []
    digest = _sha256(manifest_bytes)
    if digest != entry["manifest_sha256"]:
        other = by_digest.get(digest)
        if other is not None and other[1] != bundle:
            problems.append(Problem(
                bundle,
                f"holds the bundle of {LEDGER_FILE} line {other[0]} ({other[1]}), not its own "
                f"(line {line}): bundles swapped or renamed"))
        else:
            problems.append(Problem(
                f"{bundle}/{MANIFEST_FILE}",
                f"edited: its SHA-256 {digest[:16]}… differs from {LEDGER_FILE} line {line} "
                f"({str(entry['manifest_sha256'])[:16]}…)"))
    try:
        manifest = json.loads(manifest_bytes)
        listed = manifest["files"]
        if not isinstance(listed, dict):
            raise TypeError("files is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(Problem(f"{bundle}/{MANIFEST_FILE}", f"unreadable manifest ({exc})"))
        return problems
    for relative, info in sorted(listed.items()):
        shown = f"{bundle}/{relative}"
        try:
            path = _inside(directory, relative)
        except EvidenceError:
            problems.append(Problem(shown, "manifest names a path outside the bundle"))
            continue
        if path.is_symlink():
            problems.append(Problem(shown, "is a symbolic link, not the file sealed"))
            continue
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problems.append(Problem(shown, "deleted: listed in the manifest, not in the bundle"))
            continue
        except OSError as exc:
            problems.append(Problem(shown, f"unreadable: {exc}"))
            continue
        expected = info.get("sha256") if isinstance(info, dict) else None
        actual = _sha256(data)
        if actual != expected:
            size = info.get("bytes") if isinstance(info, dict) else None
            problems.append(Problem(
                shown,
                f"altered: SHA-256 {actual[:16]}… where the manifest says "
                f"{str(expected)[:16]}…" + (f" ({len(data)} bytes, sealed {size})"
                                            if size != len(data) else "")))
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_FILE or relative in listed:
            continue
        if path.is_dir() and not path.is_symlink():
            continue
        problems.append(Problem(f"{bundle}/{relative}", "extra file, not in the manifest"))
    return problems


# -- export ----------------------------------------------------------------------------


def export(evidence_dir: Path, number: str, out_dir: Path) -> Path:
    """Copy the case's newest bundle into `out_dir/<bundle>/` and zip it (with the ledger,
    so the chain can be checked elsewhere) as `out_dir/<bundle>.zip`; returns the zip.

    Refuses a bundle that does not verify, or a ledger that is broken: what leaves for a
    lawyer must be what was sealed.
    """
    evidence_dir = Path(evidence_dir)
    bundle = latest_bundle(evidence_dir, number)
    if bundle is None:
        raise EvidenceError(f"no evidence bundle for {number} in {evidence_dir}")
    problems = [p for p in verify(evidence_dir, only=[bundle.name])
                if p.path == LEDGER_FILE or p.path.split("/")[0] == bundle.name]
    if problems:
        raise EvidenceError(
            f"bundle {bundle.name} does not verify; not exported:\n"
            + "\n".join(f"  {p}" for p in problems))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = out_dir / bundle.name
    archive = out_dir / f"{bundle.name}.zip"
    for target in (copy, archive):
        if target.exists():
            raise EvidenceError(f"{target} exists; remove it or choose another --out")
    shutil.copytree(bundle, copy, symlinks=False)
    manifest = json.loads((bundle / MANIFEST_FILE).read_bytes())
    stamp = _zip_time(str(manifest.get("created_at", "")))
    members = sorted(p for p in copy.rglob("*") if p.is_file())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in members:
            _zip_add(zipped, f"{bundle.name}/{path.relative_to(copy).as_posix()}",
                     path.read_bytes(), stamp)
        _zip_add(zipped, LEDGER_FILE, (evidence_dir / LEDGER_FILE).read_bytes(), stamp)
    tmp = archive.with_name(f".{archive.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, archive)
    return archive


def _zip_time(created_at: str) -> tuple[int, int, int, int, int, int]:
    try:
        when = datetime.fromisoformat(created_at)
    except ValueError:
        when = datetime(1980, 1, 1)
    return (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)


def _zip_add(
    zipped: zipfile.ZipFile, name: str, data: bytes, stamp: tuple[int, int, int, int, int, int]
) -> None:
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zipped.writestr(info, data)


# -- the timeline ----------------------------------------------------------------------

_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
           "septembre", "octobre", "novembre", "décembre")
_STATES = {
    "chasing": "relances en cours", "paused": "en pause", "paid": "payée",
    "stopped": "arrêtée", "needs_facts": "faits manquants", "bad_address": "adresse invalide",
    "formal_notice": "mise en demeure", "done": "calendrier terminé",
}
_EVENTS = {
    "invoice-found": "Facture repérée dans la boîte d'envoi",
    "invoice-resent": "Facture renvoyée par l'entreprise",
    "firm-wrote": "L'entreprise a écrit dans le fil",
    "client-replied": "Réponse du client reçue",
    "auto-reply": "Réponse automatique reçue",
    "bounce": "Avis de non-remise reçu",
    "reminder-sent": "Relance remise au serveur d'envoi",
    "reminder-unknown": "Relance : issue de l'envoi inconnue",
    "reminder-failed": "Relance : envoi refusé",
    "reminder-drafted": "Relance préparée en brouillon",
    "send-resolved": "Envoi vérifié après redémarrage",
    "handed-over": "Étape confiée au dirigeant",
    "owner-notified": "Dirigeant prévenu",
    "owner-paid": "Paiement enregistré par le dirigeant",
    "owner-pause": "Pause décidée par le dirigeant",
    "owner-resume": "Reprise décidée par le dirigeant",
    "owner-stop": "Arrêt décidé par le dirigeant",
    "owner-sent-lrar": "Mise en demeure envoyée en recommandé avec AR",
    "evidence-written": "Dossier de preuve scellé",
    "thread-archived": "Fil archivé dans la boîte aux lettres",
}
_DETAIL_NAMES = {
    "smtp_reply": "réponse du serveur d'envoi", "message_id": "Message-ID", "step": "étape",
    "step_name": "nom de l'étape", "amount": "montant", "currency": "devise",
    "due": "échéance", "client": "client", "sender": "expéditeur", "state": "état",
    "via": "par", "folder": "dossier", "moved": "messages déplacés", "copied": "copiés",
    "method": "méthode", "source": "source des faits", "subject": "objet", "to": "à",
    "paid": "réglé", "sent_on": "posté le", "balance": "reste dû", "days_late": "jours de retard",
    "reason": "motif", "channel": "canal", "kind": "type", "status": "statut",
    "failed": "adresses refusées", "bundle": "dossier de preuve", "paused_until": "pause jusqu'au",
}
_DKIM_WORDS = {"pass": "signature valide", "fail": "signature invalide",
               "none": "message non signé", "temperror": "clé de signature introuvable",
               "permerror": "signature illisible"}
_DIRECTION = {"firm": "Entreprise → client", "client": "Client → entreprise",
              "other": "Tiers"}
_CSS = """
body{font:14px/1.4 Georgia,'DejaVu Serif',serif;color:#1d1d1d;background:#fff;
max-width:62em;margin:1.2em auto;padding:0 1em}
h1{font-size:1.35em;margin:.1em 0 .4em}
dl.facts{display:grid;grid-template-columns:9.5em 1fr 9.5em 1fr;gap:.1em .8em;margin:0 0 .6em}
dl.facts dt{color:#666}
dl.facts dd{margin:0}
ol.timeline{list-style:none;padding:0;margin:.8em 0 0;border-left:3px solid #c9c9c9}
ol.timeline>li{margin:0 0 .55em .9em;padding:.35em .7em .4em;position:relative}
ol.timeline>li:before{content:"";position:absolute;left:-1.4em;top:.7em;width:.7em;
height:.7em;border-radius:50%;background:#888}
li.firm:before{background:#1f5fa8!important}
li.client:before{background:#b5651d!important}
li.event{padding-top:.1em;padding-bottom:.1em}
li.event:before{background:#fff!important;border:2px solid #999;width:.45em;height:.45em}
li.msg{background:#f3f5f8;border-radius:4px;border-left:3px solid #1f5fa8}
li.client{background:#fbf1e6;border-left-color:#b5651d}
li.other{border-left-color:#888}
.when{font-weight:bold}
.who{color:#555;margin:0 .6em}
.subject{font-style:italic}
dl.meta{display:grid;grid-template-columns:11em 1fr;margin:.25em 0;font-size:.84em;
line-height:1.3}
dl.meta dt{color:#666}
dl.meta dd{margin:0;word-break:break-all}
blockquote{margin:.3em 0;padding:.25em .7em;border-left:3px solid #bbb;white-space:pre-wrap;
font-family:'DejaVu Sans',Arial,sans-serif;font-size:.84em;background:#fff}
.att{font-size:.86em;margin:.2em 0}
.event .what{font-style:italic;margin-left:.2em}
.small{font-size:.8em;color:#555}
code{font-size:.9em}
footer{margin-top:1.5em;border-top:1px solid #ccc;padding-top:.5em;font-size:.82em;color:#444}
"""


def _fr_date(value: date) -> str:
    day = "1er" if value.day == 1 else str(value.day)
    return f"{day} {_MONTHS[value.month - 1]} {value.year}"


def _fr_datetime(value: datetime, tz: tzinfo | None) -> str:
    local = value.astimezone(tz) if value.tzinfo else value
    return f"{_fr_date(local.date())} à {local:%H:%M}"


def _fr_money(amount: str | Decimal | None, currency: str) -> str:
    if amount is None:
        return "inconnu"
    value = Decimal(str(amount)).quantize(Decimal("0.01"))
    units, _, cents = f"{abs(value):.2f}".partition(".")
    grouped = f"{int(units):,}".replace(",", "\u202f")
    return f"{'-' if value < 0 else ''}{grouped},{cents} {currency}"


def _size(n: int) -> str:
    return f"{n} octets" if n < 1024 else f"{n / 1024:.0f} Ko" if n < 1024 * 1024 \
        else f"{n / 1024 / 1024:.1f} Mo"


def render_timeline(
    case: Case,
    infos: Sequence[_MessageInfo],
    journal_entries: Sequence[Mapping[str, Any]],
    dkim_doc: Mapping[str, Any],
    firm: Firm | None,
    invoice_files: Sequence[str],
    document_files: Sequence[str],
    now: datetime,
    tz: tzinfo | None,
) -> str:
    """A page a judge can read: who wrote what, when, with what attached; and what the
    daemon did. Everything from mail is escaped; there is no script."""
    e = html.escape
    dkim_by_file = {row["file"]: row for row in dkim_doc.get("messages", ())}
    items: list[tuple[datetime, int, str]] = []
    for order, info in enumerate(infos):
        items.append((info.sort_key[0], order, _message_item(info, dkim_by_file, tz)))
    for order, entry in enumerate(journal_entries):
        when = _parse_instant(entry.get("at"))
        if when is None:
            continue
        items.append((when, len(infos) + order, _event_item(entry, tz)))
    items.sort(key=lambda item: (item[0].astimezone(UTC), item[1]))

    firm_name = firm.name if firm is not None else ""
    facts = [
        ("Facture", case.number),
        ("Client", case.client_name or "—"),
        ("Adresses du client", ", ".join(case.client_addrs) or "—"),
        ("Objet du fil", case.subject or "—"),
        ("Date de facture", _fr_date(case.issue_date) if case.issue_date else "inconnue"),
        ("Échéance", _fr_date(case.due_date) if case.due_date else "inconnue"),
        ("Montant TTC", _fr_money(case.amount, case.currency)),
        ("Déjà réglé", _fr_money(case.paid, case.currency)),
        ("Reste dû", _fr_money(case.balance, case.currency)),
        ("État", _STATES.get(case.state.value, case.state.value)
         + (f" — {case.reason}" if case.reason else "")),
    ]
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)
    papers = [f'<a href="{e(p)}">{e(p)}</a>' for p in (*invoice_files, *document_files)]
    return (
        "<!DOCTYPE html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\">"
        f"<title>Chronologie — facture n° {e(case.number)}</title>"
        f"<style>{_CSS}</style></head><body>\n"
        f"<header><div class=\"small\">{e(firm_name)}</div>"
        f"<h1>Chronologie de la facture n° {e(case.number)}</h1>"
        f"<dl class=\"facts\">{rows}</dl>"
        + (f"<p class=\"att\">Pièces : {', '.join(papers)}</p>" if papers else "")
        + "</header>\n<ol class=\"timeline\">\n"
        + "\n".join(item for _, _, item in items)
        + "\n</ol>\n<footer>"
        f"Dossier établi le {e(_fr_datetime(now, tz))} par relance"
        + (f" pour {e(firm_name)}" if firm_name else "")
        + ". Chaque message est joint tel que le serveur de messagerie le conservait "
        "(fichiers <code>.eml</code>) ; <code>manifest.json</code> donne l'empreinte "
        "SHA-256 de chaque fichier et <code>SHA256SUMS</code> permet de les vérifier "
        "(<code>sha256sum -c SHA256SUMS</code>). Les heures sont celles du fuseau "
        f"{e(str(tz))}.</footer>\n</body></html>\n"
    )


def _message_item(
    info: _MessageInfo, dkim_by_file: Mapping[str, Any], tz: tzinfo | None
) -> str:
    e = html.escape
    head = info.head
    mail = info.full or head
    when = _fr_datetime(info.sort_key[0], tz)
    sender = f"{head.from_name} <{head.from_addr}>" if head.from_name else head.from_addr
    meta = [("De", sender or "—"), ("À", ", ".join(head.to_addrs) or "—")]
    if head.cc_addrs:
        meta.append(("Cc", ", ".join(head.cc_addrs)))
    meta.append(("Message-ID", head.message_id or "—"))
    if info.message.received_at is not None:
        meta.append(("Reçu par le serveur", _fr_datetime(info.message.received_at, tz)))
    meta.append(("Dossier IMAP", f"{info.message.folder} (UID {info.message.uid})"))
    row = dkim_by_file.get(info.file)
    if row is not None:
        signers = ", ".join(f"d={s.get('d', '')}" for s in row.get("signatures", ())
                            if s.get("d"))
        checked = "à réception" if row.get("checked") == "on-arrival" else \
            "à l'établissement du dossier"
        result = str(row.get("result"))
        meta.append(("DKIM", f"{_DKIM_WORDS.get(result, result)} ({result}"
                             f"{', ' + signers if signers else ''}), vérifié {checked}"))
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in meta)
    attachments = [
        f"{e(a.filename)} ({e(_size(len(a.data)))}, SHA-256 "
        f"<code>{hashlib.sha256(a.data).hexdigest()[:16]}…</code>)"
        for a in mail.attachments
    ]
    att = (f"<p class=\"att\">Pièces jointes : {'; '.join(attachments)}</p>"
           if attachments else "<p class=\"att\">Aucune pièce jointe.</p>")
    excerpt = reply_excerpt(mail.text, max_lines=8, max_chars=600) if mail.text else ""
    excerpt = re.sub(r"\n\s*\n+", "\n", excerpt)  # the whole text is in the .eml
    quote = f"<blockquote>{e(excerpt)}</blockquote>" if excerpt.strip() else ""
    return (
        f"<li class=\"msg {e(info.direction)}\"><span class=\"when\">{e(when)}</span>"
        f"<span class=\"who\">{e(_DIRECTION.get(info.direction, info.direction))}</span>"
        f"<span class=\"subject\">{e(head.subject or '(sans objet)')}</span>"
        f"<dl class=\"meta\">{dl}</dl>{att}{quote}"
        f"<div class=\"small\">Message original : <a href=\"{e(info.file)}\">"
        f"{e(info.file)}</a></div></li>"
    )


def _event_item(entry: Mapping[str, Any], tz: tzinfo | None) -> str:
    e = html.escape
    when = _parse_instant(entry.get("at"))
    name = str(entry.get("event", ""))
    label = _EVENTS.get(name, name)
    details = {k: v for k, v in entry.items()
               if k not in ("at", "case", "event", "dkim") and v not in (None, "", [], {})}
    shown = "; ".join(f"{_DETAIL_NAMES.get(k, k)} : {_detail(v)}" for k, v in details.items())
    return (
        f"<li class=\"event\"><span class=\"when\">{e(_fr_datetime(when, tz) if when else '')}"
        f"</span><span class=\"who\">relance</span>"
        f"<span class=\"what\">{e(label)}</span>"
        + (f"<div class=\"small\">{e(shown)}</div>" if shown else "")
        + "</li>"
    )


def _detail(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _parse_instant(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
