"""Listening: replies, promises and disputes, payment notices, trust, commands, digest.

The messages are written as they arrive (raw RFC 5322, parsed by the real parser), from
the mail programs, banks and payment providers French small firms meet.
"""

from __future__ import annotations

import email.header
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relance.core.commands import CommandRefused
from relance.core.listen import (
    Command,
    PaymentNotice,
    Trust,
    digest,
    digest_due,
    format_digest,
    known_numbers_in,
    match_payment,
    money_text,
    new_part,
    parse_commands,
    payer_matches,
    plan_instalments,
    read_payment,
    reply_intent,
    trust_of,
)
from relance.mailbox.parse import parse_message
from relance.model import Case, CaseState, Mail

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=PARIS)  # a Monday


def raw_mail(text: str, folder: str = "INBOX") -> Mail:
    """A message as it sits in the mailbox: headers (non-ASCII values RFC 2047-encoded, as
    mail programs send them), a blank line, the body (UTF-8, 8bit unless said otherwise)."""
    head, _, body = text.strip("\n").partition("\n\n")
    lines = []
    for line in head.split("\n"):
        if line[:1] in " \t" or line.isascii():
            lines.append(line)
        else:
            name, _, value = line.partition(": ")
            lines.append(f"{name}: {email.header.Header(value, 'utf-8').encode()}")
    if "content-type:" not in head.lower():
        lines += [
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
        ]
    data = "\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")
    return parse_message(data.encode("utf-8"), folder=folder)


# ------------------------------------------------------------------ replies, as clients write

OUTLOOK_FR_PROMISE = """
From: Jean Martin <jean.martin@boulangerie-martin.fr>
To: "Atelier Dupont - Comptabilité" <compta@atelier-dupont.fr>
Subject: RE: Facture F-2026-0042 - rappel
Date: Mon, 23 Nov 2026 14:02:11 +0100
Message-ID: <AM0PR07MB1234@eurprd07.prod.outlook.com>
In-Reply-To: <relance.r1.F-2026-0042@atelier-dupont.fr>
X-Mailer: Microsoft Outlook 16.0

Bonjour Madame,

Désolé pour le retard, je vous règle vendredi par virement.

Bien cordialement,
Jean Martin
Boulangerie Martin

De : Atelier Dupont - Comptabilité <compta@atelier-dupont.fr>
Envoyé : lundi 23 novembre 2026 10:30
À : Jean Martin <jean.martin@boulangerie-martin.fr>
Objet : Facture F-2026-0042 - rappel

Bonjour,
Sauf erreur de notre part, la facture F-2026-0042 reste impayée. En cas de litige,
merci de nous le signaler.
"""

OUTLOOK_EN_DISPUTE = """
From: "Smith, Anna" <anna.smith@acme-trading.co.uk>
To: compta@atelier-dupont.fr
Subject: RE: Invoice F-2026-0051 overdue
Date: Tue, 24 Nov 2026 09:12:00 +0000
Message-ID: <DB7PR02MB5555@eurprd02.prod.outlook.com>

Hello,

We dispute this invoice: the quantity billed is not what we ordered. Please send a
corrected invoice.

Regards,
Anna

________________________________
From: Atelier Dupont <compta@atelier-dupont.fr>
Sent: 23 November 2026 10:30
To: Smith, Anna <anna.smith@acme-trading.co.uk>
Subject: Invoice F-2026-0051 overdue

We will pay you back any overpayment. Please pay the balance.
"""

OUTLOOK_HTML_REPLY = """
From: Claire Petit <c.petit@garage-petit.fr>
To: compta@atelier-dupont.fr
Subject: RE: Facture F-2026-0060
Message-ID: <VI1PR0101MB2222@eurprd01.prod.outlook.com>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 8bit

<html><body><div>Bonjour,</div><div>Le paiement est programmé pour le 15.</div>
<div>Cordialement</div><hr>
<div><b>De :</b> Atelier Dupont &lt;compta@atelier-dupont.fr&gt;<br>
<b>Envoyé :</b> lundi 23 novembre 2026 10:30<br><b>À :</b> Claire Petit<br>
<b>Objet :</b> Facture F-2026-0060</div>
<div>Facture contestée ? Dites-le nous.</div></body></html>
"""

GMAIL_FR_WRAPPED = """
From: Paul Leroy <paul.leroy@gmail.com>
To: compta@atelier-dupont.fr
Subject: Re: Facture F-2026-0044
Message-ID: <CAFx1@mail.gmail.com>
In-Reply-To: <relance.r1.F-2026-0044@atelier-dupont.fr>

Bonjour,
Nous n'avons toujours pas reçu la marchandise commandée, je ne paierai pas avant.
Paul

Le lun. 23 nov. 2026 à 10:30, Atelier Dupont - Comptabilité <
compta@atelier-dupont.fr> a écrit :

> Bonjour,
> Le virement peut être fait sur le compte ci-dessous.
"""

GMAIL_EN_REPLY = """
From: Tom Baker <tom@bakerdesign.com>
To: compta@atelier-dupont.fr
Subject: Re: Invoice F-2026-0045
Message-ID: <CAGy2@mail.gmail.com>

Hi, could you send the invoice again as a PDF? Our accountant cannot find it.

On Mon, Nov 23, 2026 at 10:30 AM Atelier Dupont <compta@atelier-dupont.fr> wrote:

> Dear client, in case of dispute please tell us. Payment is scheduled?
"""

GMAIL_EN_PROMISE = """
From: Tom Baker <tom@bakerdesign.com>
To: compta@atelier-dupont.fr
Subject: Re: Invoice F-2026-0045
Message-ID: <CAGy3@mail.gmail.com>

Sorry about that - we'll pay it on Friday with our weekly payment run.

Tom

On Mon, Nov 23, 2026 at 10:30 AM Atelier Dupont <compta@atelier-dupont.fr>
wrote:
> We dispute nothing; just a reminder.
"""

THUNDERBIRD_FR_DISPUTE = """
From: Sophie Bernard <sophie@bernard-archi.fr>
To: compta@atelier-dupont.fr
Subject: Re: Rappel : facture F-2026-0046
Message-ID: <5f1e@bernard-archi.fr>
User-Agent: Mozilla Thunderbird

Bonjour,

Il y a une erreur sur la facture : les plans n'étaient pas au forfait.

Le 23/11/2026 à 10:30, Atelier Dupont a écrit :
> Le paiement est prévu à réception.
"""

THUNDERBIRD_EN_REPLY = """
From: Sophie Bernard <sophie@bernard-archi.fr>
To: compta@atelier-dupont.fr
Subject: Re: Reminder: invoice F-2026-0046
Message-ID: <5f1f@bernard-archi.fr>
User-Agent: Mozilla Thunderbird

Thanks, I forwarded it to our accounts department.

On 11/23/26 10:30 AM, Atelier Dupont wrote:
> Payment will be made by transfer, we will pay ...
"""

APPLE_MAIL_PROMISE = """
From: Lucie Moreau <lucie.moreau@icloud.com>
To: compta@atelier-dupont.fr
Subject: Re: Facture F-2026-0047
Message-ID: <8A2B@icloud.com>

Bonjour, le virement part demain matin.

Envoyé de mon iPhone

> Le 23 nov. 2026 à 10:30, Atelier Dupont <compta@atelier-dupont.fr> a écrit :
>
> Facture contestée ? Prévenez-nous.
"""

