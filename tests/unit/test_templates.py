"""Message templates: the defaults read well, and a broken edit is found with file and line."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from relance.core.compose import NoticeVars, template_context
from relance.model import Case, Channel, Decision, Firm, StepRecord
from relance.templates import (
    RenderError,
    TemplateError,
    Templates,
    load_templates,
    sample_contexts,
)

DEFAULTS = Path(__file__).resolve().parents[2] / "templates"
PARIS = timezone(timedelta(hours=1))
NOW = datetime(2026, 12, 16, 9, 0, tzinfo=PARIS)
# What babel writes for fr_FR: a narrow no-break space between thousands, a no-break
# space before the euro sign.
FR_AMOUNT = "1\u202f234,56\u00a0€"

REMINDERS = ("courtesy", "reminder-1", "reminder-2", "reminder-3", "instalment")
NOTICES = (
    "notice-reply",
    "notice-formal-notice",
    "notice-needs-facts",
    "notice-send-unknown",
    "notice-task",
    "notice-bounce",
    "notice-confirm",
    "notice-unverified",
    "notice-payment",
    "notice-digest",
)
ALL = (*REMINDERS, "formal-notice", *NOTICES)

FIRM = Firm(
    name="Atelier Dupont SARL",
    sender="Atelier Dupont - Comptabilité <compta@example.fr>",
    addresses=("compta@example.fr",),
    owners=("marie@example.fr",),
    iban="FR76 3000 6000 0112 3456 7890 189",
    payment_link="https://pay.example.fr/{number}",
)
CASE = Case(
    number="F-2026-0042",
    client_addrs=("compta@client.example",),
    subject="Facture F-2026-0042",
    root_message_id="<invoice-0042@example.fr>",
    client_name="Boulangerie Martin",
    amount=Decimal("1234.56"),
    issue_date=date(2026, 10, 15),
    due_date=date(2026, 11, 14),
)
SENT = (
    StepRecord(1, "courtesy", datetime(2026, 11, 9, 9, tzinfo=PARIS), "<r1@example.fr>", "sent"),
    StepRecord(2, "reminder-1", datetime(2026, 11, 19, 9, tzinfo=PARIS), "<r2@example.fr>", "sent"),
    StepRecord(3, "reminder-2", datetime(2026, 12, 2, 9, tzinfo=PARIS), "<r3@example.fr>", "sent"),
)


def context(
    template: str = "reminder-1",
    *,
    case: Case = CASE,
    firm: Firm = FIRM,
    tone: str = "neutral",
    step_index: int = 2,
    previous: tuple[StepRecord, ...] = (),
    notice: NoticeVars | None = None,
) -> dict[str, object]:
    channel = Channel.LETTER if template == "formal-notice" else Channel.EMAIL
    decision = Decision(case.number, step_index, template, channel, template, tone, NOW)
    return template_context(case, decision, firm, NOW, previous, notice=notice)


@pytest.fixture(scope="module")
def defaults() -> Templates:
    templates, errors = load_templates(DEFAULTS)
    assert errors == []
    assert templates is not None
    return templates


def write(root: Path, files: dict[str, str]) -> Path:
    """A templates directory from a few short files, written as they read in the test."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


# The defaults


def test_defaults_have_every_template_in_french_and_english(defaults: Templates) -> None:
    assert set(defaults.names("fr")) == set(ALL)
    assert set(defaults.names("en")) == set(ALL)
    assert defaults.sources["fr/reminder-1.txt"].startswith("Subject: ")


def test_every_default_template_renders_against_the_sample_cases(defaults: Templates) -> None:
    assert defaults.check(sample_contexts(), required=ALL) == []


@pytest.mark.parametrize("language", ["fr", "en"])
@pytest.mark.parametrize("name", ALL)
def test_every_default_template_renders_clean_text(
    defaults: Templates, language: str, name: str
) -> None:
    case = replace(CASE, language=language)
    notice = NoticeVars(kind=name, reply_from="x@client.example", step_index=3)
    rendered = defaults.render(name, language, context(name, case=case, notice=notice))
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.text.endswith("\n") and not rendered.text.startswith("\n")
    assert "\n\n\n" not in rendered.text
    if name not in ("notice-unverified", "notice-digest"):  # about no single invoice
        assert "F-2026-0042" in rendered.subject + rendered.text
    assert "None" not in rendered.text and "{{" not in rendered.text
    assert rendered.html is None


