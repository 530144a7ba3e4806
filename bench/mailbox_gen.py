"""Build a firm's mailbox of 1k, 10k or 100k messages for the benchmarks, fast.

Messages are written once as Maildir files (deterministic from a seed) into
build/bench/corpus-N/, then hard-linked into a Dovecot user's Maildir (`cur/`, named the
Maildir way with `,S=size`): 100k messages install in seconds where APPEND one by one
takes minutes. Dovecot only ever renames or deletes Maildir files, so several users (and
runs) can share the same files.

The mix, as a share of all messages (years of a small firm's mail):
- Sent: open invoices (10 %, issued in the last 90 days, due in 10 to 60 days, a PDF
  attached), old invoices (5 %, more than 130 days old: adopted as done), quotes with a
  PDF (3 %), the firm's ordinary mail (22 %);
- INBOX: client replies in an invoice's thread (3 %), out-of-office replies (0.5 %), other
  mail from client domains (1.5 %), newsletters (HTML, 25 %), suppliers, the bank and
  colleagues (the rest).

`python -m bench.mailbox_gen --sizes 1k 10k 100k` builds the corpora and prints their
shape; bench scripts call `install(dovecot, n)`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.header import Header
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from bench import (
    BILLING_ADDRESS,
    FIRM_ADDRESS,
    FIRM_NAME,
    NOW,
    WORK_DIR,
    parse_sizes,
    size_label,
)

SEED = 20260302
CORPUS_VERSION = 2  # bump when the generated mail changes: cached corpora are rebuilt
FIRM_DOMAIN = "atelier.example"
CLIENTS = 400
FOLDERS = ("INBOX", "Sent")

SHARES = {  # of all messages; the rest of INBOX is "other" mail
    "invoice": 0.10,
    "old_invoice": 0.05,
    "quote": 0.03,
    "firm_mail": 0.22,
    "reply": 0.03,
    "auto_reply": 0.005,
    "client_mail": 0.015,
    "newsletter": 0.25,
}


@dataclass(frozen=True)
class Invoice:
    number: str
    message_id: str
    client: int
    issued: datetime
    due: date
    amount: str


@dataclass(frozen=True)
class Corpus:
    """A generated mailbox on disk and what it holds."""

    size: int
    path: Path
    manifest: dict[str, Any]

    def folder_dir(self, folder: str) -> Path:
        return self.path / folder

    @property
    def open_invoices(self) -> int:
        return int(self.manifest["counts"]["invoice"])


# --- the pieces of a message ---------------------------------------------------------


def client_address(i: int) -> str:
    return f"contact@client{i:03d}.example"


def client_name(i: int) -> str:
    return f"Client {i:03d} SARL"


def _encoded(text: str) -> str:
    """A header value as RFC 2047 words when it is not ASCII (as mail programs write it)."""
    try:
        text.encode("ascii")
        return text
    except UnicodeEncodeError:
        return Header(text, "utf-8").encode()


def _headers(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{name}: {value}\n" for name, value in pairs)


def _b64(data: bytes) -> str:
    return "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76)) + "\n"


_VOCAB = (
    "chantier", "menuiserie", "devis", "pose", "parquet", "escalier", "fenêtre", "rendez-vous",
    "semaine", "livraison", "bois", "chêne", "mesure", "client", "atelier", "équipe",
    "planning", "matériel", "commande", "suivi", "question", "merci", "bonne", "journée",
    "cordialement", "lundi", "mardi", "jeudi",
)


def _lorem(rng: random.Random, words: int) -> str:
    vocab = _VOCAB
    out = " ".join(rng.choice(vocab) for _ in range(words))
    return textwrap.fill(out.capitalize() + ".", 72)


def pdf_document(lines: list[str], pad: int, rng: random.Random) -> bytes:
    """A one-page PDF with these text lines (Helvetica, WinAnsi) and a `pad`-byte image,
    as invoicing software makes them: the text for pypdf, the logo for realistic size."""
    text = "".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*\n"
        for line in lines
    )
    content = (f"q 120 0 0 40 420 770 cm /Im1 Do Q\nBT /F1 11 Tf 14 TL 60 760 Td\n{text}ET\n"
               ).encode("latin-1")
    width = 100
    height = max(1, pad // width)
    image = zlib.compress(rng.randbytes(width * height), 1)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 5 0 R "
        b"/Resources << /Font << /F1 4 0 R >> /XObject << /Im1 6 0 R >> >> >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n"
        % (width, height, len(image)) + image + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def _money(rng: random.Random) -> str:
    cents = rng.randint(8_000, 950_000)
    euros, rest = divmod(cents, 100)
    grouped = f"{euros:,}".replace(",", " ")
    return f"{grouped},{rest:02d}"


def invoice_message(inv: Invoice, rng: random.Random) -> bytes:
    firm = f"Atelier Dupont - Comptabilité <{FIRM_ADDRESS}>"
    pdf = pdf_document(
        [FIRM_NAME, f"Facture n\xb0 {inv.number}", f"Date de facture : {inv.issued:%d/%m/%Y}",
         f"Date d'\xe9ch\xe9ance : {inv.due:%d/%m/%Y}", f"Client : {client_name(inv.client)}",
         "Prestations de menuiserie", f"Total TTC : {inv.amount} EUR"],
        rng.randint(8_000, 24_000), rng)
    body = (f"Bonjour,\n\nVeuillez trouver ci-joint notre facture n° {inv.number} du "
            f"{inv.issued:%d/%m/%Y}.\n\nMontant : {inv.amount} € TTC\n"
            f"Échéance : {inv.due:%d/%m/%Y}\n\nRèglement par virement : "
            "FR76 3000 6000 0112 3456 7890 189\n\nBien cordialement,\n" + FIRM_NAME + "\n")
    return _multipart(
        [("From", _encoded(firm)),
         ("To", f"{client_name(inv.client)} <{client_address(inv.client)}>"),
         ("Subject", _encoded(f"Facture n° {inv.number}")),
         ("Date", format_datetime(inv.issued)), ("Message-ID", inv.message_id),
         ("X-Mailer", "Facturation Pro 7.2")],
        body, [(f"{inv.number}.pdf", "application/pdf", pdf)])


def _multipart(headers: list[tuple[str, str]], body: str,
               attachments: list[tuple[str, str, bytes]]) -> bytes:
    message_id = dict(headers)["Message-ID"]
    boundary = "=_bench_" + message_id.strip("<>").replace("@", "_")[:40]
    parts = [
        f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n"
        f"Content-Transfer-Encoding: 8bit\n\n{body}\n"
    ]
    for filename, content_type, data in attachments:
        parts.append(
            f"--{boundary}\nContent-Type: {content_type}; name=\"{filename}\"\n"
            f"Content-Disposition: attachment; filename=\"{filename}\"\n"
            f"Content-Transfer-Encoding: base64\n\n{_b64(data)}"
        )
    head = _headers([*headers, ("MIME-Version", "1.0"),
                     ("Content-Type", f'multipart/mixed; boundary="{boundary}"')])
    return (head + "\n" + "".join(parts) + f"--{boundary}--\n").encode("utf-8")


def _plain(headers: list[tuple[str, str]], body: str) -> bytes:
    head = _headers([*headers, ("MIME-Version", "1.0"),
                     ("Content-Type", "text/plain; charset=utf-8"),
                     ("Content-Transfer-Encoding", "8bit")])
    return (head + "\n" + body).encode("utf-8")


def reply_message(inv: Invoice, when: datetime, message_id: str, rng: random.Random,
                  text: str | None = None) -> bytes:
    quoted = "\n".join("> " + line for line in (
        f"Veuillez trouver ci-joint notre facture n° {inv.number}.",
        f"Montant : {inv.amount} € TTC", "Bien cordialement,", FIRM_NAME))
    body = (text or rng.choice([
        "Bonjour,\n\nBien reçu, le règlement partira en fin de semaine.\n",
        "Bonjour,\n\nPouvez-vous nous renvoyer la facture avec notre numéro de commande ?\n",
        "Bonjour,\n\nNous contestons le montant de la pose, merci de nous rappeler.\n",
    ])) + f"\nCordialement,\n{client_name(inv.client)}\n\n{quoted}\n"
    return _plain(
        [("From", f"{client_name(inv.client)} <{client_address(inv.client)}>"),
         ("To", _encoded(f"Atelier Dupont - Comptabilité <{FIRM_ADDRESS}>")),
         ("Subject", _encoded(f"RE: Facture n° {inv.number}")),
         ("Date", format_datetime(when)), ("Message-ID", message_id),
         ("In-Reply-To", inv.message_id), ("References", inv.message_id)],
        body + _lorem(rng, rng.randint(20, 200)) + "\n")


def _auto_reply(inv: Invoice, when: datetime, message_id: str, rng: random.Random) -> bytes:
    back = when.date() + timedelta(days=rng.randint(3, 20))
    return _plain(
        [("From", f"{client_name(inv.client)} <{client_address(inv.client)}>"),
         ("To", FIRM_ADDRESS),
         ("Subject", _encoded(f"Réponse automatique : Facture n° {inv.number}")),
         ("Date", format_datetime(when)), ("Message-ID", message_id),
         ("In-Reply-To", inv.message_id), ("Auto-Submitted", "auto-replied")],
        f"Bonjour,\n\nJe suis absente jusqu'au {back:%d/%m/%Y}.\n")


# --- the mailbox ---------------------------------------------------------------------


def _spread(rng: random.Random, start: datetime, end: datetime) -> datetime:
    span = (end - start).total_seconds()
    moment = start + timedelta(seconds=rng.uniform(0, span))
    return moment.replace(microsecond=0)


def generate(
    size: int, seed: int = SEED, now: datetime = NOW
) -> Iterator[tuple[str, datetime, bytes, str]]:
    """(folder, date, raw message, kind) for a mailbox of `size` messages, unordered."""
    rng = random.Random(seed + size)
    counts = {kind: round(size * share) for kind, share in SHARES.items()}
    counts["other"] = size - sum(counts.values())
    two_years = now - timedelta(days=730)
    invoices: list[Invoice] = []
    for kind, first, last, count in (
        ("invoice", now - timedelta(days=90), now - timedelta(hours=2), counts["invoice"]),
        ("old_invoice", two_years, now - timedelta(days=130), counts["old_invoice"]),
    ):
        for _ in range(count):
            issued = _spread(rng, first, last)
            if kind == "invoice":
                due = now.date() + timedelta(days=rng.randint(10, 60))
            else:
                due = issued.date() + timedelta(days=30)
            n = len(invoices) + 1
            inv = Invoice(f"F-{issued.year}-{n:06d}", f"<inv-{n:06d}@{FIRM_DOMAIN}>",
                          rng.randrange(CLIENTS), issued, due, _money(rng))
            invoices.append(inv)
            yield "Sent", issued, invoice_message(inv, rng), kind
    for n in range(counts["quote"]):
        when = _spread(rng, two_years, now)
        client = rng.randrange(CLIENTS)
        pdf = pdf_document([FIRM_NAME, f"Devis n\xb0 D-{n:06d}", f"Date : {when:%d/%m/%Y}",
                            f"Total TTC : {_money(rng)} EUR", "Devis valable 30 jours"],
                           rng.randint(6_000, 16_000), rng)
        yield "Sent", when, _multipart(
            [("From", FIRM_ADDRESS), ("To", client_address(client)),
             ("Subject", f"Devis D-{n:06d} - pose parquet"), ("Date", format_datetime(when)),
             ("Message-ID", f"<quote-{n:06d}@{FIRM_DOMAIN}>")],
            "Bonjour,\n\nVoici notre devis, valable 30 jours.\n\nCordialement\n",
            [(f"D-{n:06d}.pdf", "application/pdf", pdf)]), "quote"
    for n in range(counts["firm_mail"]):
        when = _spread(rng, two_years, now)
        to = (client_address(rng.randrange(CLIENTS)) if rng.random() < 0.5
              else f"contact@fournisseur{rng.randrange(80)}.example")
        sender = rng.choice((FIRM_ADDRESS, BILLING_ADDRESS, FIRM_ADDRESS))
        yield "Sent", when, _plain(
            [("From", sender), ("To", to),
             ("Subject", rng.choice(["Rendez-vous chantier", "Planning de la semaine",
                                     "Re: livraison", "Commande bois", "Mesures fenêtres"])),
             ("Date", format_datetime(when)), ("Message-ID", f"<firm-{n:06d}@{FIRM_DOMAIN}>")],
            _lorem(rng, rng.randint(40, 500)) + "\n"), "firm_mail"
    recent = [inv for inv in invoices if inv.issued > now - timedelta(days=90)] or invoices
    for n in range(counts["reply"]):
        inv = rng.choice(recent if rng.random() < 0.8 else invoices)
        when = min(inv.issued + timedelta(hours=rng.randint(2, 120)), now - timedelta(minutes=5))
        yield "INBOX", when, reply_message(
            inv, when, f"<reply-{n:06d}@client{inv.client:03d}.example>", rng), "reply"
    for n in range(counts["auto_reply"]):
        inv = rng.choice(recent)
        when = min(inv.issued + timedelta(minutes=rng.randint(1, 30)), now - timedelta(minutes=5))
        yield "INBOX", when, _auto_reply(
            inv, when, f"<ooo-{n:06d}@client{inv.client:03d}.example>", rng), "auto_reply"
    for n in range(counts["client_mail"]):
        when = _spread(rng, two_years, now)
        client = rng.randrange(CLIENTS)
        yield "INBOX", when, _plain(
            [("From", f"{client_name(client)} <{client_address(client)}>"), ("To", FIRM_ADDRESS),
             ("Subject", rng.choice(["Question sur le chantier", "Nouveau projet", "Horaires"])),
             ("Date", format_datetime(when)),
             ("Message-ID", f"<cm-{n:06d}@client{client:03d}.example>")],
            _lorem(rng, rng.randint(30, 300)) + "\n"), "client_mail"
    for n in range(counts["newsletter"]):
        when = _spread(rng, two_years, now)
        html = "<html><body>" + "".join(
            f"<p style=\"font-family:Arial;color:#333\">{_lorem(rng, 40)}</p>"
            for _ in range(rng.randint(8, 60))) + "</body></html>"
        yield "INBOX", when, (_headers([
            ("From", f"Les Nouvelles du Bois <news@media{rng.randrange(20)}.example>"),
            ("To", FIRM_ADDRESS), ("Subject", f"Lettre d'information n° {n}"),
            ("Date", format_datetime(when)), ("Message-ID", f"<nl-{n:06d}@media.example>"),
            ("List-Unsubscribe", "<mailto:unsubscribe@media.example>"), ("Precedence", "bulk"),
            ("MIME-Version", "1.0"), ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Transfer-Encoding", "8bit")]) + "\n" + html + "\n").encode(), "newsletter"
    for n in range(counts["other"]):
        when = _spread(rng, two_years, now)
        who = rng.choice([f"contact@fournisseur{rng.randrange(80)}.example",
                          "alertes@mabanque.example", f"collegue{rng.randrange(5)}@{FIRM_DOMAIN}"])
        yield "INBOX", when, _plain(
            [("From", who), ("To", FIRM_ADDRESS),
             ("Subject", rng.choice(["Votre commande", "Relevé de compte", "Pause déjeuner",
                                     "Facture fournisseur 2291", "Livraison prévue"])),
             ("Date", format_datetime(when)), ("Message-ID", f"<other-{n:06d}@mail.example>")],
            _lorem(rng, rng.randint(20, 400)) + "\n"), "other"


def corpus_path(size: int, now: datetime = NOW) -> Path:
    dated = "" if now == NOW else f"-{now:%Y%m%d}"
    return WORK_DIR / f"corpus-{size_label(size)}{dated}-v{CORPUS_VERSION}"


def build_corpus(size: int, *, force: bool = False, now: datetime = NOW) -> Corpus:
    """Write the Maildir files of a `size`-message mailbox once; later calls reuse them.

    `now` is the day the mailbox is as of (bench.NOW unless a bench runs on the real
    clock, like the reply-latency one)."""
    path = corpus_path(size, now)
    manifest_file = path / "manifest.json"
    if manifest_file.exists() and not force:
        return Corpus(size, path, json.loads(manifest_file.read_text()))
    if path.exists():
        shutil.rmtree(path)
    staging = path.with_name(path.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    started = time.perf_counter()
    messages = sorted(generate(size, now=now), key=lambda m: (m[0], m[1]))
    counts: dict[str, int] = {}
    folder_counts: dict[str, int] = {}
    total_bytes = 0
    uid, gid = _dovecot_ids()
    for folder in FOLDERS:
        (staging / folder).mkdir(parents=True)
    for seq, (folder, when, raw, kind) in enumerate(messages):
        counts[kind] = counts.get(kind, 0) + 1
        folder_counts[folder] = folder_counts.get(folder, 0) + 1
        stamp = int(when.timestamp())
        # Maildir name as Dovecot's own delivery writes it: time.unique.host,S=<size>,
        # W=<size with CRLF line ends>:2,<flags>. Without W= Dovecot computes the IMAP
        # size on first FETCH and rewrites dovecot-uidlist to remember it.
        vsize = len(raw) + raw.count(b"\n")
        name = f"{stamp}.M{seq:07d}P1.bench,S={len(raw)},W={vsize}:2,S"
        file = staging / folder / name
        file.write_bytes(raw)
        os.utime(file, (stamp, stamp))  # INTERNALDATE
        if uid >= 0:
            os.chown(file, uid, gid)
        total_bytes += len(raw)
    manifest = {
        "size": size, "seed": SEED, "now": now.isoformat(), "counts": counts,
        "folders": folder_counts, "bytes": total_bytes,
        "generated_in_s": round(time.perf_counter() - started, 1),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    staging.rename(path)
    return Corpus(size, path, manifest)


def _dovecot_ids() -> tuple[int, int]:
    import pwd

    try:
        account = pwd.getpwnam("dovecot")
    except KeyError:
        return -1, -1
    return account.pw_uid, account.pw_gid


def install(
    dovecot: Any, size: int, *, login: str | None = None, now: datetime = NOW
) -> tuple[Any, Corpus]:
    """A new Dovecot user whose INBOX and Sent hold the `size`-message corpus.

    Returns (MailUser, Corpus). The files are hard links to the cached corpus; Dovecot
    indexes them on the first SELECT, which `warm` does so timings start from a warm index.
    """
    corpus = build_corpus(size, now=now)
    user = dovecot.add_user(login, "bench") if login else dovecot.new_user("bench", "bench")
    uid, gid = _dovecot_ids()
    maildir = Path(user.home) / "Maildir"
    targets = {"INBOX": maildir, "Sent": maildir / ".Sent"}
    for folder, target in targets.items():
        for sub in ("cur", "new", "tmp"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        if folder != "INBOX":
            (target / "maildirfolder").touch()
        source = corpus.folder_dir(folder)
        for entry in os.scandir(source):
            os.link(entry.path, target / "cur" / entry.name)
    # Dovecot rescans a Maildir folder whose mtime is too close to its last look (it
    # cannot tell whether more files came in the same second): date the folders back.
    past = time.time() - 60
    for directory in (Path(user.home), *_walk_dirs(Path(user.home))):
        if uid >= 0:
            os.chown(directory, uid, gid)
        os.utime(directory, (past, past))
    for file in maildir.glob("**/maildirfolder"):
        if uid >= 0:
            os.chown(file, uid, gid)
    return user, corpus


def _walk_dirs(root: Path) -> Iterator[Path]:
    for dirpath, _dirnames, _files in os.walk(root):
        yield Path(dirpath)


def warm(dovecot: Any, user: Any) -> float:
    """Let Dovecot index the folders and cache the header fields relance asks for."""
    from bench.sync import raw_header_fetch

    started = time.perf_counter()
    raw_header_fetch(dovecot.host, dovecot.imap_port, user.address, user.password)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1k", "10k", "100k"])
    parser.add_argument("--force", action="store_true", help="rebuild cached corpora")
    args = parser.parse_args()
    for size in parse_sizes(args.sizes):
        started = time.perf_counter()
        corpus = build_corpus(size, force=args.force)
        m = corpus.manifest
        print(f"{size_label(size)}: {corpus.path} in {time.perf_counter() - started:.1f} s; "
              f"{m['bytes'] / 1e6:.0f} MB; folders {m['folders']}; {m['counts']}")


if __name__ == "__main__":
    main()
