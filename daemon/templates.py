"""Message templates: `templates/<lang>/<name>.txt` (and optional `.html`), read once.

Templates are edited by hand, so they run in a Jinja sandbox with strict undefined
variables: a misspelt variable is an error with its file and line, found by
`relance check` against sample cases before a client ever gets a blank. A broken file is
reported and only that template is unusable; the rest keep working.

A `.txt` file holds `Subject: ...` on its first line, a blank line, then the body; both
parts are Jinja. A `.html` file beside it is the HTML body of the same message.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.lists import format_list
from babel.numbers import format_currency
from jinja2 import (
    BaseLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
    pass_context,
    select_autoescape,
)
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from relance.core.compose import LateVars, NoticeVars, Rendered, one_line, template_context
from relance.model import Case, Channel, Decision, Firm, StepRecord

FALLBACK_LANGUAGE = "fr"
_LOCALES = {"fr": "fr_FR", "en": "en_GB"}
_SUBJECT = re.compile(r"^subject:(?P<subject>.*)$", re.IGNORECASE)
_LANGUAGE_DIR = re.compile(r"^[a-z]{2,3}$")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class TemplateError:
    """A problem in one template file, as `FILE:LINE: message` (line 0: the whole file)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}: {self.message}"
        return f"{self.file}: {self.message}"


class RenderError(Exception):
    """Rendering failed; `error` says where. The message is not sent."""

    def __init__(self, error: TemplateError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Entry:
    """One message template: the Jinja names of its parts and the file they came from."""

    language: str
    name: str
    txt_file: str
    html_file: str | None

    @property
    def subject_key(self) -> str:
        return f"{self.language}/{self.name}.txt#subject"

    @property
    def body_key(self) -> str:
        return f"{self.language}/{self.name}.txt"

    @property
    def html_key(self) -> str | None:
        return f"{self.language}/{self.name}.html" if self.html_file else None


class _SourceLoader(BaseLoader):
    """A dict of sources that also gives each its file path.

    Jinja puts that path in the frames of a failing template, which is how a runtime
    error (an undefined variable) is traced back to its file and line.
    """

    def __init__(self, sources: Mapping[str, tuple[str, str]]) -> None:
        self._sources = dict(sources)

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        if template not in self._sources:
            raise TemplateNotFound(template)
        source, filename = self._sources[template]
        return source, filename, lambda: True

    def list_templates(self) -> list[str]:
        return sorted(self._sources)


class _StrictUndefined(StrictUndefined):
    """StrictUndefined whose message names the variables that do exist.

    "invoice has no attribute 'balanse' (it has: number, amount, balance...)" tells the
    person editing the template what to write instead.
    """

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        name = self._undefined_name
        if self._undefined_obj is missing:
            return f"undefined variable {name!r}"
        obj = self._undefined_obj
        label = type(obj).__name__.removesuffix("Vars").lower()
        if is_dataclass(obj):
            known = ", ".join(f.name for f in fields(obj))
            return f"{label} has no attribute {name!r} (it has: {known})"
        if obj is None:
            return f"no attribute {name!r} here: the value is empty (None)"
        return f"{label} has no attribute {name!r}"


class Templates:
    """Every template of a templates directory, compiled, ready to render.

    `sources` maps "fr/reminder-1.txt" to the file's text; `broken` maps (language,
    name) to the error that makes that template unusable (rendering it raises instead
    of quietly falling back to another language).
    """

    def __init__(
        self,
        directory: Path,
        sources: Mapping[str, str],
        entries: Mapping[tuple[str, str], _Entry],
        env: ImmutableSandboxedEnvironment,
        broken: Mapping[tuple[str, str], TemplateError],
    ) -> None:
        self.directory = directory
        self.sources = dict(sources)
        self.broken = dict(broken)
        self._entries = dict(entries)
        self.env = env

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({lang for lang, _ in self._entries}))

    def names(self, language: str = FALLBACK_LANGUAGE) -> tuple[str, ...]:
        """The templates a language has (before falling back)."""
        lang = _language(language)
        return tuple(sorted(name for la, name in self._entries if la == lang))

    def has(self, name: str, language: str = FALLBACK_LANGUAGE) -> bool:
        """Whether `render(name, language)` finds a template (maybe by falling back)."""
        try:
            self._entry(name, language)
        except RenderError:
            return False
        return True

    def render(self, name: str, language: str, context: Mapping[str, object]) -> Rendered:
        """Render one message; the French template stands in when `language` lacks it.

        Raises RenderError (with file and line) for any failure: an undefined variable,
        a sandbox refusal, a missing amount. Nothing half-rendered is ever returned.
        """
        entry = self._entry(name, language)
        variables = {**context, "language": entry.language}
        subject = self._run(entry.subject_key, entry.txt_file, variables)
        text = self._run(entry.body_key, entry.txt_file, variables)
        html = None
        if entry.html_key and entry.html_file:
            html = self._run(entry.html_key, entry.html_file, variables)
        return Rendered(subject=one_line(subject), text=_tidy(text), html=html)

    def check(
        self,
        sample_context: Mapping[str, object] | Sequence[Mapping[str, object]],
        required: Iterable[str] = (),
    ) -> list[TemplateError]:
        """Render every template against sample contexts; return every problem found.

        Give several samples (see `sample_contexts`) so that the branches of an
        `{% if %}` are all tried. `required` names the templates the rules use: each
        must exist at least in French, the language every other one falls back to.
        """
        samples = [sample_context] if isinstance(sample_context, Mapping) else sample_context
        errors: list[TemplateError] = []
        for name in sorted(set(required)):
            key = (FALLBACK_LANGUAGE, name)
            if key not in self._entries and key not in self.broken:  # broken: already said
                path = self.directory / FALLBACK_LANGUAGE / f"{name}.txt"
                errors.append(TemplateError(str(path), 0, "missing: the rules use this template"))
        for lang, name in sorted(self._entries):
            for sample in samples:
                try:
                    self.render(name, lang, sample)
                except RenderError as exc:
                    if exc.error not in errors:
                        errors.append(exc.error)
        return errors

    def _entry(self, name: str, language: str) -> _Entry:
        lang = _language(language)
        for key in ((lang, name), (FALLBACK_LANGUAGE, name)):
            if key in self.broken:
                raise RenderError(self.broken[key])
            if key in self._entries:
                return self._entries[key]
        path = self.directory / lang / f"{name}.txt"
        message = f'no template "{name}" for language "{lang}" nor "{FALLBACK_LANGUAGE}"'
        raise RenderError(TemplateError(str(path), 0, message))

    def _run(self, key: str, filename: str, variables: Mapping[str, object]) -> str:
        try:
            return self.env.get_template(key).render(variables)
        except Exception as exc:  # a hand-written template may fail in any way
            raise RenderError(_runtime_error(exc, filename)) from exc