ZIMBRA_ORIGINAL_MESSAGE = """
From: Compta Durand <compta@durand-sa.fr>
To: compta@atelier-dupont.fr
Subject: RE: Facture F-2026-0048
Message-ID: <z1@durand-sa.fr>

Bonjour, la facture a été transmise au service comptable pour validation.

-----Original Message-----
From: Atelier Dupont
Subject: Facture F-2026-0048
Litige, contestation : dites-le nous. Paiement prévu ?
"""

REPLY_CASES = [
    ("outlook-fr-promise", OUTLOOK_FR_PROMISE, "promise"),
    ("outlook-en-dispute", OUTLOOK_EN_DISPUTE, "dispute"),
    ("outlook-html-promise", OUTLOOK_HTML_REPLY, "promise"),
    ("gmail-fr-dispute-wrapped-attribution", GMAIL_FR_WRAPPED, "dispute"),
    ("gmail-en-reply", GMAIL_EN_REPLY, "reply"),
    ("gmail-en-promise", GMAIL_EN_PROMISE, "promise"),
    ("thunderbird-fr-dispute", THUNDERBIRD_FR_DISPUTE, "dispute"),
    ("thunderbird-en-reply", THUNDERBIRD_EN_REPLY, "reply"),
    ("apple-mail-promise", APPLE_MAIL_PROMISE, "promise"),
    ("original-message-reply", ZIMBRA_ORIGINAL_MESSAGE, "reply"),
]


@pytest.mark.parametrize(
    ("raw", "intent"), [c[1:] for c in REPLY_CASES], ids=[c[0] for c in REPLY_CASES]
)
def test_reply_intent_reads_only_what_the_client_wrote_now(raw: str, intent: str) -> None:
    assert reply_intent(raw_mail(raw).text) == intent


INTENT_CASES = [
    # promises: the money is coming (or has gone)
    ("Je vous règle vendredi.", "promise"),
    ("Le virement part demain.", "promise"),
    ("Paiement prévu le 15.", "promise"),
    ("Nous allons régler la facture cette semaine.", "promise"),
    ("Je fais le virement ce soir.", "promise"),
    ("La facture sera réglée à la fin du mois.", "promise"),
    ("C'est mis en paiement, vous recevrez les fonds sous 48 h.", "promise"),
    ("Le virement a été effectué ce matin.", "promise"),
    ("We will pay on Friday.", "promise"),
    ("I'll settle it next week.", "promise"),
    ("Payment scheduled for 15 December.", "promise"),
    ("The payment has been sent.", "promise"),
    ("Payment will be made in our next payment run.", "promise"),
    # disputes
    ("Litige en cours sur cette commande.", "dispute"),
    ("Facture contestée : le devis disait 800 €.", "dispute"),
    ("Nous contestons le montant.", "dispute"),
    ("Nous n'avons pas reçu la marchandise.", "dispute"),
    ("Il y a une erreur sur la facture.", "dispute"),
    ("Le montant est erroné.", "dispute"),
    ("La livraison n'est pas conforme au bon de commande.", "dispute"),
    ("Nous refusons de payer une prestation non réalisée.", "dispute"),
    ("We dispute this charge.", "dispute"),
    ("This is an incorrect invoice.", "dispute"),
    ("We have not received the goods yet.", "dispute"),
    ("The items were damaged on arrival.", "dispute"),
    ("We will not pay until the work is finished.", "dispute"),
    # plain replies: a human answered, nothing more
    ("Merci, bien reçu.", "reply"),
    ("Nous n'avons pas reçu la facture, pouvez-vous la renvoyer ?", "reply"),
    ("Nous ne contestons pas la facture, mais pouvez-vous nous rappeler ?", "reply"),
    ("Pas de litige, simplement un oubli de notre part.", "reply"),
    ("We do not dispute the amount; who should we contact?", "reply"),
    ("Could you send your IBAN?", "reply"),
    ("Je suis en congés, je regarde à mon retour.", "reply"),
    ("", "reply"),
]


@pytest.mark.parametrize(("text", "intent"), INTENT_CASES)
def test_reply_intent(text: str, intent: str) -> None:
    assert reply_intent(text) == intent


def test_quoted_lines_never_count() -> None:
    text = "Bien reçu, merci.\n> Litige ? Le virement part demain ?\n>> stop"
    assert new_part(text) == "Bien reçu, merci."
    assert reply_intent(text) == "reply"


def test_signature_and_forward_separators_end_the_new_part() -> None:
    assert new_part("OK pour moi.\n-- \nJean Martin\nService litiges") == "OK pour moi."
    forwarded = "Voir ci-dessous.\n-------- Message transféré --------\nLitige"
    assert new_part(forwarded) == "Voir ci-dessous."


def test_a_line_opening_with_le_is_not_cut_when_the_attribution_follows() -> None:
    text = "Le virement part demain.\nLe 23 nov. 2026 à 10:30, X <x@y.fr> a écrit :\n> a"
    assert new_part(text) == "Le virement part demain."


# ------------------------------------------------------------------ payment notices

BANK_ALERT_NEO = """
From: Banque Néo <notifications@banque-neo.fr>
To: compta@atelier-dupont.fr
Subject: Vous avez reçu un virement
Message-ID: <n1@banque-neo.fr>

Bonjour,

Vous avez reçu un virement de 1 234,56 EUR de BOULANGERIE MARTIN.
Référence : F-2026-0040

L'équipe Banque Néo
"""

BANK_ALERT_SEPA_TABLE = """
From: Alertes Banque Régionale <alertes@banque-regionale.fr>
To: compta@atelier-dupont.fr
Subject: Virement SEPA reçu sur votre compte
Message-ID: <n2@banque-regionale.fr>

Madame, Monsieur,

Un virement SEPA reçu a été porté au crédit de votre compte ****4821.

Date d'opération : 24/11/2026
Montant : 1 234,56 €
Émetteur : SARL DUVAL & FILS
Référence : F-2026-0040

Solde après opération : 12 345,67 €

Ceci est un message automatique, merci de ne pas y répondre.
"""

BANK_ALERT_CREDIT_MOTIF = """
From: Mon Agence en ligne <ne-pas-repondre@agence-en-ligne.fr>
To: compta@atelier-dupont.fr
Subject: Alerte opération : crédit sur votre compte
Message-ID: <n3@agence-en-ligne.fr>

Bonjour,

Votre solde disponible est de 5 432,10 €.
Crédit de 860,00 EUR sur votre compte courant le 24/11/2026.
Libellé : VIR SEPA GARAGE PETIT
Motif : FACTURE F-2026-0041
"""

BANK_ALERT_NO_NUMBER = """
From: Alertes Banque Régionale <alertes@banque-regionale.fr>
To: compta@atelier-dupont.fr
Subject: Virement SEPA reçu
Message-ID: <n4@banque-regionale.fr>

Vous avez reçu un virement instantané de 860,00 € de la part de GARAGE PETIT.
Communication : reglement nov
"""