@pytest.mark.parametrize("name", [*REMINDERS, "formal-notice"])
def test_reminders_say_number_balance_due_date_and_how_to_pay(
    defaults: Templates, name: str
) -> None:
    text = defaults.render(name, "fr", context(name, previous=SENT)).text
    assert "F-2026-0042" in text
    assert FR_AMOUNT in text
    assert "14 novembre 2026" in text
    assert "FR76 3000 6000 0112 3456 7890 189" in text
    assert "https://pay.example.fr/F-2026-0042" in text
    assert "compta@example.fr" in text or name == "formal-notice"


@pytest.mark.parametrize("name", ["courtesy", "reminder-1", "reminder-2"])
def test_early_steps_ask_to_disregard_if_already_paid(defaults: Templates, name: str) -> None:
    assert "ne pas tenir compte" in defaults.render(name, "fr", context(name)).text
    assert "disregard" in defaults.render(name, "en", context(name)).text


def test_first_reminder_is_friendly(defaults: Templates) -> None:
    text = defaults.render("reminder-1", "fr", context()).text
    assert "Il s'agit sans doute d'un oubli." in text


def test_second_reminder_asks_for_a_payment_date_and_cites_earlier_mail(
    defaults: Templates,
) -> None:
    ctx = context("reminder-2", step_index=3, previous=SENT)
    text = defaults.render("reminder-2", "fr", ctx).text
    assert "la date à laquelle il interviendra" in text
    assert "les 9 novembre 2026 et 19 novembre 2026" in text
    assert "32 jours" in text


def test_third_reminder_names_penalties_indemnity_and_the_formal_notice(
    defaults: Templates,
) -> None:
    ctx = context("reminder-3", step_index=4, previous=SENT)
    text = defaults.render("reminder-3", "fr", ctx).text
    assert "pénalités de retard (taux BCE majoré de 10 points)" in text
    assert "indemnité forfaitaire pour frais de recouvrement de 40,00\u00a0€" in text
    assert "L441-10" in text and "D441-5" in text
    assert "mise en demeure" in text
    assert "ne pas tenir compte" not in text


def test_formal_notice_letter(defaults: Templates) -> None:
    rendered = defaults.render("formal-notice", "fr", context("formal-notice", previous=SENT))
    assert rendered.subject == "Mise en demeure de payer : facture n° F-2026-0042"
    text = rendered.text
    assert "mettons en demeure" in text
    assert "huit jours" in text
    assert "injonction de payer" in text
    assert "40,00\u00a0€" in text
    assert "Le 16 décembre 2026" in text


def test_partial_payment_asks_for_the_balance(defaults: Templates) -> None:
    case = replace(CASE, paid=Decimal("234.56"))
    text = defaults.render("reminder-1", "fr", context(case=case)).text
    assert "Montant restant dû : 1\u202f000,00\u00a0€" in text
    assert f"montant de la facture : {FR_AMOUNT}" in text


def test_without_payment_link_or_iban_the_invoice_says_how_to_pay(defaults: Templates) -> None:
    firm = replace(FIRM, payment_link="", iban="")
    text = defaults.render("reminder-1", "fr", context(firm=firm)).text
    assert "en ligne" not in text and "IBAN" not in text
    assert "Les modalités de règlement figurent sur la facture." in text


def test_warm_tone_is_friendlier_and_formal_tone_is_formal(defaults: Templates) -> None:
    warm = defaults.render("reminder-1", "fr", context(tone="warm")).text
    formal = defaults.render("reminder-1", "fr", context(tone="formal")).text
    neutral = defaults.render("reminder-1", "fr", context()).text
    assert "J'espère que vous allez bien." in warm and "J'espère" not in neutral
    assert formal.startswith("Madame, Monsieur,") and neutral.startswith("Bonjour,")


def test_english_reminder_formats_money_and_dates_the_english_way(defaults: Templates) -> None:
    case = replace(CASE, language="en")
    text = defaults.render("reminder-3", "en", context("reminder-3", case=case)).text
    assert "€1,234.56" in text and "14 November 2026" in text
    assert "the ECB rate plus 10 percentage points" in text
    assert "€40.00" in text


