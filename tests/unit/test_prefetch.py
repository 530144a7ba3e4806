"""Which bodies a chunk prefetches, and how they are batched: pure, no mailbox."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import pytest

from relance.listening import history_detail, reply_detail
from relance.model import Firm, Mail
from relance.sync import PrefetchContext, history_invoice, plan_batches, prefetch_candidates

FIRM = Firm(name="Atelier", sender="Atelier <compta@atelier.fr>",
            addresses=("compta@atelier.fr",), owners=("patron@atelier.fr",))
KNOWN = {"<invoice-1@atelier.fr>", "<reminder-1@atelier.fr>"}
CLIENTS = {"paie@client.fr"}


def ctx(**kw: object) -> PrefetchContext:
    values: dict[str, object] = dict(
        firm=FIRM, payment_senders=("@banque.fr",), sent_folder="Sent", known_ids=KNOWN,
        is_client=lambda mail: mail.from_addr in CLIENTS)
    values.update(kw)
    return PrefetchContext(**values)  # type: ignore[arg-type]


def mail(uid: int = 1, *, sender: str = "x@ailleurs.fr", to: tuple[str, ...] = (
        "compta@atelier.fr",), subject: str = "Bonjour", folder: str = "INBOX",
         in_reply_to: str | None = None, references: tuple[str, ...] = (),
         message_id: str = "", **headers: str) -> Mail:
    return Mail(message_id=message_id or f"<m{uid}@x>", subject=subject, from_addr=sender,
                to_addrs=to, in_reply_to=in_reply_to, references=references,
                headers={k.replace("_", "-"): v for k, v in headers.items()}, folder=folder,
                uid=uid)


CASES = [
    ("newsletter-from-stranger", mail(), False),
    ("client-with-open-cases", mail(sender="paie@client.fr"), True),
    ("reply-in-known-thread", mail(in_reply_to="<reminder-1@atelier.fr>"), True),
    ("reply-referencing-known-thread", mail(references=("<a@x>", "<invoice-1@atelier.fr>")),
     True),
    ("bounce-from-mailer-daemon", mail(sender="mailer-daemon@mx.ailleurs.fr",
                                       subject="Undelivered Mail Returned to Sender"), True),
    ("owner-command", mail(sender="patron@atelier.fr"), True),
    ("payment-notice-from-bank-domain", mail(sender="avis@banque.fr"), True),
    ("own-reminder-copy", mail(sender="compta@atelier.fr", folder="Sent",
                               to=("paie@client.fr",), x_relance_step="1"), False),
    ("firm-invoice-to-client", mail(sender="compta@atelier.fr", folder="Sent",
                                    to=("paie@autre.fr",), subject="Facture F-2026-0001"),
     True),
    ("firm-pdf-to-client", mail(sender="compta@atelier.fr", folder="Sent",
                                to=("paie@autre.fr",), content_type="application/pdf"), True),
    ("firm-chat-to-client", mail(sender="compta@atelier.fr", folder="Sent",
                                 to=("paie@autre.fr",), subject="Rendez-vous mardi"), False),
    ("firm-in-known-thread", mail(sender="compta@atelier.fr", folder="Sent",
                                  to=("paie@autre.fr",), subject="Re: votre question",
                                  in_reply_to="<invoice-1@atelier.fr>"), True),
    ("firm-internal-mail-in-sent", mail(sender="compta@atelier.fr", folder="Sent",
                                        to=("patron@atelier.fr",)), True),
    ("firm-internal-mail-in-inbox", mail(sender="compta@atelier.fr", folder="INBOX",
                                         to=("patron@atelier.fr",)), False),
]


@pytest.mark.parametrize(("name", "head", "wanted"), CASES, ids=[c[0] for c in CASES])
def test_prefetch_candidates_follow_handle(name: str, head: Mail, wanted: bool) -> None:
    assert (prefetch_candidates([head], ctx()) == [head.uid]) is wanted


def test_answer_to_an_invoice_read_in_the_same_chunk_is_prefetched() -> None:
    invoice = mail(1, sender="compta@atelier.fr", folder="Sent", to=("neuf@nouveau.fr",),
                   subject="Facture F-2026-0009", message_id="<new-invoice@atelier.fr>")
    answer = mail(2, in_reply_to="<new-invoice@atelier.fr>")
    from_new_client = mail(3, sender="neuf@nouveau.fr")
    stranger = mail(4)
    assert prefetch_candidates([invoice, answer, from_new_client, stranger],
                               ctx(known_ids=set())) == [1, 2, 3]


def test_same_chunk_knowledge_does_not_reach_back() -> None:
    """Only what comes after the invoice counts: order is the mailbox's."""
    answer = mail(1, in_reply_to="<new-invoice@atelier.fr>")
    invoice = mail(2, sender="compta@atelier.fr", folder="Sent", to=("neuf@nouveau.fr",),
                   subject="Facture F-2026-0009", message_id="<new-invoice@atelier.fr>")
    assert prefetch_candidates([answer, invoice], ctx(known_ids=set())) == [2]