BANK_ALERT_STATEMENT_LINE = """
From: Alertes <alertes@banque-cooperative.fr>
To: compta@atelier-dupont.fr
Subject: Alerte : opération créditrice
Message-ID: <n5@banque-cooperative.fr>

Bonjour,
Nouvelle opération sur votre compte 00012345678 :
Date : 24/11/2026
Libellé : VIR SEPA RECU /DE BOULANGERIE MARTIN /MOTIF FACTURE F-2026-0040 /REF 2611240001
Montant : +1 234,56 EUR
"""

STRIPE_RECEIPT = """
From: Stripe <notifications@stripe.com>
To: compta@atelier-dupont.fr
Subject: Payment of €1,234.56 received
Message-ID: <s1@stripe.com>

You received a payment of €1,234.56 from Acme Trading Ltd.

Amount paid        €1,234.56
Date paid          Nov 24, 2026
Payment method     Visa - 4242
Invoice            F-2026-0051

Fees               -€18.03
Net                €1,216.53
"""

STRIPE_INVOICE_PAID = """
From: Stripe <invoicing@stripe.com>
To: compta@atelier-dupont.fr
Subject: Invoice F-2026-0052 was paid
Message-ID: <s2@stripe.com>

You received a payment

Amount paid €450.00
Invoice number F-2026-0052
Customer tom@bakerdesign.com
"""

GOCARDLESS_PAID_OUT = """
From: GoCardless <help@gocardless.com>
To: compta@atelier-dupont.fr
Subject: A payment has been paid out
Message-ID: <g1@gocardless.com>

Hi Atelier Dupont,

Your payment of £1,200.00 from Acme Trading Ltd has been paid out to your bank account.

Reference: F-2026-0051
"""

GOCARDLESS_CONFIRMED = """
From: GoCardless <help@gocardless.com>
To: compta@atelier-dupont.fr
Subject: Payment confirmed
Message-ID: <g2@gocardless.com>

The payment of €860.00 from Garage Petit has been confirmed.
"""

PAYPAL_FR = """
From: "service@paypal.fr" <service@paypal.fr>
To: compta@atelier-dupont.fr
Subject: Vous avez reçu un paiement
Message-ID: <p1@paypal.fr>

Bonjour Atelier Dupont,

Vous avez reçu 450,00 € EUR de Lucie Moreau

Note de Lucie Moreau :
Facture F-2026-0047, merci !
"""

PAYPAL_EN = """
From: "service@paypal.com" <service@paypal.com>
To: compta@atelier-dupont.fr
Subject: You've got money
Message-ID: <p2@paypal.com>

Tom Baker sent you €450.00 EUR

Transaction ID: 8AB12345CD678901E
"""

NOTICE_CASES: list[tuple[str, str, PaymentNotice]] = [
    (
        "bank-one-line",
        BANK_ALERT_NEO,
        PaymentNotice(
            Decimal("1234.56"), "EUR", "BOULANGERIE MARTIN", "F-2026-0040", ("F-2026-0040",)
        ),
    ),
    (
        "bank-sepa-table",
        BANK_ALERT_SEPA_TABLE,
        PaymentNotice(
            Decimal("1234.56"), "EUR", "SARL DUVAL & FILS", "F-2026-0040", ("F-2026-0040",)
        ),
    ),
    (
        "bank-credit-motif",
        BANK_ALERT_CREDIT_MOTIF,
        PaymentNotice(Decimal("860.00"), "EUR", "", "VIR SEPA GARAGE PETIT", ("F-2026-0041",)),
    ),
    (
        "bank-no-number",
        BANK_ALERT_NO_NUMBER,
        PaymentNotice(Decimal("860.00"), "EUR", "GARAGE PETIT", "reglement nov", ()),
    ),
    (
        "bank-statement-line",
        BANK_ALERT_STATEMENT_LINE,
        PaymentNotice(
            Decimal("1234.56"),
            "EUR",
            "BOULANGERIE MARTIN",
            "VIR SEPA RECU /DE BOULANGERIE MARTIN /MOTIF FACTURE F-2026-0040 /REF 2611240001",
            ("F-2026-0040", "2611240001"),
        ),
    ),
    (
        "stripe-receipt",
        STRIPE_RECEIPT,
        PaymentNotice(Decimal("1234.56"), "EUR", "Acme Trading Ltd", "", ("F-2026-0051",)),
    ),
    (
        "stripe-invoice-paid",
        STRIPE_INVOICE_PAID,
        PaymentNotice(Decimal("450.00"), "EUR", "tom@bakerdesign.com", "", ("F-2026-0052",)),
    ),
    (
        "gocardless-paid-out",
        GOCARDLESS_PAID_OUT,
        PaymentNotice(
            Decimal("1200.00"), "GBP", "Acme Trading Ltd", "F-2026-0051", ("F-2026-0051",)
        ),
    ),
    (
        "gocardless-confirmed",
        GOCARDLESS_CONFIRMED,
        PaymentNotice(Decimal("860.00"), "EUR", "Garage Petit", "", ()),
    ),
    (
        "paypal-fr",
        PAYPAL_FR,
        PaymentNotice(Decimal("450.00"), "EUR", "Lucie Moreau", "", ("F-2026-0047",)),
    ),
    (
        "paypal-en",
        PAYPAL_EN,
        PaymentNotice(Decimal("450.00"), "EUR", "Tom Baker", "", ()),
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in NOTICE_CASES], ids=[c[0] for c in NOTICE_CASES]
)
def test_read_payment(raw: str, expected: PaymentNotice) -> None:
    assert read_payment(raw_mail(raw)) == expected


NOT_A_PAYMENT = [
    (
        "outgoing-transfer",
        "Subject: Virement émis\n\nVous avez effectué un virement de 200,00 € à EDF.",
    ),
    (
        "direct-debit",
        "Subject: Alerte opération\n\nPrélèvement de 49,90 EUR de ORANGE SA sur votre compte.",
    ),
    (
        "gocardless-failed",
        "Subject: A payment has failed\n\n"
        "The payment of £1,200.00 from Acme Trading Ltd has failed: insufficient funds.\n"
        "We will retry it. You received a notice because you asked for one.",
    ),
    (
        "stripe-refund",
        "Subject: Refund of €450.00 issued\n\nYou refunded a payment of €450.00 received from "
        "Tom Baker.",
    ),
    (
        "newsletter",
        "Subject: Nos offres de Noël\n\nDécouvrez notre carte à 0 € la première année !",
    ),
    ("no-amount", "Subject: Virement reçu\n\nVous avez reçu un virement. Connectez-vous."),
    ("balance-only", "Subject: Votre solde\n\nVous avez reçu votre relevé. Solde : 1 200,00 €"),
]


@pytest.mark.parametrize("raw", [c[1] for c in NOT_A_PAYMENT], ids=[c[0] for c in NOT_A_PAYMENT])
def test_read_payment_ignores_what_is_not_money_arriving(raw: str) -> None:
    head = "From: Banque <alertes@banque.fr>\nTo: compta@atelier-dupont.fr\nMessage-ID: <z@b>\n"
    assert read_payment(raw_mail(head + raw)) is None


