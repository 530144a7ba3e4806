"""The loop: mailbox events → facts → decisions → actions → mailbox.

This module is wiring only. It reads what is new in the mailbox (adapters), asks the core
what it means and what is due, carries the decisions out, and records each in the state
and the journal. Every function takes `now`: only `run` reads the clock.

Nothing owed is lost to a crash or an outage. A notice to the owner is rendered and
spooled in the outbox (`state/outbox/`, see `relance.store.outbox`) right after the stage
of the pass that committed its cause (the sync of a folder, each action, the drop folders,
the digest); the last stage sends the whole outbox, including what earlier passes could
not send. The server took it: removed. A 4xx or a dead link: kept for the next pass. A
5xx: set aside in `outbox/failed/` and logged. An ambiguous end of DATA ("unknown"):
removed, never resent, as for reminders.

What remains: a kill between a stage's state commit and its spool write (rendering the
notices of that stage, milliseconds, but for a folder's sync as long as the rest of that
folder's sync) loses those notices; closing it would mean spooling inside the state
transaction, which sync and listening own. And a kill after the server took a notice and
before its file is removed sends that notice twice: for the owner's notices a duplicate is
the lesser harm (reminders to clients, which must not be duplicated, keep their intents).
"""

from __future__ import annotations

import email
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from relance import heap
from relance.acting import Acting, group_steps
from relance.archive import (
    ensure_folder_path,
    relance_folder,
)
from relance.book import Notice, record_step, with_thread_id
from relance.config import Config
from relance.core import compose
from relance.core.schedule import (
    BusinessCalendar,
    plan_each,
    plan_span,
)
from relance.intake import Intake
from relance.listening import Listening
from relance.mailbox import smtp
from relance.mailbox.imap import Mailbox
from relance.model import (
    OPEN_STATES,
    Attachment,
    Case,
    Firm,
    Mode,
)
from relance.rules.load import load_rules
from relance.rules.model import Rules
from relance.store.journal import Journal
from relance.store.outbox import Outbox
from relance.store.plan import (
    PLAN_FILE,
    Planned,
    SavedPlan,
    plan_inputs,
    plan_key,
    read_plan,
    write_plan,
)
from relance.store.secret import load_or_create_secret
from relance.store.state import StateStore, StateView
from relance.sync import Sync
from relance.templates import Templates, load_templates, sample_contexts

log = logging.getLogger("relance")

NOTICE_TEMPLATES = (
    "notice-reply", "notice-bounce", "notice-needs-facts", "notice-send-unknown",
    "notice-formal-notice", "notice-task", "notice-confirm", "notice-unverified",
    "notice-payment", "notice-digest", "instalment",
)
REIDLE_SECONDS = 9 * 60  # re-issue IDLE before providers drop it at 10 minutes
OUTBOX_DIR = "outbox"  # in the state directory: notices owed to the owner
TO_SENT_DIR = "to-sent"  # in the outbox: copies of reminders owed to the Sent folder


@dataclass(frozen=True)
class Runtime:
    """What a pass decides with; rebuilt on SIGHUP, kept when the new files are broken."""

    config: Config
    rules: Rules
    templates: Templates
    calendar: BusinessCalendar
    firm: Firm


def load_runtime(config: Config) -> tuple[Runtime | None, list[str]]:
    """Rules and templates from disk, validated; problems as `FILE:LINE: message`."""
    rules, rule_errors = load_rules(config.rules_dir)
    templates, template_errors = load_templates(config.templates_dir)
    problems = [str(e) for e in rule_errors] + [str(e) for e in template_errors]
    if rules is None or templates is None:
        return None, problems
    try:
        calendar = BusinessCalendar.from_rules(rules, config.tz)
    except ValueError as exc:
        return None, [*problems, f"{config.rules_dir}: {exc}"]
    runtime = Runtime(config, rules, templates, calendar, config.firm.as_firm())
    required = [step.template for step in rules.steps] + list(NOTICE_TEMPLATES)
    problems += [str(e) for e in templates.check(sample_contexts(runtime.firm), required)]
    return (None if problems else runtime), problems