LONG_AGO = datetime(2025, 1, 6, 9, tzinfo=UTC)
RECENT = datetime(2026, 11, 2, 9, tzinfo=UTC)
HISTORY_BEFORE = datetime(2026, 7, 26, tzinfo=UTC)


def sent_invoice(uid: int, subject: str, when: datetime, **headers: str) -> Mail:
    return dataclasses.replace(mail(uid, sender="compta@atelier.fr", folder="Sent",
                                    to=("paie@autre.fr",), subject=subject, **headers),
                               date=when)


@pytest.mark.parametrize(("subject", "when", "adopted"), [
    ("Facture F-2025-0001", LONG_AGO, "F-2025-0001"),
    ("Facture n° 2025-118 - chantier Dupont", LONG_AGO, "2025-118"),
    ("Facture F-2026-0100", RECENT, None),  # recent: read, its facts are needed
    ("Votre facture", LONG_AGO, None),  # no number in the subject: the body decides
    ("Factures F-2025-0001 et F-2025-0002", LONG_AGO, None),  # several
    ("Avoir AV-2025-0003", LONG_AGO, None),  # a credit note changes another case
    ("Re: Facture F-2025-0001", LONG_AGO, None),  # a reply in the thread
    ("Relance facture F-2025-0001", LONG_AGO, None),  # a reminder, not an invoice
])
def test_old_invoices_named_by_their_subject_are_adopted_from_headers(
    subject: str, when: datetime, adopted: str | None
) -> None:
    head = sent_invoice(1, subject, when, content_type="multipart/mixed; boundary=x")
    facts = history_invoice(head, HISTORY_BEFORE)
    assert (facts.number if facts else None) == adopted
    if facts is not None:
        assert (facts.source, facts.issue_date, facts.amount) == ("headers", when.date(), None)
    fetched = prefetch_candidates([head], ctx(history_before=HISTORY_BEFORE))
    assert fetched == ([] if adopted else [1])


def test_without_a_history_line_every_invoice_is_read() -> None:
    head = sent_invoice(1, "Facture F-2025-0001", LONG_AGO)
    assert history_invoice(head, None) is None
    assert prefetch_candidates([head], ctx()) == [1]


def test_a_client_mail_older_than_their_invoices_is_not_fetched() -> None:
    """`is_client` is asked with the mail, so `answerable` can look at its date."""
    old = dataclasses.replace(mail(1, sender="paie@client.fr"), date=LONG_AGO)
    new = dataclasses.replace(mail(2, sender="paie@client.fr"), date=RECENT)
    context = ctx(is_client=lambda m: m.date is not None and m.date > HISTORY_BEFORE)
    assert prefetch_candidates([old, new], context) == [2]


BATCHES = [
    ("empty", [], {}, []),
    ("by-count", [(u, 10) for u in range(1, 6)], {"max_count": 2}, [[1, 2], [3, 4], [5]]),
    ("by-bytes", [(1, 60), (2, 50), (3, 10), (4, 90)], {"max_bytes": 100},
     [[1], [2, 3], [4]]),
    ("big-one-alone", [(1, 10), (2, 500), (3, 10)], {"max_bytes": 100},
     [[1], [2], [3]]),
    ("too-big-left-out", [(1, 10), (2, 2000), (3, 10)], {"too_big": 1000}, [[1, 3]]),
]


@pytest.mark.parametrize(("name", "sized", "limits", "expected"), BATCHES,
                         ids=[b[0] for b in BATCHES])
def test_plan_batches_bounds_count_and_bytes(
    name: str, sized: list[tuple[int, int]], limits: dict[str, int],
    expected: list[list[int]],
) -> None:
    assert plan_batches(sized, **limits) == expected


def test_default_batches_stay_within_two_hundred_messages_and_four_megabytes() -> None:
    batches = plan_batches([(uid, 150_000) for uid in range(1, 1001)])
    assert all(len(b) <= 200 for b in batches)
    assert all(len(b) * 150_000 <= 4 * 1024 * 1024 for b in batches)
    assert [uid for b in batches for uid in b] == list(range(1, 1001))


def test_reply_notice_names_the_other_invoices_it_paused() -> None:
    assert reply_detail("reply", ["F-2", "F-3"], "fr") == (
        "Cette réponse met aussi en pause les relances des factures n° F-2, F-3.")
    assert reply_detail("promise", [], "en") == "The client says they will pay."
    assert reply_detail("reply", [], "fr") == ""


def test_history_summary_names_fifty_invoices_and_counts_the_rest() -> None:
    numbers = [f"F-{n:04d}" for n in range(1, 61)]
    text = history_detail("INBOX", 70, 2, numbers, date(2026, 2, 16), "fr")
    assert "70 réponse(s)" in text and "2 retour(s)" in text and "16/02/2026" in text
    assert "F-0050" in text and "F-0051" not in text and "et 10 autres" in text