def test_read_payment_finds_a_known_number_written_without_the_word_facture() -> None:
    mail = raw_mail(BANK_ALERT_CREDIT_MOTIF.replace("FACTURE F-2026-0041", "F-2026-0041 MERCI"))
    notice = read_payment(mail, known_numbers=["F-2026-0041", "F-2026-0004"])
    assert notice is not None and "F-2026-0041" in notice.numbers
    assert "F-2026-0004" not in notice.numbers


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Ref F-2026-0041", ["F-2026-0041"]),
        ("ref f-2026-0041.", ["F-2026-0041"]),
        ("Ref F-2026-00411", []),  # a longer number is another invoice
        ("Ref XF-2026-0041", []),
        ("Ref F20260041", []),  # the punctuation is part of the number: strict
    ],
)
def test_known_numbers_are_whole(text: str, found: list[str]) -> None:
    assert known_numbers_in(text, ["F-2026-0041"]) == found


# ------------------------------------------------------------------ matching a payment


def case(number: str, amount: str | None, **fields: Any) -> Case:
    return Case(
        number=number,
        client_addrs=fields.pop("client_addrs", ("compta@boulangerie-martin.fr",)),
        subject=f"Facture {number}",
        root_message_id=f"<{number}@atelier-dupont.fr>",
        client_name=fields.pop("client_name", "Boulangerie Martin"),
        amount=None if amount is None else Decimal(amount),
        **fields,
    )


def notice(amount: str, payer: str = "", numbers: tuple[str, ...] = (), **kw: Any) -> PaymentNotice:
    return PaymentNotice(
        Decimal(amount), kw.get("currency", "EUR"), payer, kw.get("reference", ""), numbers
    )


MARTIN_40 = case("F-2026-0040", "1234.56")
MARTIN_43 = case("F-2026-0043", "300.00")
PETIT_41 = case(
    "F-2026-0041", "860.00", client_name="Garage Petit", client_addrs=("c.petit@garage-petit.fr",)
)
DUVAL_49 = case(
    "F-2026-0049", "860.00", client_name="Duval SA", client_addrs=("compta@durand-sa.fr",)
)
LEROY_44 = case("F-2026-0044", "99.00", client_name="", client_addrs=("paul.leroy@gmail.com",))
PART_PAID = case("F-2026-0050", "1000.00", paid=Decimal("400.00"))
UNKNOWN = case("F-2026-0053", None, state=CaseState.NEEDS_FACTS)
OPEN = [MARTIN_40, MARTIN_43, PETIT_41, DUVAL_49, LEROY_44, PART_PAID, UNKNOWN]

MATCH_CASES = [
    # by number: exact, case-insensitive
    ("number", notice("1234.56", numbers=("F-2026-0040",)), "number",
     [("F-2026-0040", "1234.56", True)], "0"),
    ("number-lower-case", notice("1234.56", numbers=("f-2026-0040",)), "number",
     [("F-2026-0040", "1234.56", True)], "0"),
    ("number-partial", notice("1000.00", numbers=("F-2026-0040",)), "number",
     [("F-2026-0040", "1000.00", False)], "0"),
    ("number-surplus", notice("1240.00", numbers=("F-2026-0040",)), "number",
     [("F-2026-0040", "1234.56", True)], "5.44"),
    ("number-balance-after-partial", notice("600.00", numbers=("F-2026-0050",)), "number",
     [("F-2026-0050", "600.00", True)], "0"),
    ("two-numbers", notice("1534.56", numbers=("F-2026-0040", "F-2026-0043")), "number",
     [("F-2026-0040", "1234.56", True), ("F-2026-0043", "300.00", True)], "0"),
    ("two-numbers-short", notice("1300.00", numbers=("F-2026-0043", "F-2026-0040")), "number",
     [("F-2026-0043", "300.00", True), ("F-2026-0040", "1000.00", False)], "0"),
    ("number-amount-unknown", notice("500.00", numbers=("F-2026-0053",)), "number",
     [("F-2026-0053", "500.00", True)], "0"),
    ("unknown-number-then-amount", notice("860.00", "Garage Petit", ("INV-0007",)), "amount",
     [("F-2026-0041", "860.00", True)], "0"),
    # by amount, unique for that payer
    ("amount-payer-name", notice("1234.56", "BOULANGERIE MARTIN"), "amount",
     [("F-2026-0040", "1234.56", True)], "0"),
    ("amount-payer-domain", notice("1234.56", "BOULANGERIEMARTIN"), "amount",
     [("F-2026-0040", "1234.56", True)], "0"),
    ("amount-payer-legal-form", notice("860.00", "SARL GARAGE PETIT"), "amount",
     [("F-2026-0041", "860.00", True)], "0"),
    ("amount-balance-not-amount", notice("600.00", "Boulangerie Martin"), "amount",
     [("F-2026-0050", "600.00", True)], "0"),
    ("amount-webmail-payer", notice("99.00", "M. PAUL LEROY"), "amount",
     [("F-2026-0044", "99.00", True)], "0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payment", "how", "allocations", "surplus"),
    [c[1:] for c in MATCH_CASES],
    ids=[c[0] for c in MATCH_CASES],
)
def test_match_payment(
    payment: PaymentNotice, how: str, allocations: list[tuple[str, str, bool]], surplus: str
) -> None:
    match = match_payment(payment, OPEN)
    assert match.matched, match.reason
    assert match.how == how
    assert [(a.number, a.amount, a.settles) for a in match.allocations] == [
        (n, Decimal(a), s) for n, a, s in allocations
    ]
    assert match.surplus == Decimal(surplus)


UNMATCHED_CASES = [
    ("no-such-amount", notice("99.99", "BOULANGERIE MARTIN"), "no open invoice of 99,99 €"),
    ("two-for-no-one", notice("860.00", "DUPONT"), "2 open invoices of 860,00 €, none for DUPONT"),
    ("payer-unnamed", notice("860.00"), "2 open invoices of 860,00 €, and the payer is not named"),
    ("one-but-another-payer", notice("300.00", "GARAGE PETIT"),
     "1 open invoice of 300,00 €, none for GARAGE PETIT"),
    ("same-trade-other-name", notice("300.00", "BOULANGERIE DUPONT"),
     "1 open invoice of 300,00 €, none for BOULANGERIE DUPONT"),
    ("other-currency", notice("860.00", "Garage Petit", currency="GBP"),
     "no open invoice of 860,00 £"),
    ("number-other-currency", notice("860.00", numbers=("F-2026-0041",), currency="GBP"),
     "F-2026-0041 is in EUR, the payment is in GBP"),
    ("number-without-punctuation", notice("1234.56", numbers=("F20260040",)),
     "1 open invoice of 1 234,56 €, and the payer is not named"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payment", "reason"), [c[1:] for c in UNMATCHED_CASES], ids=[c[0] for c in UNMATCHED_CASES]
)
def test_unmatched_payments_say_why(payment: PaymentNotice, reason: str) -> None:
    match = match_payment(payment, OPEN)
    assert not match.matched
    assert match.how == ""
    assert match.reason == reason


def test_two_open_invoices_of_one_payer_with_that_amount_are_not_guessed() -> None:
    twin = case("F-2026-0054", "1234.56")
    match = match_payment(notice("1234.56", "Boulangerie Martin"), [MARTIN_40, twin])
    assert not match.matched
    assert match.reason == "2 open invoices of 1 234,56 € for Boulangerie Martin"


def test_match_reason_tells_the_owner_what_happened() -> None:
    match = match_payment(notice("1000.00", numbers=("F-2026-0040",)), OPEN)
    assert match.reason == (
        "by number: F-2026-0040 partly paid: 1 000,00 € of 1 234,56 €, 234,56 € still due"
    )


@pytest.mark.parametrize(
    ("payer", "client_name", "addresses", "same"),
    [
        ("BOULANGERIE MARTIN", "Boulangerie Martin SARL", (), True),
        ("Boulangerie Martin", "", ("compta@boulangerie-martin.fr",), True),
        ("BOULANGERIEMARTIN", "", ("compta@boulangerie-martin.fr",), True),
        ("MARTIN", "Boulangerie Martin", (), True),  # banks truncate
        ("Boulangerie Dupont", "Boulangerie Martin", (), False),
        ("JEAN MARTIN", "", ("jean.martin@gmail.com",), True),
        ("CONTACT SARL", "", ("contact@gmail.com",), False),  # a role mailbox names nobody
        ("orders@acme-trading.co.uk", "Acme Trading Ltd", (), True),
        ("SARL", "Duval SARL", (), False),
        ("", "Duval", (), False),
    ],
)
def test_payer_matches_loosely(
    payer: str, client_name: str, addresses: tuple[str, ...], same: bool
) -> None:
    client = case("F-1", "1", client_name=client_name, client_addrs=addresses or ("x@y.fr",))
    assert payer_matches(payer, client) is same


def test_notice_to_match_end_to_end() -> None:
    found = read_payment(raw_mail(BANK_ALERT_NO_NUMBER))
    assert found is not None
    match = match_payment(found, [PETIT_41, MARTIN_43])
    assert [(a.number, a.settles) for a in match.allocations] == [("F-2026-0041", True)]


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [("1234.5", "EUR", "1 234,50 €"), ("0.456", "GBP", "0,46 £"), ("12", "CHF", "12,00 CHF")],
)
def test_money_text(amount: str, currency: str, text: str) -> None:
    assert money_text(Decimal(amount), currency) == text