def load_templates(templates_dir: Path) -> tuple[Templates | None, list[TemplateError]]:
    """Read and compile every template under `templates_dir`; collect every error.

    Returns None only when there is nothing usable (no directory, no valid template).
    Otherwise the Templates hold what is valid, and the errors say what is not: a caller
    reloading on SIGHUP keeps its old templates when the list is not empty.
    """
    if not templates_dir.is_dir():
        return None, [TemplateError(str(templates_dir), 0, "no templates directory here")]
    errors: list[TemplateError] = []
    sources: dict[str, str] = {}
    entries: dict[tuple[str, str], _Entry] = {}
    jinja_sources: dict[str, tuple[str, str]] = {}
    broken: dict[tuple[str, str], TemplateError] = {}

    for path in sorted(templates_dir.iterdir()):
        if path.name.startswith((".", "_")):  # .git, __pycache__, __init__.py
            continue
        if path.is_file() and path.suffix in (".txt", ".html"):
            errors.append(
                TemplateError(
                    str(path), 0, f"put templates in a language folder, e.g. fr/{path.name}"
                )
            )
        if not path.is_dir():
            continue
        lang = _language(path.name)
        if not _LANGUAGE_DIR.match(lang):
            errors.append(
                TemplateError(str(path), 0, "not a language folder; expected fr, en, ...")
            )
            continue
        for lang_error, entry, parts in _read_language(path, lang, sources):
            if lang_error is not None:
                errors.append(lang_error)
                if entry is not None:
                    broken[(lang, entry.name)] = lang_error
                continue
            if entry is not None:
                entries[(lang, entry.name)] = entry
                jinja_sources.update(parts)

    # Compile everything once: syntax errors and unknown filters show up here.
    env = _environment(jinja_sources)
    for key, entry in list(entries.items()):
        for jinja_key, filename in (
            (entry.subject_key, entry.txt_file),
            (entry.body_key, entry.txt_file),
            (entry.html_key, entry.html_file),
        ):
            if jinja_key is None or filename is None:
                continue
            try:
                env.get_template(jinja_key)
            except TemplateSyntaxError as exc:
                error = TemplateError(filename, exc.lineno or 0, exc.message or str(exc))
                errors.append(error)
                broken.setdefault(key, error)
        if key in broken:
            del entries[key]

    if not entries:
        if not errors:
            errors.append(TemplateError(str(templates_dir), 0, "no templates found"))
        return None, errors
    return Templates(templates_dir, sources, entries, env, broken), errors