class Daemon(Sync, Intake, Listening, Acting):
    """One firm's mailbox and state; `run_pass` is the whole loop once."""

    def __init__(self, runtime: Runtime, store: StateStore, journal: Journal) -> None:
        self.rt = runtime
        self.store = store
        self.journal = journal
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.secret = load_or_create_secret(store.state_dir)
        self._sent_folder = ""
        self._last_raw = b""
        self._drop_folders: dict[str, str] = {}
        self.outbox = Outbox(store.state_dir / OUTBOX_DIR)
        self.to_sent = Outbox(store.state_dir / OUTBOX_DIR / TO_SENT_DIR)
        self._notice_position = 0  # keeps the Message-IDs of one pass's notices apart
        # Letters made this run, kept for the case's evidence bundle.
        self._letters: dict[str, tuple[Attachment, ...]] = {}
        # The plan last made or read (`planned`), the one in plan.json, and the digest
        # of the rules it was made with.
        self._held_plan: SavedPlan | None = None
        self._plan_on_disk: SavedPlan | None = None
        self._plan_read = False
        self._inputs: tuple[Runtime, str] | None = None

    @property
    def config(self) -> Config:
        return self.rt.config

    # -- journal and log --------------------------------------------------------------
    def event(self, now: datetime, name: str, case: str | None = None, **details: Any) -> None:
        """One decision or fact: durable in the journal, one line in the log."""
        entry = self.journal.append(name, at=now, case=case, **details)
        shown = " ".join(f"{k}={_logfmt(v)}" for k, v in details.items() if v is not None)
        log.info("event=%s%s %s", name, f" case={case}" if case else "", shown)
        if self.on_event is not None:
            self.on_event(entry)

    # -- start-up ---------------------------------------------------------------------
    def warm_start(self, now: datetime, *, will_plan: bool = True) -> int | None:
        """Read the state (upgrading an older format) and, unless a saved plan still
        holds (`store.plan`), decode its open cases when the first plan or pass will read
        them (a daemon plans before it idles; `run --once` plans nothing and weighs the
        cases only inside the send window), all as long-lived objects the cyclic
        collector never scans again (`heap.long_lived`: load, plan and status at 10k open
        cases, medians of 9 fresh processes, 537 -> 474 ms). Returns the format version
        the state was upgraded from, if any."""
        with heap.long_lived():
            found = self.store.upgrade()
            with self.store.reading() as view:
                if ((will_plan or self.rt.calendar.in_window(now))
                        and self._reusable_plan(view, now) is None):
                    view.cases_in(OPEN_STATES)
        return found

    # -- the pass ---------------------------------------------------------------------
    def run_pass(self, mailbox: Mailbox, now: datetime) -> None:
        """Sync what is new, then act on what is due at `now`; the notices each stage
        owes the owner are spooled as soon as it is done, and sent at the end."""
        notices: list[Notice] = []
        self._notice_position = 0
        sent_folder = self._sent_folder = mailbox.sent_folder()
        if self.config.mode is not Mode.DRY_RUN:
            self.outbox.sweep()  # the daemon lock is held: no writer is half-way
            self.to_sent.sweep()
            if not self._drop_folders:  # dry-run creates nothing
                self._drop_folders = self.ensure_drop_folders(mailbox)
        self.resolve_pending_sends(mailbox, sent_folder, now, notices)
        self.file_pending_copies(mailbox, sent_folder, now)
        self.spool_notices(notices, now)
        for folder in (sent_folder, "INBOX"):
            self.sync_folder(mailbox, folder, now, notices)
            self.spool_notices(notices, now)
        self.sync_drop_folders(mailbox, now, notices)
        self.spool_notices(notices, now)
        self.act(mailbox, sent_folder, now, notices)
        self.spool_notices(notices, now)
        self.seal_closed(mailbox, now)
        self.maybe_digest(now, notices)
        self.spool_notices(notices, now)
        self.send_outbox(now)

    def ensure_drop_folders(self, mailbox: Mailbox) -> dict[str, str]:
        """Relance/Paid, /Pause, /Stop: created when missing, named with the server's
        own hierarchy separator."""
        folders = {}
        for verb, name in (("paid", "Paid"), ("pause", "Pause"), ("stop", "Stop")):
            folder = relance_folder(mailbox, name)
            ensure_folder_path(mailbox, folder)
            folders[verb] = folder
        return folders

    # -- at most once -----------------------------------------------------------------
    def resolve_pending_sends(
        self, mailbox: Mailbox, sent_folder: str, now: datetime, notices: list[Notice]
    ) -> None:
        """An intent with no result means a crash mid-send: never resend. The send
        happened if the journal says the server took it (the result is journalled before
        it is committed) or if its copy is in Sent; otherwise it is unknown."""
        with self.store.reading() as view:
            pending = view.sends("intent")
        if not pending:
            return
        journalled = self._journalled_sends({r.message_id for r in pending})
        for record in pending:
            reply = journalled.get(record.message_id)
            if reply is not None:
                status, detail = "sent", f"resolved after restart from the journal: {reply}"
            else:
                found = mailbox.find_message_id(sent_folder, record.message_id)
                status, detail = ("sent" if found else "unknown"), "resolved after restart"
            steps = group_steps(record.number, record.step_index, record.step_name)
            touched: list[Case] = []
            with self.store.transaction() as tx:
                tx.send_result(record.message_id, status, detail, at=now)
                for number, step_index, step_name in steps:
                    case = tx.get_case(number)
                    if case is None or case.last_step >= step_index:
                        continue
                    case = record_step(case, step_index, step_name, record.created_at,
                                        record.message_id, status)
                    tx.put_case(case)
                    touched.append(case)
                # Journalled before the commit: a kill in between leaves the intent, and
                # the next pass resolves (and journals) it again; never a silent result.
                for number, _index, _name in steps:
                    self.event(now, "send-resolved", number, message_id=record.message_id,
                               status=status)
                if status == "unknown" and touched:
                    notices.append(Notice("send-unknown", "notice-send-unknown", touched[0], {
                        "message_id": record.message_id, "step_name": steps[0][2],
                        "step_index": steps[0][1], "attempted_at": record.created_at,
                        "detail": "the daemon stopped during the send; the copy is not in "
                                  "Sent",
                    }))
                # Spooled before the commit: a kill in between tells the owner twice at
                # worst, never not at all.
                self.spool_notices(notices, now)

    def _journalled_sends(self, message_ids: set[str]) -> dict[str, str]:
        """Message-ID → the server's reply, for those of `message_ids` the journal says
        the server accepted (one read of the journal, only after a crash mid-send)."""
        found: dict[str, str] = {}
        for entry in self.journal.entries():
            message_id = entry.get("message_id")
            if entry.get("event") == "reminder-sent" and message_id in message_ids:
                found[str(message_id)] = str(entry.get("smtp_reply") or "")
        return found

    # -- telling the owner ------------------------------------------------------------
    def spool_notices(self, notices: list[Notice], now: datetime) -> None:
        """Render the notices gathered since the last call and spool them in the outbox,
        so that a crash or an SMTP outage after this point loses none; empties `notices`.
        Dry-run spools nothing and says what it would send."""
        pending = list(notices)
        notices.clear()
        if not self.rt.firm.owners:
            return
        for notice in pending:
            number = notice.case.number if notice.case else None
            try:
                message = self._fresh_notice(notice, now)
            except Exception as exc:
                log.exception("notice %s could not be written", notice.kind)
                self.event(now, "notice-failed", number, kind=notice.kind,
                           reason=f"{type(exc).__name__}: {exc}")
                continue
            if self.config.mode is Mode.DRY_RUN:
                self.event(now, "would-notify", number, kind=notice.kind,
                           subject=message["Subject"])
                continue
            self.outbox.put(str(message["Message-ID"]).strip(), message.as_bytes())

    def _fresh_notice(self, notice: Notice, now: datetime) -> EmailMessage:
        """The notice with a Message-ID no other notice of this pass, nor one still in
        the outbox from an earlier pass at the same `now`, has."""
        while True:
            position = self._notice_position
            self._notice_position += 1
            message = self.build_notice(notice, now, position)
            if str(message["Message-ID"]).strip() not in self.outbox:
                return message

    def send_outbox(self, now: datetime) -> None:
        """Send every notice in the outbox, oldest first (those earlier passes could not
        send too). A transient failure keeps it and the rest for the next pass."""
        if self.config.mode is Mode.DRY_RUN:
            return
        spooled, damaged = self.outbox.items()
        for bad in damaged:
            self._set_aside(self.outbox, bad.path, bad.reason, now)
        for item in spooled:
            try:
                message = email.message_from_bytes(item.raw, _class=EmailMessage,
                                                   policy=compose.MAIL_POLICY)
                kind = str(message.get("X-Relance-Notice") or "notice")
                number = str(message.get("X-Relance-Invoice") or "").strip() or None
                outcome = smtp.send(self.config.smtp, message)
            except Exception as exc:
                # smtp.send never raises for the server or the network: this message
                # itself is at fault, and must not stop every later pass here.
                log.exception("notice %s cannot be sent", item.message_id)
                self._set_aside(self.outbox, item.path, f"{type(exc).__name__}: {exc}", now)
                continue
            if outcome.status == smtp.FAILED and outcome.transient:
                # Not the case's news (case=None): it repeats every pass while it lasts.
                self.event(now, "notice-deferred", kind=kind, invoice=number,
                           message_id=item.message_id, smtp_reply=outcome.reply)
                return  # the server takes nothing now: the rest waits its turn too
            if outcome.status == smtp.FAILED:
                log.error("notice %s refused for good (%s): kept in %s", item.message_id,
                          outcome.reply, self.outbox.directory / "failed")
                self.event(now, "notice-refused", number, kind=kind,
                           message_id=item.message_id, smtp_reply=outcome.reply)
                self._set_aside(self.outbox, item.path, outcome.reply, now, journal=False)
                continue
            # "sent", or "unknown": the server may have it, and a notice too is sent at
            # most once. Either way the owner may answer it: keep it in the case's thread
            # so the answer finds its case.
            self.event(now, "owner-notified" if outcome.status == smtp.SENT
                       else "notice-unknown", number, kind=kind, status=outcome.status,
                       message_id=item.message_id, smtp_reply=outcome.reply)
            if number is not None:
                with self.store.transaction() as tx:
                    fresh = tx.get_case(number)
                    if fresh is not None:
                        tx.put_case(with_thread_id(fresh, item.message_id))
            self.outbox.remove(item.message_id)

    def _set_aside(self, outbox: Outbox, path: Path, reason: str, now: datetime,
                   journal: bool = True) -> None:
        """A spool file that cannot go (refused for good, or damaged): out of the way of
        later passes, kept in `failed/` for the owner, said clearly."""
        try:
            moved: Path | None = outbox.set_aside(path)
        except OSError as exc:
            moved = None
            log.error("spool file %s could not be set aside: %s", path, exc)
        if journal:
            log.error("spool file %s: %s; set aside in %s", path, reason, moved)
            self.event(now, "outbox-damaged", file=str(path), reason=reason,
                       moved_to=str(moved) if moved else None)

    def build_notice(self, notice: Notice, now: datetime, position: int = 0) -> EmailMessage:
        case = notice.case or _NO_CASE
        notice_vars = compose.notice_vars(notice.kind, **notice.extra)
        context = compose.template_context(
            case, None, self.rt.firm, now, case.steps, notice=notice_vars,
            attachments=[a.filename for a in notice.attachments],
        )
        rendered = self.rt.templates.render(notice.template, case.language, context)
        message_id = compose.notice_message_id(
            case.number or None, notice.kind, now + timedelta(microseconds=position),
            self.rt.firm.domain, self.secret,
        )
        # The notices of one case form one thread in the owner's mail program.
        parent = notice.in_reply_to or next(
            (m for m in reversed(case.thread_ids) if compose.is_notice_id(m, self.secret)), None)
        return compose.build_owner_notice(self.rt.firm, rendered.subject, rendered.text, now,
                                          message_id, notice.case, parent,
                                          kind=notice.kind, attachments=notice.attachments)

    # -- the daemon -------------------------------------------------------------------
    def planned(self, now: datetime) -> Planned:
        """Each open case that has a next step, by number, with it: what the idle timer
        and the status line both read, so the daemon plans once between a pass and IDLE
        (10k plans took 0.3 s on this project's 2-core machines), and not at all when the
        plan it holds, or the one it saved when it last stopped, still holds
        (`store.plan`)."""
        with self.store.reading() as view:
            reusable = self._reusable_plan(view, now)
            if reusable is not None:
                return list(reusable.planned)
            cases = view.cases_in(OPEN_STATES).values()
            key = plan_key(view.identity or "", self._plan_inputs())
        planned = [(case.number, step)
                   for case, step in plan_each(cases, self.rt.rules, self.rt.calendar, now)]
        start, end = plan_span(cases, self.rt.calendar, now)
        self._held_plan = SavedPlan(key, start, end, tuple(planned))
        return planned

    def save_plan(self) -> None:
        """Keep the plan for the next start (`store.plan`); a failure to write it costs
        that start a planning, so it is logged and nothing else."""
        if self._held_plan is None or self._held_plan is self._plan_on_disk:
            return
        path = self.store.state_dir / PLAN_FILE
        try:
            write_plan(path, self._held_plan)
        except OSError as exc:
            log.warning("event=plan-not-saved file=%s reason=%s", path, _logfmt(str(exc)))
            return
        self._plan_on_disk = self._held_plan

    def nothing_due(self, view: StateView, now: datetime) -> bool:
        """Whether a plan that still holds for `view` at `now` shows no step due by then,
        so that `due_decisions` would find none either and `act` need decode no case (a
        restart inside the send window, or a pass that found nothing new).

        The plan is made from the cases as stored; `act` first raises each one's last
        contact to its client's latest mail (`with_client_contacts`), and a later contact
        can only put a case's next step later or drop it, never bring one forward
        (`test_schedule.py` checks this over generated rules and cases). So a step that
        is not due in the plan is not due in `act`.
        """
        plan = self._reusable_plan(view, now)
        return plan is not None and all(step.at > now for _number, step in plan.planned)

    def _reusable_plan(self, view: StateView, now: datetime) -> SavedPlan | None:
        """The plan held in memory or saved at the last stop, if it is the one planning
        `view` at `now` would give."""
        if view.identity is None:
            return None
        if self._held_plan is None and not self._plan_read:
            self._plan_read = True
            self._held_plan = self._plan_on_disk = read_plan(
                self.store.state_dir / PLAN_FILE, self.rt.config.tz)
        if self._held_plan is None:
            return None
        key = plan_key(view.identity, self._plan_inputs())
        return self._held_plan if self._held_plan.answers(key, now) else None

    def _plan_inputs(self) -> str:
        """`plan_inputs` of the current rules, computed once per Runtime."""
        if self._inputs is None or self._inputs[0] is not self.rt:
            self._inputs = (self.rt, plan_inputs(self.rt.rules, self.rt.config.tz))
        return self._inputs[1]

    def next_wake(self, now: datetime, planned: Planned | None = None) -> datetime:
        """The earliest planned step (or a send window opening), for the idle timer;
        from `planned` (`Daemon.planned` at the same `now`) when given."""
        if planned is None:
            planned = self.planned(now)
        future = [p.at for _, p in planned if p.at > now]
        return min(future, default=now + timedelta(seconds=REIDLE_SECONDS))


# Notices about no invoice (an unverified command, an unmatched payment, the digest).
_NO_CASE = Case(number="", client_addrs=(), subject="", root_message_id="<none@relance>")


def _logfmt(value: Any) -> str:
    text = "" if value is None else str(value)
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class Clock:
    """The only place the daemon reads the time; `--now` replaces it with a fixed instant."""

    def __init__(self, tz: Any, fixed: datetime | None = None) -> None:
        self.tz = tz
        self.fixed = fixed

    def now(self) -> datetime:
        return self.fixed if self.fixed is not None else datetime.now(self.tz)


def run_once(daemon: Daemon, now: datetime) -> None:
    """`relance run --once`: one pass at `now`, then exit."""
    with daemon.store.lock_daemon():
        daemon.warm_start(now, will_plan=False)
        with Mailbox(daemon.config.imap) as mailbox:
            daemon.run_pass(mailbox, now)