# ------------------------------------------------------------------ trust

OWNERS = ("marie@atelier-dupont.fr",)
FIRM = ("compta@atelier-dupont.fr",)
OURS = "mx.atelier-dupont.fr"
NOTICE_ID = "<relance.notice.7f3a9c2e41b8@atelier-dupont.fr>"


def command_mail(
    *auth: str,
    sender: str = "marie@atelier-dupont.fr",
    to: tuple[str, ...] = FIRM,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    **headers: str,
) -> Mail:
    all_headers = {k.replace("_", "-"): v for k, v in headers.items()}
    if auth:
        all_headers["authentication-results"] = "\n".join(auth)
    return Mail(
        message_id="<cmd@atelier-dupont.fr>",
        subject="Re: [relance] F-2026-0042",
        from_addr=sender,
        to_addrs=to,
        in_reply_to=in_reply_to,
        references=references,
        headers=all_headers,
        text="paid",
    )


def trust(mail: Mail, sent: bool = False, owners: tuple[str, ...] = OWNERS) -> Trust:
    return trust_of(
        mail,
        owners=owners,
        firm_addresses=FIRM,
        authserv_id=OURS,
        notice_ids=frozenset({NOTICE_ID}),
        folder_is_sent=sent,
    )


GMAIL_STYLE_PASS = (
    "mx.atelier-dupont.fr; dkim=pass (2048-bit key; unprotected) header.d=atelier-dupont.fr "
    "header.i=@atelier-dupont.fr header.s=s1 header.b=AbCdEf12; spf=pass (mx.atelier-dupont.fr:"
    " domain of marie@atelier-dupont.fr designates 192.0.2.7 as permitted sender) "
    "smtp.mailfrom=marie@atelier-dupont.fr; dmarc=pass (p=NONE) header.from=atelier-dupont.fr"
)