def sample_contexts(
    firm: Firm | None = None, now: datetime | None = None
) -> list[dict[str, object]]:
    """Sample cases for `Templates.check`, varied so both sides of each `{% if %}` run.

    Varies tone, payment link and IBAN, earlier reminders, a partial payment, a missing
    issue date, the client's name, and notice details. Amount and due date are always
    set: no reminder is ever rendered without them.
    """
    now = now or datetime(2026, 12, 16, 9, 0, tzinfo=timezone(timedelta(hours=1)))
    firm = firm or Firm(
        name="Atelier Dupont SARL",
        sender="Atelier Dupont - Comptabilité <compta@example.fr>",
        addresses=("compta@example.fr",),
        owners=("marie@example.fr",),
        iban="FR76 3000 6000 0112 3456 7890 189",
        payment_link="https://pay.example.fr/{number}",
    )
    case = Case(
        number="F-2026-0042",
        client_addrs=("compta@client.example", "dg@client.example"),
        subject="Facture F-2026-0042",
        root_message_id="<invoice-0042@example.fr>",
        client_name="Boulangerie Martin",
        amount=Decimal("1234.56"),
        currency="EUR",
        issue_date=date(2026, 10, 15),
        due_date=date(2026, 11, 14),
    )
    decision = Decision(
        number=case.number,
        step_index=3,
        step_name="reminder-3",
        channel=Channel.EMAIL,
        template="reminder-3",
        tone="neutral",
        planned_at=now,
    )
    previous = (
        StepRecord(1, "reminder-1", datetime.combine(date(2026, 11, 19), time(9), now.tzinfo),
                   "<relance.a.1@example.fr>", "sent"),
        StepRecord(2, "reminder-2", datetime.combine(date(2026, 12, 2), time(9), now.tzinfo),
                   "<relance.a.2@example.fr>", "sent"),
    )  # fmt: skip
    notice = NoticeVars(
        kind="reply",
        reply_from="Paul Martin <compta@client.example>",
        reply_date=now - timedelta(hours=2),
        reply_excerpt="Bonjour, le virement part vendredi.\nCordialement",
        paused_until=now + timedelta(days=14),
        missing=("amount", "due_date"),
        disagreements=("amount: pdf 1234.56 != mail 1243.56",),
        step_index=2,
        step_name="reminder-2",
        message_id="<relance.0123456789abcdef.2@example.fr>",
        attempted_at=now - timedelta(minutes=5),
        detail="timeout after DATA",
        document="Madame, Monsieur,\n\nPar la présente, nous vous mettons en demeure...\n",
        failed_addresses=("compta@client.example",),
    )
    bare_firm = replace(firm, iban="", payment_link="")
    quiet_notice = replace(
        notice, reply_date=None, paused_until=None, missing=(), disagreements=(),
        attempted_at=None, detail="", reply_excerpt="", document="", failed_addresses=(),
        reply_from="",
    )  # fmt: skip
    attachments = ("F-2026-0042.pdf", "relance-1.eml")
    variants = [
        (case, decision, firm, previous, notice, attachments),
        (case, replace(decision, tone="warm"), bare_firm, previous[:1], quiet_notice, ()),
        (
            replace(case, client_name="", issue_date=None, paid=Decimal("234.56")),
            replace(decision, tone="formal", step_index=1),
            replace(firm, payment_link=""),
            (),
            notice,
            attachments[:1],
        ),
        (case, replace(decision, tone="firm"), replace(firm, iban=""), previous, notice, ()),
        (case, replace(decision, tone="friendly"), firm, (), quiet_notice, attachments),
    ]
    contexts = [
        template_context(c, d, f, now, p, notice=n, attachments=a) for c, d, f, p, n, a in variants
    ]
    other = replace(case, number="F-2026-0051", amount=Decimal("310.00"),
                    due_date=date(2026, 11, 30), root_message_id="<invoice-0051@example.fr>")
    contexts.append(template_context(case, decision, firm, now, previous, others=(other,)))
    late = LateVars(rate=Decimal("12.15"), penalties=Decimal("17.32"), indemnity=Decimal("40"),
                    total=Decimal("1291.88"), shown=True)
    contexts.append(template_context(case, decision, firm, now, previous, late=late))
    return contexts


