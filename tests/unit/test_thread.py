"""Which case a message is about: pure, no mailbox."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from relance.core.thread import answerable, cases_for, known_numbers_in
from relance.model import Case, Mail

CLIENT = "paie@client.fr"


def case(number: str, issued: date | None) -> Case:
    return Case(number=number, client_addrs=(CLIENT,), client_name="Client",
                subject=f"Facture {number}", root_message_id=f"<{number}@atelier.fr>",
                issue_date=issued)


def answer(written: datetime | None, text: str = "Bonjour", **kw: object) -> Mail:
    return Mail(message_id="<a@client.fr>", subject="Question", from_addr=CLIENT,
                to_addrs=("compta@atelier.fr",), date=written, text=text, **kw)  # type: ignore[arg-type]


MARCH = case("F-1", date(2026, 3, 10))
JUNE = case("F-2", date(2026, 6, 1))
UNDATED = case("F-3", None)


@pytest.mark.parametrize(("written", "expected"), [
    (datetime(2024, 5, 2, 9, tzinfo=UTC), ["F-3"]),  # years before: only the undated one
    (datetime(2026, 3, 9, 23, tzinfo=UTC), ["F-1", "F-3"]),  # a day early: a clock off
    (datetime(2026, 4, 1, 9, tzinfo=UTC), ["F-1", "F-3"]),
    (datetime(2026, 7, 1, 9, tzinfo=UTC), ["F-1", "F-2", "F-3"]),
    (None, ["F-1", "F-2", "F-3"]),  # no Date header: it could answer any
])
def test_a_mail_answers_only_invoices_issued_before_it(
    written: datetime | None, expected: list[str]
) -> None:
    assert [c.number for c in answerable([MARCH, JUNE, UNDATED], answer(written))] == expected


def test_an_old_mail_in_the_invoice_thread_still_finds_it_by_its_headers() -> None:
    """The date filter is for guesses by sender; a thread header is not a guess."""
    index = {"<F-2@atelier.fr>": ("F-2",)}
    old = answer(datetime(2024, 1, 1, tzinfo=UTC), in_reply_to="<F-2@atelier.fr>")
    assert cases_for(old, answerable([JUNE], old), index) == ["F-2"]


def test_a_number_named_in_the_text_picks_the_case() -> None:
    mail = answer(datetime(2026, 7, 1, tzinfo=UTC), text="Pour la facture f-2, c'est réglé.")
    assert cases_for(mail, [MARCH, JUNE], {}) == ["F-2"]


@pytest.mark.parametrize(("text", "found"), [
    ("facture F-1 réglée", ["F-1"]),
    ("facture F-10 réglée", []),  # inside a longer number
    ("AF-1", []),
    ("(F-1)", ["F-1"]),
])
def test_numbers_are_found_whole(text: str, found: list[str]) -> None:
    assert known_numbers_in(text, ["F-1"]) == found