def test_notice_reply_quotes_the_client(defaults: Templates) -> None:
    notice = NoticeVars(
        kind="reply",
        reply_from="Paul Martin <compta@client.example>",
        reply_date=NOW - timedelta(hours=1),
        reply_excerpt="Le virement part vendredi.",
    )
    rendered = defaults.render("notice-reply", "fr", context(notice=notice))
    assert rendered.subject == "[relance] Boulangerie Martin a répondu : facture n° F-2026-0042"
    assert "    Le virement part vendredi." in rendered.text
    assert "16 décembre 2026 à 08:00" in rendered.text
    assert "jusqu'à ce que vous les repreniez" in rendered.text


def test_notice_needs_facts_names_what_is_missing(defaults: Templates) -> None:
    case = replace(CASE, amount=None, due_date=None)
    notice = NoticeVars(kind="needs-facts", missing=("amount", "due_date", "odd_fact"))
    text = defaults.render("notice-needs-facts", "fr", context(case=case, notice=notice)).text
    assert "- le montant TTC" in text
    assert "- la date d'échéance" in text
    assert "- odd_fact" in text


def test_notice_send_unknown_says_nothing_was_resent(defaults: Templates) -> None:
    notice = NoticeVars(kind="send-unknown", step_index=3, step_name="reminder-2",
                        message_id="<relance.abc.3@example.fr>")  # fmt: skip
    text = defaults.render("notice-send-unknown", "fr", context(notice=notice)).text
    assert "relance ne l'a pas renvoyé" in text
    assert "<relance.abc.3@example.fr>" in text


def test_notice_formal_notice_says_print_and_send_registered(defaults: Templates) -> None:
    notice = NoticeVars(kind="letter", document="Madame, Monsieur,\n\nTexte de la lettre.")
    text = defaults.render("notice-formal-notice", "fr", context(notice=notice)).text
    assert "lettre recommandée avec accusé de réception" in text
    assert text.rstrip().endswith("Texte de la lettre.")


# Filters


def test_money_is_formatted_as_babel_writes_it(defaults: Templates) -> None:
    ctx = context()
    assert FR_AMOUNT in defaults.render("reminder-1", "fr", ctx).text
    assert "€1,234.56" in defaults.render("reminder-1", "en", ctx).text


