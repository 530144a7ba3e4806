"""What each verb of the command line does; `cli.py` only parses arguments.

Problems reach the user as one line each (`FILE:LINE: message` for files they edit) and
exit status 1; never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from relance import app, archive, defaults, logs, service
from relance import rebuild as rebuilding
from relance.archive import relance_folder
from relance.cli import print_json
from relance.config import Config, ConfigError, find_config, load_config
from relance.core import commands as owner
from relance.core import compose
from relance.core.facts import apply_facts
from relance.core.letter import record_lrar
from relance.core.listen import Command, parse_commands
from relance.core.schedule import plan_next
from relance.mailbox import smtp
from relance.mailbox.imap import IMAP_ERRORS, Mailbox, is_disk_error
from relance.model import OPEN_STATES, Attachment, Case, CaseState, Channel, Decision, Mode
from relance.store import evidence as evidence_store
from relance.store.journal import Journal
from relance.store.secret import load_or_create_secret
from relance.store.state import (
    COLD_FILE,
    LOG_FILE,
    STATE_FILE,
    AlreadyRunning,
    Cursor,
    StateCorrupt,
    StateStore,
    fsync_dir,
)

log = logging.getLogger("relance")


def _fail(message: str) -> int:
    print(f"relance: {message}", file=sys.stderr)
    return 1


def _config(args: argparse.Namespace) -> Config | None:
    path = find_config(args.config)
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _runtime(config: Config) -> app.Runtime | None:
    runtime, problems = app.load_runtime(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    return runtime


def _reload_runtime(config: Config) -> app.Runtime | None:
    """Rules and templates again (SIGHUP); problems go to the log, the old ones stay."""
    runtime, problems = app.load_runtime(config)
    for problem in problems:
        log.error("event=reload-problem problem=%s", logs.quote(problem))
    return runtime


def _now(args: argparse.Namespace, config: Config) -> datetime:
    now: datetime | None = getattr(args, "now", None)
    if now is None:
        return datetime.now(config.tz)
    return now if now.tzinfo else now.replace(tzinfo=config.tz)


# -- init ------------------------------------------------------------------------------
def init(args: argparse.Namespace) -> int:
    target: Path = args.dir
    target.mkdir(parents=True, exist_ok=True)
    written = []
    config_path = target / "relance.toml"
    if config_path.exists() and not args.force:
        return _fail(f"{config_path} exists; use --force to overwrite")
    config_path.write_text(defaults.config_text(), encoding="utf-8")
    written.append(config_path)
    for name in ("rules", "templates"):
        dest = target / name
        if dest.exists() and not args.force:
            print(f"kept {dest} (exists)")
            continue
        defaults.copy_defaults(name, dest)
        written.append(dest)
    for path in written:
        print(f"wrote {path}")
    print(f"next: edit {config_path}, then `relance check --config {config_path}`")
    return 0


# -- check -----------------------------------------------------------------------------
def check(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    ok = True
    runtime = _runtime(config)
    if runtime is None:
        ok = False
    else:
        print(f"rules: {len(runtime.rules.steps)} steps "
              f"({', '.join(s.name for s in runtime.rules.steps)})")
        print(f"templates: {len(runtime.templates.names())} checked against a sample case")
    try:
        with Mailbox(config.imap) as mailbox:
            print(f"imap: {config.imap.host}:{config.imap.port} logged in as "
                  f"{config.imap.username}")
            print(f"imap capabilities: {' '.join(mailbox.capabilities())}")
            special = mailbox.special_folders()
            for flag, name in sorted(special.items()):
                print(f"imap folder: {name} ({flag})")
            try:
                print(f"imap sent folder: {mailbox.sent_folder()}")
            except LookupError as exc:
                ok = False
                print(f"relance: imap: {exc}", file=sys.stderr)
    except IMAP_ERRORS as exc:
        ok = False
        print(f"relance: imap {config.imap.host}:{config.imap.port}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        extensions = smtp.probe(config.smtp)
        print(f"smtp: {config.smtp.host}:{config.smtp.port} logged in as "
              f"{config.smtp.username} ({extensions})")
    except Exception as exc:  # aiosmtplib and ssl raise many kinds; all mean "not usable"
        ok = False
        print(f"relance: smtp {config.smtp.host}:{config.smtp.port}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
    print("all is well" if ok else "problems found", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


# -- run -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if loaded is None:
        return 1
    config, runtime = loaded
    try:
        store = StateStore(config.state_dir)
        daemon = app.Daemon(runtime, store, Journal(config.state_dir))
    except StateCorrupt as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"state_dir {config.state_dir}: {exc.strerror or exc}; "
                     "set state_dir in relance.toml to a writable folder")
    try:
        if args.once:
            app.run_once(daemon, _now(args, config))
        else:
            if args.now is not None:
                return _fail("--now goes with --once")
            service.run_forever(daemon, app.Clock(config.tz), lambda: _reload_runtime(config))
    except AlreadyRunning as exc:
        return _fail(str(exc))
    except StateCorrupt as exc:
        return _fail(str(exc))
    except OSError as exc:
        if is_disk_error(exc):
            return _fail(f"cannot write {exc.filename or config.state_dir}: "
                         f"{exc.strerror or exc}; nothing was lost, free some space and run "
                         "again")
        return _fail(f"imap {config.imap.host}:{config.imap.port}: {type(exc).__name__}: {exc}")
    except IMAP_ERRORS as exc:
        return _fail(f"imap {config.imap.host}:{config.imap.port}: {type(exc).__name__}: {exc}")
    return 0


# -- status and show -------------------------------------------------------------------
def case_summary(case: Case, runtime: app.Runtime, now: datetime) -> dict[str, Any]:
    """One case as `status --json` prints it: the documented, stable shape."""
    planned = plan_next(case, runtime.rules, runtime.calendar, now)
    last = case.steps[-1] if case.steps else None
    days_late = (now.astimezone(runtime.config.tz).date() - case.due_date).days \
        if case.due_date else None
    return {
        "number": case.number,
        "client": case.client_name or (case.client_addrs[0] if case.client_addrs else ""),
        "client_addresses": list(case.client_addrs),
        "amount": None if case.amount is None else str(case.amount),
        "paid": str(case.paid),
        "balance": None if case.balance is None else str(case.balance),
        "currency": case.currency,
        "issue_date": case.issue_date.isoformat() if case.issue_date else None,
        "due_date": case.due_date.isoformat() if case.due_date else None,
        "days_late": days_late,
        "step": case.last_step,
        "step_name": last.name if last else None,
        "state": case.state.value,
        "reason": case.reason or None,
        "next_action": None if planned is None else {
            "step": planned.step_index,
            "name": planned.step_name,
            "channel": planned.channel.value,
            "at": planned.at.isoformat(),
        },
    }


def _read_cases(config: Config, *, every: bool) -> dict[str, Case]:
    """The open cases, or `every` case (settled ones from the cold file too)."""
    with StateStore(config.state_dir).reading() as view:
        return view.cases() if every else view.cases_in(OPEN_STATES)


def _read_case(config: Config, number: str) -> Case | None:
    with StateStore(config.state_dir).reading() as view:
        return view.get_case(number)


def _loaded(args: argparse.Namespace) -> tuple[Config, app.Runtime] | None:
    """The config and the rules and templates, problems already printed when None."""
    config = _config(args)
    if config is None:
        return None
    runtime = _runtime(config)
    return None if runtime is None else (config, runtime)


def status(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if loaded is None:
        return 1
    config, runtime = loaded
    now = _now(args, config)
    try:
        cases = _read_cases(config, every=args.all)
    except StateCorrupt as exc:
        return _fail(str(exc))
    shown = list(cases.values())
    shown.sort(key=lambda c: (c.due_date is None, c.due_date, c.number))
    rows = [case_summary(c, runtime, now) for c in shown]
    if args.json:
        print_json({"now": now.isoformat(), "cases": rows})
        return 0
    if not rows:
        print("no open cases")
        return 0
    header = ("NUMBER", "CLIENT", "DUE", "BALANCE", "LATE", "STEP", "STATE", "NEXT")
    table = [header]
    for r in rows:
        nxt = r["next_action"]
        table.append((
            r["number"], r["client"][:28], r["due_date"] or "?",
            f"{r['balance']} {r['currency']}" if r["balance"] is not None else "?",
            f"{r['days_late']}d" if r["days_late"] is not None else "",
            r["step_name"] or "-", r["state"],
            f"{nxt['name']} {nxt['at'][:16].replace('T', ' ')}" if nxt else "-",
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def show(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if loaded is None:
        return 1
    config, runtime = loaded
    now = _now(args, config)
    case = _read_case(config, args.number)
    if case is None:
        return _fail(f"no case {args.number}; `relance status --all` lists them")
    summary = case_summary(case, runtime, now)
    for key, value in summary.items():
        if key != "next_action":
            print(f"{key}: {value}")
    print(f"subject: {case.subject}")
    print("\ntimeline:")
    for entry in Journal(config.state_dir).entries(case.number):
        details = {k: v for k, v in entry.items() if k not in ("at", "case", "event") and v}
        print(f"  {entry['at'][:16].replace('T', ' ')}  {entry['event']}  "
              + " ".join(f"{k}={v}" for k, v in details.items()))
    planned = plan_next(case, runtime.rules, runtime.calendar, now)
    if planned is None:
        print("\nnext: nothing planned")
        return 0
    step = runtime.rules.steps[planned.step_index - 1]
    decision = Decision(case.number, planned.step_index, step.name, step.channel, step.template,
                        step.tone, planned.at)
    daemon = app.Daemon(runtime, StateStore(config.state_dir), Journal(config.state_dir))
    attachments: tuple[Attachment, ...] = ()
    try:
        with Mailbox(config.imap) as mailbox:
            attachments = daemon._invoice_attachments(mailbox, case)
    except IMAP_ERRORS as exc:
        print(f"relance: imap {config.imap.host}: {exc}; shown without the invoice's "
              "attachments", file=sys.stderr)
    rendered = daemon.render(case, decision, planned.at, attachments)
    subject = rendered.subject
    if step.channel is Channel.EMAIL and case.subject:
        subject = compose.thread_subject(case.subject)  # reminders keep the thread's subject
    print(f"\nnext: {step.name} ({step.channel.value}) at {planned.at.isoformat()}")
    print(f"Subject: {subject}")
    if attachments:
        print(f"Attachments: {', '.join(a.filename for a in attachments)}")
    print()
    print(rendered.text)
    return 0


# -- the owner's commands ----------------------------------------------------------------
def owner_command(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    now = _now(args, config)
    try:
        change = _owner_change(args, config, now)
    except owner.CommandRefused as exc:
        return _fail(str(exc))
    store = StateStore(config.state_dir)
    try:
        with store.transaction() as tx:
            case = tx.get_case(args.number)
            if case is None:
                return _fail(f"no case {args.number}; `relance status --all` lists them")
            updated = change(case)
            tx.put_case(updated)
    except owner.CommandRefused as exc:
        return _fail(str(exc))
    except StateCorrupt as exc:
        return _fail(str(exc))
    Journal(config.state_dir).append(
        f"owner-{args.verb}", at=now, case=args.number, via="shell", state=updated.state.value,
        paid=str(updated.paid), paused_until=updated.paused_until,
        amount=updated.amount, due=updated.due_date,
        sent_on=getattr(args, "date", None),
    )
    balance = updated.balance
    print(f"{updated.number}: {updated.state.value}"
          + (f", balance {balance} {updated.currency}" if balance is not None else "")
          + (f", until {updated.paused_until:%Y-%m-%d}" if updated.paused_until else ""))
    return 0


def _owner_change(
    args: argparse.Namespace, config: Config, now: datetime
) -> Callable[[Case], Case]:
    """The change a shell command makes to a case (arguments checked before any lock)."""
    change: Callable[[Case], Case]
    if args.verb == "paid":
        amount = owner.parse_amount(args.amount) if args.amount else None

        def change(case: Case) -> Case:
            return owner.paid(case, now, amount)
    elif args.verb == "pause":
        def change(case: Case) -> Case:
            until = (None if args.until is None and args.duration is None
                     else owner.pause_end(now, config.tz, args.until, args.duration))
            return owner.pause(case, now, until, f"paused by the owner {now:%Y-%m-%d}")
    elif args.verb == "resume":
        change = owner.resume
    elif args.verb == "facts":
        fact_amount = owner.parse_amount(args.amount) if args.amount else None

        def change(case: Case) -> Case:
            return apply_facts(case, now, fact_amount, args.due)
    elif args.verb == "sent-lrar":
        def change(case: Case) -> Case:
            return record_lrar(case, args.date, today=now.astimezone(config.tz).date())
    else:
        def change(case: Case) -> Case:
            return owner.stop(case, now)
    return change


# -- rebuild ---------------------------------------------------------------------------
def rebuild(args: argparse.Namespace) -> int:
    """`relance rebuild`: a new state from the mailbox and the journal, for a state file
    that cannot be read. The old files are moved aside, never deleted."""
    loaded = _loaded(args)
    if loaded is None:
        return 1
    config, runtime = loaded
    now = _now(args, config)
    try:
        store = StateStore(config.state_dir)
        with store.lock_daemon():
            return _rebuild(config, runtime, store, now)
    except AlreadyRunning as exc:
        return _fail(f"{exc}; stop the daemon first (e.g. `systemctl stop relance`), then "
                     "run `relance rebuild` again")
    except OSError as exc:
        return _fail(f"state_dir {config.state_dir}: {exc.strerror or exc}")


def _rebuild(config: Config, runtime: app.Runtime, store: StateStore, now: datetime) -> int:
    """Build the new state in a scratch directory beside the old one, and put it in place
    only once whole: a rebuild that fails half-way (the server went away) leaves the
    files as they were, never a state without its steps that would send them again."""
    stamp = now.strftime("%Y%m%dT%H%M%S")
    scratch = config.state_dir / f".rebuild-{stamp}"
    shutil.rmtree(scratch, ignore_errors=True)
    journal = Journal(config.state_dir)
    entries = rebuilding.number_lines(list(journal.entries()), journal.skipped_lines)
    for line in journal.skipped_lines:
        print(f"{journal.path}:{line}: not a whole journal entry (torn by a crash?); "
              "skipped", file=sys.stderr)
    try:
        report = _rebuild_in(scratch, config, runtime, entries, now)
        moved = _install(config.state_dir, scratch, stamp)
    except IMAP_ERRORS as exc:
        return _fail(f"imap {config.imap.host}:{config.imap.port}: {type(exc).__name__}: "
                     f"{exc}; nothing was changed, run `relance rebuild` again")
    except StateCorrupt as exc:
        return _fail(f"{exc}; nothing was changed")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    journal.append("state-rebuilt", at=now, cases=report.cases, known=report.known,
                   steps=report.steps, sends=report.sends, decisions=report.decisions,
                   news=report.news, not_placed=report.not_placed or None,
                   problems=len(report.problems) or None,
                   moved_aside=[str(p) for p in moved] or None)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    print(f"state rebuilt in {config.state_dir}")
    for path in moved:
        print(f"  moved aside: {path}")
    print(f"  cases: {report.cases} from the mailbox ({report.known} known to the journal)")
    print(f"  steps restored: {report.steps} (send records: {report.sends})")
    print(f"  decisions re-applied: {report.decisions}")
    print(f"  news the journal did not have yet: {report.news}")
    if report.not_placed:
        print(f"  not placed (in the journal, not in the mailbox): "
              f"{', '.join(report.not_placed)}")
    print("next: `relance status`, then start the daemon again")
    return 0


@dataclasses.dataclass(frozen=True)
class _RebuildReport:
    cases: int
    known: int
    steps: int
    sends: int
    decisions: int
    news: int
    not_placed: list[str]
    problems: list[str]


def _rebuild_in(
    scratch: Path, config: Config, runtime: app.Runtime, entries: list[dict[str, Any]],
    now: datetime,
) -> _RebuildReport:
    """Re-read Sent and INBOX from the start into a state in `scratch` (dry-run: nothing
    is sent, moved or told, and the re-read's own entries go to a scratch journal), then
    lay the journal over the cases in one transaction."""
    store = StateStore(scratch)
    dry = dataclasses.replace(runtime, config=config.model_copy(update={"mode": Mode.DRY_RUN}))
    daemon = app.Daemon(dry, store, Journal(scratch))
    daemon.secret = load_or_create_secret(config.state_dir)  # notices the owner answered
    reread: list[dict[str, Any]] = []
    daemon.on_event = reread.append
    with Mailbox(config.imap) as mailbox:
        sent_folder = daemon._sent_folder = mailbox.sent_folder()
        # Closed cases were archived with their thread: read those folders too (first,
        # as Sent is: the invoices before the answers in INBOX).
        root = relance_folder(mailbox, "Archive")
        archives = sorted(str(name) for _flags, _delim, name in mailbox.imap.list_folders()
                          if str(name) == root or str(name).startswith(root))
        for folder in (sent_folder, *archives, "INBOX"):
            daemon.sync_folder(mailbox, folder, now, [])
        # Folder drops are commands the journal holds (owner-VERB via=folder); reading
        # them again would apply them twice: the cursors start past what is there.
        drops = [relance_folder(mailbox, name) for name in ("Paid", "Pause", "Stop")]
        cursors = [Cursor(folder, state.uidvalidity, max(state.uidnext - 1, 0),
                          state.highestmodseq)
                   for folder in drops if mailbox.imap.folder_exists(folder)
                   for state in [mailbox.folder_state(folder)]]

    def apply_command(case: Case, verb: str, line: str, at: datetime) -> Case:
        if not line:
            return daemon.apply_command(case, Command(verb=verb, line=verb), at)
        found, _errors = parse_commands(line)
        command = next((c for c in found if c.verb == verb), None)
        if command is None:
            raise owner.CommandRefused(f'"{line}" no longer reads as a {verb} command')
        return daemon.apply_command(case, command, at)

    names = {i: step.name for i, step in enumerate(runtime.rules.steps, start=1)}
    folded = rebuilding.fold_journal(entries, names, str(Journal(config.state_dir).path))
    news = rebuilding.news_entries(entries, reread)
    news_folded = rebuilding.fold_journal(news, names, "mailbox")
    histories = dict(folded.histories)
    for number, extra in news_folded.histories.items():
        base = histories.get(number, rebuilding.History(number))
        histories[number] = dataclasses.replace(base, facts=base.facts + extra.facts)
    problems = list(folded.problems)
    steps = decisions = 0
    with store.reading() as view:
        seen = view.cases()
    with store.transaction() as tx:
        for number, case in seen.items():
            history = histories.get(number)
            if history is None:
                continue  # an invoice the journal never saw: the re-read's case stands
            reply_until = case.paused_until if (
                case.state is CaseState.PAUSED and case.reason.startswith("client ")) else None
            restored = rebuilding.restore_case(case, history, apply_command, reply_until)
            tx.put_case(restored.case)
            seen[number] = restored.case
            steps += restored.steps_restored
            decisions += restored.decisions_applied
            problems.extend(restored.problems)
        records = rebuilding.sends_to_record(seen.values())
        for record in records:
            if tx.send(record.message_id) is None:
                tx.send_intent(record.message_id, record.numbers, record.step_index,
                               record.label, record.at)
                tx.send_result(record.message_id, record.status,
                               "restored by relance rebuild from the journal", at=now)
        for cursor in cursors:
            tx.set_cursor(cursor)
        digest_at = [e["at"] for e in entries
                     if e.get("event") == "owner-notified" and e.get("kind") == "digest"]
        if digest_at:
            tx.set_meta("last_digest_at", digest_at[-1])
    store.compact()
    return _RebuildReport(
        cases=len(seen), known=sum(n in folded.histories for n in seen), steps=steps,
        sends=len(records), decisions=decisions, news=len(news),
        not_placed=rebuilding.not_placed(folded.histories, list(seen)), problems=problems)


def _install(state_dir: Path, scratch: Path, stamp: str) -> list[Path]:
    """Move the old `state.json`, `state.log` and `closed.jsonl` aside
    (`*.broken-STAMP`), then the new files in, the snapshot last (its stubs point into
    the new cold file); each a rename in one directory, and the directory synced."""
    moved = []
    for name in (STATE_FILE, LOG_FILE, COLD_FILE):
        old = state_dir / name
        if old.exists():
            target = old.with_name(f"{name}.broken-{stamp}")
            suffix = 1
            while target.exists():
                target = old.with_name(f"{name}.broken-{stamp}-{suffix}")
                suffix += 1
            os.replace(old, target)
            moved.append(target)
    if (scratch / COLD_FILE).exists():
        os.replace(scratch / COLD_FILE, state_dir / COLD_FILE)
    os.replace(scratch / STATE_FILE, state_dir / STATE_FILE)
    fsync_dir(state_dir)
    return moved


# -- evidence ---------------------------------------------------------------------------
def evidence(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    if args.evidence_verb == "verify":
        problems = evidence_store.verify(config.evidence_dir)
        for problem in problems:
            print(f"{config.evidence_dir}/{problem}", file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s) found", file=sys.stderr)
            return 1
        head = evidence_store.ledger_head(config.evidence_dir)
        count = sum(1 for p in config.evidence_dir.glob("*/manifest.json")) \
            if config.evidence_dir.exists() else 0
        print(f"{count} bundle(s) verified; ledger head {head or '(empty)'}")
        return 0
    now = _now(args, config)
    case = _read_case(config, args.number)
    if case is None:
        return _fail(f"no case {args.number}; `relance status --all` lists them")
    try:
        with Mailbox(config.imap) as mailbox:
            archive.bundle_case(mailbox, case, Journal(config.state_dir), config.evidence_dir,
                                now, firm=config.firm.as_firm(), tz=config.tz)
    except IMAP_ERRORS as exc:
        if evidence_store.latest_bundle(config.evidence_dir, case.number) is None:
            return _fail(f"imap {config.imap.host}: {type(exc).__name__}: {exc}; "
                         "and no bundle was sealed before")
        print(f"relance: imap {config.imap.host}: {exc}; exporting the last sealed bundle",
              file=sys.stderr)
    except evidence_store.EvidenceError as exc:
        return _fail(str(exc))
    try:
        zipped = evidence_store.export(config.evidence_dir, case.number, args.out)
    except evidence_store.EvidenceError as exc:
        return _fail(str(exc))
    print(f"wrote {zipped.with_suffix('')} and {zipped}")
    return 0


# -- demo ------------------------------------------------------------------------------
def demo(args: argparse.Namespace) -> int:
    from relance import demo as demo_module

    return demo_module.main(fast=args.fast)