def _read_language(
    directory: Path, lang: str, sources: dict[str, str]
) -> Iterable[tuple[TemplateError | None, _Entry | None, dict[str, tuple[str, str]]]]:
    """The templates of one language folder, each with its Jinja parts or its error."""
    txt = {p.stem: p for p in sorted(directory.glob("*.txt")) if not p.name.startswith(".")}
    html = {p.stem: p for p in sorted(directory.glob("*.html")) if not p.name.startswith(".")}
    for name in sorted(set(html) - set(txt)):
        yield (
            TemplateError(str(html[name]), 0, f"no {name}.txt beside it to give the subject"),
            None,
            {},
        )
    for name, path in txt.items():
        entry = _Entry(lang, name, str(path), str(html[name]) if name in html else None)
        text, error = _read_text(path)
        if error is not None:
            yield error, entry, {}
            continue
        sources[f"{lang}/{path.name}"] = text
        subject, body, error = _split(text, str(path))
        if error is not None:
            yield error, entry, {}
            continue
        parts = {
            entry.subject_key: (subject, str(path)),
            # Two empty lines stand for the subject and the blank line, so that Jinja's
            # line numbers are the file's.
            entry.body_key: ("\n\n" + body, str(path)),
        }
        if name in html:
            html_text, error = _read_text(html[name])
            if error is not None:
                yield error, entry, {}
                continue
            sources[f"{lang}/{html[name].name}"] = html_text
            parts[f"{lang}/{name}.html"] = (html_text, str(html[name]))
        yield None, entry, parts


def _read_text(path: Path) -> tuple[str, TemplateError | None]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", TemplateError(str(path), 0, f"cannot read: {exc.strerror or exc}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return "", TemplateError(str(path), line, "not UTF-8 text; save the file as UTF-8")
    return text.replace("\r\n", "\n").replace("\r", "\n"), None


def _split(text: str, filename: str) -> tuple[str, str, TemplateError | None]:
    """The subject line and the body of a `.txt` template, or what is wrong with it."""
    lines = text.split("\n")
    match = _SUBJECT.match(lines[0])
    if match is None:
        message = 'first line must be "Subject: ..." (the subject of the message)'
        return "", "", TemplateError(filename, 1, message)
    subject = match["subject"].strip()
    if not subject:
        return "", "", TemplateError(filename, 1, "the subject is empty")
    if len(lines) < 2 or lines[1].strip():
        message = "second line must be blank: it separates the subject from the body"
        return "", "", TemplateError(filename, 2, message)
    body = "\n".join(lines[2:])
    if not body.strip():
        return "", "", TemplateError(filename, 3, "no body after the blank line")
    return subject, body, None


def _environment(sources: Mapping[str, tuple[str, str]]) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=_SourceLoader(sources),
        undefined=_StrictUndefined,
        autoescape=select_autoescape(
            enabled_extensions=("html",), default_for_string=False, default=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.filters.update(
        money=_money,
        date_long=_date_long,
        date_short=_date_short,
        dates_long=_dates_long,
        datetime_long=_datetime_long,
    )
    return env


def _runtime_error(exc: Exception, filename: str) -> TemplateError:
    """The file and line where rendering failed, from the frames Jinja rewrote."""
    line = 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename and frame.lineno:
            line = frame.lineno
    if isinstance(exc, TemplateSyntaxError) and exc.lineno:
        line = exc.lineno
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, ValueError | LookupError) and not _is_jinja_error(exc):
        message = f"{type(exc).__name__}: {message}"
    return TemplateError(filename, line, message)