def test_filters(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/t.txt": """
        Subject: x

        {{ invoice.balance | money(invoice.currency) }}
        {{ invoice.due_date | date_long }}
        {{ invoice.due_date | date_short }}
        {{ now | datetime_long }}
        {{ [invoice.issue_date, invoice.due_date] | dates_long }}
        {{ 40 | money("EUR") }}
        """})  # fmt: skip
    templates, errors = load_templates(root)
    assert errors == [] and templates is not None
    assert templates.render("t", "fr", context()).text.splitlines() == [
        FR_AMOUNT,
        "14 novembre 2026",
        "14/11/2026",
        "16 décembre 2026 à 09:00",
        "15 octobre 2026 et 14 novembre 2026",
        "40,00\u00a0€",
    ]
    english = templates.render("t", "en", context()).text  # falls back to the French file
    assert english.startswith(FR_AMOUNT)


def test_a_missing_amount_is_an_error_never_a_blank(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/t.txt": """
        Subject: x

        Montant : {{ invoice.balance | money }}
        """})  # fmt: skip
    templates, _ = load_templates(root)
    assert templates is not None
    with pytest.raises(RenderError) as caught:
        templates.render("t", "fr", context(case=replace(CASE, amount=None)))
    assert str(caught.value.error) == (
        f"{root / 'fr' / 't.txt'}:3: money: no value (None); guard it with {{% if ... %}}"
    )


# Languages


def test_a_language_without_the_template_falls_back_to_french(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "fr/reminder-1.txt": "Subject: Rappel\n\nBonjour\n",
        "fr/reminder-2.txt": "Subject: Rappel 2\n\nBonjour\n",
        "en/reminder-1.txt": "Subject: Reminder\n\nHello\n",
    })  # fmt: skip
    templates, errors = load_templates(root)
    assert errors == [] and templates is not None
    assert templates.render("reminder-1", "en", context()).text == "Hello\n"
    assert templates.render("reminder-1", "en_GB", context()).text == "Hello\n"
    assert templates.render("reminder-2", "en", context()).text == "Bonjour\n"
    assert templates.render("reminder-1", "de", context()).text == "Bonjour\n"
    with pytest.raises(RenderError, match='no template "reminder-9"'):
        templates.render("reminder-9", "en", context())


def test_a_broken_translation_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "fr/reminder-1.txt": "Subject: Rappel\n\nBonjour\n",
        "en/reminder-1.txt": "Subject: Reminder\n\nHello {{ client.name\n",
    })  # fmt: skip
    templates, errors = load_templates(root)
    assert templates is not None and len(errors) == 1
    with pytest.raises(RenderError) as caught:
        templates.render("reminder-1", "en", context())
    assert caught.value.error == errors[0]
    assert templates.render("reminder-1", "fr", context()).text == "Bonjour\n"


# Errors a person editing a template can act on


def test_a_misspelt_variable_is_reported_with_file_and_line(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/reminder-1.txt": """
        Subject: Rappel : facture {{ invoice.number }}

        Bonjour,

        Montant : {{ invoice.balanse | money }}
        """})  # fmt: skip
    templates, errors = load_templates(root)
    assert errors == [] and templates is not None
    problems = templates.check(sample_contexts())
    assert len(problems) == 1
    problem = problems[0]
    assert (problem.file, problem.line) == (str(root / "fr" / "reminder-1.txt"), 5)
    assert str(problem).startswith(f"{root / 'fr' / 'reminder-1.txt'}:5: ")
    assert "'balanse'" in problem.message and "balance" in problem.message


def test_a_misspelt_variable_in_the_subject_is_on_line_1(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/t.txt": "Subject: Facture {{ invoice.numero }}\n\nBonjour\n"})
    templates, _ = load_templates(root)
    assert templates is not None
    [problem] = templates.check(sample_contexts())
    assert problem.line == 1 and "'numero'" in problem.message


def test_an_unknown_variable_is_reported(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/t.txt": """
        Subject: x

        Bonjour
        {% if tone == "warm" %}
        {{ clent.name }}
        {% endif %}
        """})  # fmt: skip
    templates, _ = load_templates(root)
    assert templates is not None
    [problem] = templates.check(sample_contexts())  # the warm sample reaches the branch
    assert problem.line == 5 and problem.message == "undefined variable 'clent'"


def test_a_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "fr/reminder-1.txt": "Subject: Rappel\n\nBonjour\n\n{% if tone == 'warm' %}\nSalut\n",
        "fr/reminder-2.txt": "Subject: Rappel 2\n\nBonjour {{ client.name | shout }}\n",
        "fr/reminder-3.txt": "Subject: Rappel 3\n\nBonjour\n",
    })  # fmt: skip
    templates, errors = load_templates(root)
    assert templates is not None  # the valid template still works
    assert templates.has("reminder-3") and not templates.has("reminder-1")
    by_file = {Path(e.file).name: e for e in errors}
    assert set(by_file) == {"reminder-1.txt", "reminder-2.txt"}
    assert by_file["reminder-1.txt"].line in (5, 6, 7)
    assert "endif" in by_file["reminder-1.txt"].message
    assert str(by_file["reminder-2.txt"]) == (
        f"{root / 'fr' / 'reminder-2.txt'}:3: No filter named 'shout'."
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("Bonjour\n\nTexte\n", 1, 'first line must be "Subject: ..."'),
        ("Subject:\n\nTexte\n", 1, "the subject is empty"),
        ("Subject: Rappel\nTexte\n", 2, "second line must be blank"),
        ("Subject: Rappel\n\n\n", 3, "no body"),
    ],
)
def test_the_file_format_is_checked(tmp_path: Path, text: str, line: int, message: str) -> None:
    root = write(tmp_path, {"fr/t.txt": text})
    templates, errors = load_templates(root)
    assert templates is None
    [error] = errors
    assert error.line == line and message in error.message


def test_the_subject_line_is_case_insensitive_and_crlf_is_fine(tmp_path: Path) -> None:
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "t.txt").write_bytes(b"SUBJECT: Rappel\r\n\r\nBonjour\r\n")
    templates, errors = load_templates(tmp_path)
    assert errors == [] and templates is not None
    assert templates.render("t", "fr", context()).text == "Bonjour\n"


def test_a_file_that_is_not_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "t.txt").write_bytes("Subject: x\n\nRéglé\n".encode("latin-1"))
    _, errors = load_templates(tmp_path)
    assert [(e.line, e.message) for e in errors] == [(3, "not UTF-8 text; save the file as UTF-8")]


def test_misplaced_files_are_reported(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "reminder-1.txt": "Subject: x\n\ny\n",
        "fr/reminder-1.html": "<p>x</p>\n",
        "fr/courtesy.txt": "Subject: x\n\ny\n",
        "fr/notes.md": "ignored\n",
    })  # fmt: skip
    templates, errors = load_templates(root)
    assert templates is not None and templates.names("fr") == ("courtesy",)
    messages = sorted(str(e) for e in errors)
    assert messages == [
        f"{root / 'fr' / 'reminder-1.html'}: no reminder-1.txt beside it to give the subject",
        f"{root / 'reminder-1.txt'}: put templates in a language folder, e.g. fr/reminder-1.txt",
    ]


def test_no_directory_is_an_error(tmp_path: Path) -> None:
    templates, errors = load_templates(tmp_path / "nowhere")
    assert templates is None
    assert [str(e) for e in errors] == [f"{tmp_path / 'nowhere'}: no templates directory here"]


def test_check_reports_a_template_the_rules_need_but_french_lacks(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/reminder-1.txt": "Subject: x\n\ny\n"})
    templates, _ = load_templates(root)
    assert templates is not None
    assert [str(e) for e in templates.check(sample_contexts(), ["reminder-1", "call-client"])] == [
        f"{root / 'fr' / 'call-client.txt'}: missing: the rules use this template"
    ]


def test_template_error_reads_file_line_message() -> None:
    assert str(TemplateError("templates/fr/x.txt", 4, "oops")) == "templates/fr/x.txt:4: oops"
    assert str(TemplateError("templates/fr/x.txt", 0, "oops")) == "templates/fr/x.txt: oops"


# The sandbox


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__",
        "invoice.__class__.__mro__",
        "firm.name.__class__.__base__.__subclasses__()",
        "client.addresses.__len__()",
    ],
)
def test_the_sandbox_refuses_python_internals(tmp_path: Path, expression: str) -> None:
    root = write(tmp_path, {"fr/t.txt": f"Subject: x\n\nBonjour\n{{{{ {expression} }}}}\n"})
    templates, errors = load_templates(root)
    assert errors == [] and templates is not None
    [problem] = templates.check(sample_contexts())
    assert problem.line == 4
    assert "unsafe" in problem.message
    with pytest.raises(RenderError):
        templates.render("t", "fr", context())


def test_the_sandbox_refuses_to_change_the_context(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/t.txt": "Subject: x\n\n{{ previous_reminders.append(1) }}\n"})
    templates, _ = load_templates(root)
    assert templates is not None
    assert len(templates.check(sample_contexts())) == 1


def test_a_python_error_in_a_template_is_reported_not_raised(tmp_path: Path) -> None:
    root = write(tmp_path, {"fr/t.txt": "Subject: x\n\nBonjour\n{{ 1 / 0 }}\n"})
    templates, _ = load_templates(root)
    assert templates is not None
    [problem] = templates.check(sample_contexts())
    assert problem.line == 4 and problem.message.startswith("ZeroDivisionError")


# HTML


def test_html_is_escaped_and_text_is_not(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "fr/t.txt": "Subject: Facture {{ client.name }}\n\nBonjour {{ client.name }}\n",
        "fr/t.html": "<p>Bonjour {{ client.name }}</p>\n",
    })  # fmt: skip
    templates, errors = load_templates(root)
    assert errors == [] and templates is not None
    rendered = templates.render("t", "fr", context(case=replace(CASE, client_name="A & <B>")))
    assert rendered.subject == "Facture A & <B>"
    assert rendered.text == "Bonjour A & <B>\n"
    assert rendered.html == "<p>Bonjour A &amp; &lt;B&gt;</p>\n"


def test_html_errors_name_the_html_file(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "fr/t.txt": "Subject: x\n\ny\n",
        "fr/t.html": "<p>\n{{ invoice.numbr }}\n</p>\n",
    })  # fmt: skip
    templates, _ = load_templates(root)
    assert templates is not None
    [problem] = templates.check(sample_contexts())
    assert (problem.file, problem.line) == (str(root / "fr" / "t.html"), 2)