TRUSTED = [
    ("reply-to-notice", command_mail(in_reply_to=NOTICE_ID), False, "notice-reply"),
    ("notice-deep-in-references",
     command_mail(references=("<a@x>", NOTICE_ID, "<b@x>")), False, "notice-reply"),
    ("dkim-pass-aligned", command_mail(GMAIL_STYLE_PASS), False, "dkim"),
    ("dkim-header-i-only",
     command_mail(f"{OURS}; dkim=pass header.i=marie@atelier-dupont.fr"), False, "dkim"),
    ("dkim-signing-subdomain",
     command_mail(f"{OURS}; dkim=pass header.d=mail.atelier-dupont.fr"), False, "dkim"),
    ("dkim-authserv-id-any-case",
     command_mail("MX.Atelier-Dupont.FR; dkim=pass header.d=atelier-dupont.fr"), False, "dkim"),
    ("authserv-id-with-version",
     command_mail(f"{OURS} 1; dkim=pass header.d=atelier-dupont.fr"), False, "dkim"),
    ("spf-pass-aligned",
     command_mail(f"{OURS}; dkim=none; spf=pass smtp.mailfrom=marie@atelier-dupont.fr"),
     False, "spf"),
    ("ours-after-a-foreign-one",
     command_mail("mx.other.example; dkim=fail header.d=atelier-dupont.fr",
                  f"{OURS}; dkim=pass header.d=atelier-dupont.fr"), False, "dkim"),
    ("failing-signature-and-passing-one",
     command_mail(f"{OURS}; dkim=fail header.d=atelier-dupont.fr; "
                  "dkim=pass header.d=atelier-dupont.fr"), False, "dkim"),
    ("sent-folder-to-the-firm", command_mail(sender="compta@atelier-dupont.fr"), True,
     "sent-folder"),
    ("sent-folder-by-an-owner", command_mail(to=OWNERS), True, "sent-folder"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mail", "sent", "how"), [c[1:] for c in TRUSTED], ids=[c[0] for c in TRUSTED]
)
def test_genuine_commands_are_trusted(mail: Mail, sent: bool, how: str) -> None:
    verdict = trust(mail, sent)
    assert verdict.trusted, verdict.reason
    assert verdict.how == how


FORGED = [
    ("bare-from", command_mail(), "unverified"),
    ("foreign-authserv-id",
     command_mail("mx.evil.example; dkim=pass header.d=atelier-dupont.fr; "
                  "spf=pass smtp.mailfrom=atelier-dupont.fr"), "ignored: mx.evil.example"),
    ("authserv-id-lookalike",
     command_mail("mx.atelier-dupont.fr.evil.example; dkim=pass header.d=atelier-dupont.fr"),
     "ignored"),
    ("dkim-fail", command_mail(f"{OURS}; dkim=fail header.d=atelier-dupont.fr"),
     "dkim=fail for atelier-dupont.fr"),
    ("dkim-pass-other-domain", command_mail(f"{OURS}; dkim=pass header.d=evil.example"),
     "dkim=pass for evil.example"),
    ("dkim-pass-lookalike-domain",
     command_mail(f"{OURS}; dkim=pass header.d=evilatelier-dupont.fr"), "none passing"),
    ("dkim-pass-top-level-domain", command_mail(f"{OURS}; dkim=pass header.d=fr"),
     "none passing"),
    ("spf-pass-other-domain",
     command_mail(f"{OURS}; spf=pass smtp.mailfrom=bounce@evil.example"),
     "spf=pass for evil.example"),
    ("spf-softfail", command_mail(f"{OURS}; spf=softfail smtp.mailfrom=atelier-dupont.fr"),
     "spf=softfail"),
    ("pass-in-a-comment",
     command_mail(f"{OURS}; dkim=fail (dkim=pass header.d=atelier-dupont.fr) "
                  "header.d=atelier-dupont.fr"), "dkim=fail"),
    ("client-signing-well",
     command_mail(f"{OURS}; dkim=pass header.d=boulangerie-martin.fr",
                  sender="jean@boulangerie-martin.fr", in_reply_to=NOTICE_ID),
     "not an owner address"),
    ("relance-own-notice",
     command_mail(in_reply_to=NOTICE_ID, x_relance_notice="F-2026-0042"),
     "written by relance itself"),
    ("relance-own-reminder",
     command_mail(GMAIL_STYLE_PASS, x_relance_step="2"), "written by relance itself"),
    ("empty-from", command_mail(sender=""), "(nobody) is not an owner address"),
]  # fmt: skip


@pytest.mark.parametrize(("mail", "why"), [c[1:] for c in FORGED], ids=[c[0] for c in FORGED])
def test_forged_commands_are_refused(mail: Mail, why: str) -> None:
    verdict = trust(mail)
    assert not verdict.trusted
    assert verdict.how == ""
    assert why in verdict.reason


@pytest.mark.parametrize(
    ("mail", "why"),
    [
        (command_mail(to=("jean@boulangerie-martin.fr",)), "addressed to jean@boulangerie"),
        (command_mail(to=(*FIRM, "jean@boulangerie-martin.fr")), "addressed to jean@"),
        (command_mail(sender="jean@boulangerie-martin.fr"), "in Sent but from jean@"),
        (
            command_mail(to=("jean@boulangerie-martin.fr",), in_reply_to=NOTICE_ID),
            "addressed to jean@",
        ),
    ],
    ids=["to-a-client", "cc-a-client", "not-the-firm", "notice-forwarded-to-a-client"],
)
def test_sent_folder_mail_to_a_client_is_not_a_command(mail: Mail, why: str) -> None:
    verdict = trust(mail, sent=True)
    assert not verdict.trusted
    assert why in verdict.reason


def test_forged_command_as_it_arrives() -> None:
    """A forger writes From: the owner and adds a passing Authentication-Results of their
    own; our server adds its own, which says the signature is not the owner's."""
    mail = raw_mail(
        f"""
Authentication-Results: {OURS}; dkim=pass header.d=forger.example; spf=fail smtp.mailfrom=forger.example
Received: from mail.forger.example (mail.forger.example [203.0.113.9])
Authentication-Results: {OURS}; dkim=pass header.d=atelier-dupont.fr
From: Marie Dupont <marie@atelier-dupont.fr>
To: compta@atelier-dupont.fr
Subject: Re: [relance] Réponse de Boulangerie Martin (F-2026-0042)
Message-ID: <forged@forger.example>
In-Reply-To: <relance.notice.guessed@atelier-dupont.fr>

stop
"""  # noqa: E501
    )
    verdict = trust(mail)
    # Documented limit: our server must strip incoming headers claiming its authserv-id
    # (RFC 8601 §5); this one did not, so the forger's line counts too.
    assert verdict.trusted and verdict.how == "dkim"
    clean = raw_mail(
        f"""
Authentication-Results: {OURS}; dkim=pass header.d=forger.example; spf=fail smtp.mailfrom=forger.example
Authentication-Results: mx.forger.example; dkim=pass header.d=atelier-dupont.fr
From: Marie Dupont <marie@atelier-dupont.fr>
To: compta@atelier-dupont.fr
Subject: stop
Message-ID: <forged2@forger.example>
In-Reply-To: <relance.notice.guessed@atelier-dupont.fr>

stop
"""  # noqa: E501
    )
    refused = trust(clean)
    assert not refused.trusted
    assert "dkim=pass for forger.example" in refused.reason


def test_genuine_reply_to_a_notification_as_it_arrives() -> None:
    mail = raw_mail(
        f"""
From: Marie Dupont <Marie@Atelier-Dupont.fr>
To: compta@atelier-dupont.fr
Subject: Re: [relance] Paiement non rapproché
Message-ID: <m1@atelier-dupont.fr>
In-Reply-To: {NOTICE_ID}
References: <F-2026-0042@atelier-dupont.fr> {NOTICE_ID}

paid F-2026-0042

Le lun. 7 déc. 2026 à 09:00, Relance <compta@atelier-dupont.fr> a écrit :
> stop
"""
    )
    verdict = trust(mail)
    assert (verdict.trusted, verdict.how) == (True, "notice-reply")
    assert parse_commands(mail.text) == (
        [Command("paid", "paid F-2026-0042", number="F-2026-0042")],
        [],
    )


@pytest.mark.parametrize(
    ("senders", "trusted"),
    [(("alertes@banque-regionale.fr",), True), (("@banque-regionale.fr",), True),
     (("banque-regionale.fr",), True), (("alertes@banque.fr",), False),
     (("@regionale.fr",), False)],
)  # fmt: skip
def test_payment_senders_by_address_or_domain(senders: tuple[str, ...], trusted: bool) -> None:
    mail = raw_mail(
        "Authentication-Results: mx.atelier-dupont.fr; dkim=pass header.d=banque-regionale.fr\n"
        + BANK_ALERT_NO_NUMBER.lstrip()
    )
    assert trust(mail, owners=senders).trusted is trusted


# ------------------------------------------------------------------ commands

COMMAND_CASES = [
    ("paid", Command("paid", "paid")),
    ("Paid.", Command("paid", "Paid.")),
    ("paid 1234.56", Command("paid", "paid 1234.56", amount=Decimal("1234.56"))),
    ("payé 1 234,56", Command("paid", "payé 1 234,56", amount=Decimal("1234.56"))),
    ("Payé 1 234,56 €", Command("paid", "Payé 1 234,56 €", amount=Decimal("1234.56"))),
    ("paid 1.234,56 EUR", Command("paid", "paid 1.234,56 EUR", amount=Decimal("1234.56"))),
    ("paid 1,234.56", Command("paid", "paid 1,234.56", amount=Decimal("1234.56"))),
    ("paid F-2026-0042", Command("paid", "paid F-2026-0042", number="F-2026-0042")),
    ("paid F-2026-0042 500", Command("paid", "paid F-2026-0042 500", number="F-2026-0042",
                                     amount=Decimal("500"))),
    ("réglé 2026-118", Command("paid", "réglé 2026-118", number="2026-118")),
    ("pause", Command("pause", "pause")),
    ("pause 14d", Command("pause", "pause 14d", duration=timedelta(days=14))),
    ("pause 2w", Command("pause", "pause 2w", duration=timedelta(weeks=2))),
    ("pause 10 jours", Command("pause", "pause 10 jours", duration=timedelta(days=10))),
    ("pause 3 semaines", Command("pause", "pause 3 semaines", duration=timedelta(weeks=3))),
    ("pause until 2026-12-20", Command("pause", "pause until 2026-12-20",
                                       until=date(2026, 12, 20))),
    ("pause jusqu'au 20/12/2026", Command("pause", "pause jusqu'au 20/12/2026",
                                          until=date(2026, 12, 20))),
    ("Pause jusqu’au 20.12.2026", Command("pause", "Pause jusqu’au 20.12.2026",
                                          until=date(2026, 12, 20))),
    ("pause 2026-12-20", Command("pause", "pause 2026-12-20", until=date(2026, 12, 20))),
    ("pause F-2026-0042 14d", Command("pause", "pause F-2026-0042 14d", number="F-2026-0042",
                                      duration=timedelta(days=14))),
    ("resume", Command("resume", "resume")),
    ("Reprendre F-2026-0042", Command("resume", "Reprendre F-2026-0042", number="F-2026-0042")),
    ("stop", Command("stop", "stop")),
    ("STOP!", Command("stop", "STOP!")),
    ("arrêter F-2026-0042", Command("stop", "arrêter F-2026-0042", number="F-2026-0042")),
    ("facts amount=1234.56 due=2026-12-15",
     Command("facts", "facts amount=1234.56 due=2026-12-15", amount=Decimal("1234.56"),
             due=date(2026, 12, 15))),
    ("facts montant=1 234,56 échéance=15/12/2026",
     Command("facts", "facts montant=1 234,56 échéance=15/12/2026", amount=Decimal("1234.56"),
             due=date(2026, 12, 15))),
    ("facts F-2026-0042 due=2026-12-15",
     Command("facts", "facts F-2026-0042 due=2026-12-15", number="F-2026-0042",
             due=date(2026, 12, 15))),
    ("plan 3x monthly", Command("plan", "plan 3x monthly", count=3, period="monthly")),
    ("plan 4x weekly", Command("plan", "plan 4x weekly", count=4, period="weekly")),
    ("échéancier 3x mensuel", Command("plan", "échéancier 3x mensuel", count=3,
                                      period="monthly")),
    ("plan 6 x par mois", Command("plan", "plan 6 x par mois", count=6, period="monthly")),
    ("plan F-2026-0042 2x hebdo", Command("plan", "plan F-2026-0042 2x hebdo",
                                          number="F-2026-0042", count=2, period="weekly")),
    ("sent-lrar 2026-12-18", Command("sent-lrar", "sent-lrar 2026-12-18",
                                     sent_on=date(2026, 12, 18))),
    ("lrar 18/12/2026", Command("sent-lrar", "lrar 18/12/2026", sent_on=date(2026, 12, 18))),
    ("sent-lrar", Command("sent-lrar", "sent-lrar")),
]  # fmt: skip


@pytest.mark.parametrize(("line", "command"), COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES])
def test_each_command_form(line: str, command: Command) -> None:
    assert parse_commands(line) == ([command], [])