def _is_jinja_error(exc: Exception) -> bool:
    return type(exc).__module__.startswith("jinja2")


# Filters. Each takes the template's language from the context: a French template that
# stands in for a missing English one still formats money the French way.


@pass_context
def _money(context: Context, amount: object, currency: object = "EUR") -> str:
    """1234.56 EUR → "1 234,56 €" (fr, narrow no-break spaces as babel gives) or "€1,234.56"."""
    value = _defined(amount, "money")
    if not isinstance(value, Decimal | int | str):
        raise ValueError(f"money: {value!r} is not an amount")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"money: {value!r} is not an amount") from exc
    code = str(_defined(currency, "money")).strip().upper() or "EUR"
    return str(format_currency(number, code, locale=_locale(context)))


@pass_context
def _date_long(context: Context, value: object) -> str:
    """15 décembre 2026 / 15 December 2026."""
    day = _as_date(context, value, "date_long")
    return str(format_date(day, "d MMMM y", locale=_locale(context)))


@pass_context
def _date_short(context: Context, value: object) -> str:
    """15/12/2026."""
    return _as_date(context, value, "date_short").strftime("%d/%m/%Y")


@pass_context
def _dates_long(context: Context, values: object) -> str:
    """Several dates as a phrase: "20 novembre 2026 et 3 décembre 2026"."""
    items = _defined(values, "dates_long")
    if not isinstance(items, list | tuple):
        raise ValueError(f"dates_long: {items!r} is not a list of dates")
    days = [_date_long(context, v) for v in items]
    return str(format_list(days, locale=_locale(context))) if days else ""


@pass_context
def _datetime_long(context: Context, value: object) -> str:
    """15 décembre 2026 à 09:05, in the time zone of `now` (the firm's)."""
    moment = _defined(value, "datetime_long")
    if not isinstance(moment, datetime):
        raise ValueError(f"datetime_long: {moment!r} is not a date and time")
    moment = _in_firm_zone(context, moment)
    word = "à" if _locale(context).startswith("fr") else "at"
    return str(format_datetime(moment, f"d MMMM y '{word}' HH:mm", locale=_locale(context)))


def _defined(value: object, filter_name: str) -> object:
    """`value`, or the template's own error when it is undefined or empty.

    A reminder must never go out with a blank amount or date, so None is an error here.
    """
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises its own, precise error on any use
    if value is None:
        raise ValueError(f"{filter_name}: no value (None); guard it with {{% if ... %}}")
    return value


def _as_date(context: Context, value: object, filter_name: str) -> date:
    day = _defined(value, filter_name)
    if isinstance(day, datetime):
        return _in_firm_zone(context, day).date()
    if isinstance(day, date):
        return day
    raise ValueError(f"{filter_name}: {day!r} is not a date")


def _in_firm_zone(context: Context, moment: datetime) -> datetime:
    now = context.get("now")
    if isinstance(now, datetime) and now.tzinfo is not None and moment.tzinfo is not None:
        return moment.astimezone(now.tzinfo)
    return moment


def _locale(context: Context) -> str:
    return _babel_locale(str(context.get("language", FALLBACK_LANGUAGE)))


@cache
def _babel_locale(language: str) -> str:
    lang = _language(language)
    if lang in _LOCALES:
        return _LOCALES[lang]
    try:
        return str(Locale.parse(lang))
    except (ValueError, UnknownLocaleError):
        return _LOCALES[FALLBACK_LANGUAGE]


def _language(language: str) -> str:
    """The language part of a tag ("fr_FR", "fr-FR", "FR" → "fr"): folders are named so."""
    return language.strip().lower().replace("_", "-").partition("-")[0] or FALLBACK_LANGUAGE


def _tidy(text: str) -> str:
    """The body as a mail wants it: no trailing spaces, no runs of blank lines left by
    `{% if %}` blocks, one final newline."""
    lines = [line.rstrip() for line in text.strip("\n").split("\n")]
    return _MANY_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n") + "\n"