ERROR_CASES = [
    ("pause 14", "pause needs a duration like 14d or a date"),
    ("pause soon", "pause needs a duration like 14d or a date"),
    ("pause until 2026-13-45", '"2026-13-45" is not a date'),
    ("pause jusqu'au demain", '"demain" is not a date'),
    ("paid abc", '"abc" is not an amount'),
    ("paid -5", "the amount must be positive"),
    ("paid in full, thanks", "is not an amount"),
    ("resume now", "resume takes nothing but an invoice number"),
    ("stop F-2026-0042 please", "stop takes nothing but an invoice number"),
    ("facts", "facts needs amount=1234.56 and/or due=2026-12-15"),
    ("facts colour=red", 'unknown fact "colour"'),
    ("facts due=soon", '"soon" is not a date'),
    ("facts amount=zero", '"zero" is not an amount'),
    ("plan 3x", "plan needs a count and a period"),
    ("plan 3x yearly", "plan needs a count and a period"),
    ("plan 1x monthly", "a plan has 2 to 36 instalments, not 1"),
    ("sent-lrar tomorrow", "sent-lrar takes the posting date"),
]


@pytest.mark.parametrize(("line", "error"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_malformed_commands_say_what_was_expected(line: str, error: str) -> None:
    commands, errors = parse_commands(line)
    assert commands == []
    assert len(errors) == 1
    assert errors[0].startswith(f'"{line}": ')
    assert error in errors[0]


@pytest.mark.parametrize(
    ("text", "verbs", "error_count"),
    [
        ("paid F-2026-0041\nstop F-2026-0042\n", ["paid", "stop"], 0),
        ("\n\n  pause 14d  \n\nresume F-1\n", ["pause", "resume"], 0),
        ("Bonjour,\npaid", [], 0),  # the first line is not a command: none are read
        ("paid\nMerci, Marie\nstop", ["paid"], 0),
        ("pause 14\nstop", ["stop"], 1),  # a malformed line is reported, the next still read
        ("stop\n> paid\n> pause 14d", ["stop"], 0),
        ("pause 14d\n-- \nstop", ["pause"], 0),
        ("paid\n\nLe 7 déc. 2026 à 09:00, Relance a écrit :\n> stop", ["paid"], 0),
        ("paid\nDe : Relance <compta@atelier-dupont.fr>\nEnvoyé : lundi\nstop", ["paid"], 0),
        ("> stop", [], 0),
        ("", [], 0),
        ("Paiement reçu, merci", [], 0),  # a sentence, not the verb "payé"
    ],
    ids=[
        "two-lines", "blank-lines", "greeting-first", "stops-at-prose", "error-then-more",
        "quoted-ignored", "signature", "gmail-quote", "outlook-quote", "only-quoted", "empty",
        "prose",
    ],
)  # fmt: skip
def test_commands_are_the_first_lines_only(text: str, verbs: list[str], error_count: int) -> None:
    commands, errors = parse_commands(text)
    assert [c.verb for c in commands] == verbs
    assert len(errors) == error_count


# ------------------------------------------------------------------ instalments


@pytest.mark.parametrize(
    ("balance", "count", "period", "start", "expected"),
    [
        ("1000.00", 3, "monthly", date(2026, 12, 15),
         [(date(2026, 12, 15), "333.34"), (date(2027, 1, 15), "333.33"),
          (date(2027, 2, 15), "333.33")]),
        ("100.00", 4, "weekly", date(2026, 12, 7),
         [(date(2026, 12, 7), "25.00"), (date(2026, 12, 14), "25.00"),
          (date(2026, 12, 21), "25.00"), (date(2026, 12, 28), "25.00")]),
        ("0.05", 3, "weekly", date(2026, 12, 7),
         [(date(2026, 12, 7), "0.02"), (date(2026, 12, 14), "0.02"),
          (date(2026, 12, 21), "0.01")]),
        ("1234.56", 2, "monthly", date(2027, 1, 31),  # the day clamps to the month's last
         [(date(2027, 1, 31), "617.28"), (date(2027, 2, 28), "617.28")]),
        ("10.00", 3, "monthly", date(2027, 11, 30),
         [(date(2027, 11, 30), "3.34"), (date(2027, 12, 30), "3.33"),
          (date(2028, 1, 30), "3.33")]),
    ],
)  # fmt: skip
def test_plan_instalments(
    balance: str, count: int, period: str, start: date, expected: list[tuple[date, str]]
) -> None:
    assert plan_instalments(Decimal(balance), count, period, start) == [
        (d, Decimal(a)) for d, a in expected
    ]


@settings(max_examples=200, deadline=None)
@given(
    cents=st.integers(min_value=1, max_value=10_000_000),
    count=st.integers(min_value=1, max_value=36),
    period=st.sampled_from(["monthly", "weekly"]),
)
def test_instalments_add_up_to_the_balance_exactly(cents: int, count: int, period: str) -> None:
    balance = Decimal(cents) / 100
    plan = plan_instalments(balance, count, period, date(2026, 1, 31))
    assert sum(amount for _, amount in plan) == balance
    assert len(plan) == count
    amounts = [amount for _, amount in plan]
    assert max(amounts) - min(amounts) <= Decimal("0.01")
    dates = [d for d, _ in plan]
    assert dates == sorted(dates) and len(set(dates)) == count


@pytest.mark.parametrize(
    ("balance", "count", "period", "error"),
    [("0", 3, "monthly", "nothing is left to pay"), ("10", 0, "monthly", "at least one"),
     ("10", 3, "yearly", 'unknown period "yearly"')],
)  # fmt: skip
def test_plan_instalments_refuses_nonsense(
    balance: str, count: int, period: str, error: str
) -> None:
    with pytest.raises(CommandRefused, match=error):
        plan_instalments(Decimal(balance), count, period, date(2026, 12, 7))


# ------------------------------------------------------------------ digest


def aged(number: str, days_late: int | None, amount: str | None = "100.00", **f: Any) -> Case:
    due = None if days_late is None else NOW.date() - timedelta(days=days_late)
    return case(number, amount, due_date=due, **f)


def test_digest_buckets_by_days_late() -> None:
    cases = [
        aged("F-due-later", -5),
        aged("F-due-today", 0),
        aged("F-1", 1),
        aged("F-30", 30),
        aged("F-31", 31),
        aged("F-60", 60),
        aged("F-61", 61),
        aged("F-90", 90),
        aged("F-91", 91),
        aged("F-400", 400),
        aged("F-paid", 45, state=CaseState.PAID),
        aged("F-stopped", 45, state=CaseState.STOPPED),
        aged("F-done", 45, state=CaseState.DONE),
    ]
    result = digest(cases, NOW, paid_since=[])
    assert [line.number for line in result.not_yet_due] == ["F-due-today", "F-due-later"]
    assert {bucket: [line.number for line in lines] for bucket, lines in result.late} == {
        "0-30": ["F-30", "F-1"],
        "31-60": ["F-60", "F-31"],
        "61-90": ["F-90", "F-61"],
        "90+": ["F-400", "F-91"],
    }
    assert [bucket for bucket, _ in result.late] == ["0-30", "31-60", "61-90", "90+"]
    assert result.outstanding == (("EUR", Decimal("1000.00")),)


def test_digest_outstanding_per_currency_uses_balances() -> None:
    cases = [
        aged("F-1", 10, "1000.00", paid=Decimal("250.00")),
        aged("F-2", 10, "99.99"),
        aged("F-3", 10, "1200.00", currency="GBP"),
        aged("F-4", None, None, state=CaseState.NEEDS_FACTS),  # amount unknown: not summed
    ]
    result = digest(cases, NOW, paid_since=[])
    assert result.outstanding == (("EUR", Decimal("849.99")), ("GBP", Decimal("1200.00")))


def test_digest_tells_what_is_paused_paid_and_needs_the_owner() -> None:
    until = datetime(2026, 12, 20, tzinfo=PARIS)
    cases = [
        aged("F-paused", 20, state=CaseState.PAUSED, reason="promise: je vous règle vendredi",
             paused_until=until),
        aged("F-paused-open", 20, state=CaseState.PAUSED, reason=""),
        aged("F-facts", None, None, state=CaseState.NEEDS_FACTS, reason="missing: due date"),
        aged("F-bounced", 40, state=CaseState.BAD_ADDRESS),
        aged("F-letter", 70, state=CaseState.FORMAL_NOTICE),
        aged("F-chasing", 5),
    ]  # fmt: skip
    paid = [aged("F-old", 50, "300.00", paid=Decimal("300.00"), state=CaseState.PAID,
                 reason="paid (owner, 2026-12-03)")]  # fmt: skip
    result = digest(cases, NOW, paid_since=paid)
    assert [(line.number, line.note) for line in result.paused] == [
        ("F-paused", "promise: je vous règle vendredi until 2026-12-20"),
        ("F-paused-open", "paused"),
    ]
    assert [(line.number, line.note) for line in result.needs_owner] == [
        ("F-letter", "formal notice letter waiting to be sent"),
        ("F-bounced", "every client address bounced"),
        ("F-facts", "missing: due date"),
    ]
    assert [(line.number, line.balance) for line in result.paid] == [("F-old", Decimal("300.00"))]
    assert result.paid[0].client == "Boulangerie Martin"
    letter_bucket = dict(result.late)["61-90"]
    assert [line.number for line in letter_bucket] == ["F-letter"]
    assert not result.empty


@pytest.mark.parametrize(("language", "more"), [
    ("fr", "  … et 5 autres : `relance status` les liste toutes"),
    ("en", "  … and 5 more: `relance status` lists them all"),
])
def test_digest_names_the_first_invoices_of_a_section_and_counts_the_rest(
    language: str, more: str
) -> None:
    cases = [aged(f"F-{n:02d}", -n) for n in range(1, 31)]  # 30 not yet due
    text = format_digest(digest(cases, NOW, paid_since=[]), language)
    lines = text.splitlines()
    assert any(line.endswith("(30)") for line in lines)
    listed = [line.split()[1] for line in lines if line.startswith("  - ")]
    assert listed == [f"F-{n:02d}" for n in range(1, 26)]  # the soonest due first
    assert lines[-1] == more


def test_digest_of_nothing_is_empty() -> None:
    result = digest([aged("F-paid", 10, state=CaseState.PAID)], NOW, paid_since=[])
    assert result.empty
    assert result.outstanding == ()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


@pytest.mark.parametrize(
    ("now", "last", "day", "hour", "due"),
    [
        ("2026-12-07 08:00", None, "mon", 8, True),
        ("2026-12-07 07:59", "2026-11-30 08:00", "mon", 8, False),
        ("2026-12-07 08:00", "2026-11-30 08:00", "mon", 8, True),
        ("2026-12-07 08:05", "2026-12-07 08:00", "mon", 8, False),  # sent this morning
        ("2026-12-09 15:00", "2026-11-30 08:01", "mon", 8, True),  # missed while down
        ("2026-12-09 15:00", "2026-12-07 08:01", "mon", 8, False),
        ("2026-12-11 17:59", "2026-12-04 18:00", "friday", 18, False),
        ("2026-12-11 18:00", "2026-12-04 18:00", "vendredi", 18, True),
        ("2026-12-06 23:00", "2026-11-30 08:00", "mon", 8, False),  # Sunday night
        ("2027-03-29 08:00", "2027-03-22 08:00", "mon", 8, True),  # the day after DST starts
    ],
)
def test_digest_due(now: str, last: str | None, day: str, hour: int, due: bool) -> None:
    assert digest_due(at(now), at(last) if last else None, day, hour) is due


@pytest.mark.parametrize(("day", "hour"), [("someday", 8), ("mon", 24)])
def test_digest_due_refuses_bad_settings(day: str, hour: int) -> None:
    with pytest.raises(ValueError):
        digest_due(NOW, None, day, hour)
