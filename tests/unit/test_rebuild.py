"""The fold behind `relance rebuild`: journal entries in, steps and decisions out, laid
over the case a re-read of the mailbox found. No I/O."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from relance import rebuild
from relance.core import commands as owner
from relance.core.commands import CommandRefused
from relance.model import Case, CaseState

TZ = timezone(timedelta(hours=2))
NUMBER = "F-1"
MID = "<relance.0123456789abcdef.{}@example.fr>"


def at(day: int, hour: int = 9) -> datetime:
    return datetime(2026, 5, day, hour, tzinfo=TZ)


def entry(event: str, day: int, number: str | None = NUMBER, **details: Any) -> dict[str, Any]:
    return {"at": at(day).isoformat(), "case": number, "event": event, **details}


def seen(**changes: Any) -> Case:
    """The case as a re-read of the mailbox finds it: facts, no steps, no decisions."""
    base = Case(number=NUMBER, client_addrs=("client@example.com",), subject="Facture F-1",
                root_message_id="<inv@example.fr>", amount=Decimal("1200.00"),
                due_date=date(2026, 5, 7), thread_ids=("<inv@example.fr>",))
    return Case(**{**base.__dict__, **changes})


def no_command(case: Case, verb: str, line: str, when: datetime) -> Case:
    raise AssertionError(f"no mailed command expected, got {verb} {line!r}")


def restored(entries: list[dict[str, Any]], case: Case | None = None,
             apply: rebuild.CommandApplier = no_command,
             reply_until: datetime | None = None) -> rebuild.Restored:
    folded = rebuild.fold_journal(entries, {1: "courtesy", 2: "reminder-1", 3: "reminder-2"})
    assert not folded.problems
    return rebuild.restore_case(case or seen(), folded.histories[NUMBER], apply, reply_until)


def sent(step: int, day: int, status: str = "sent") -> dict[str, Any]:
    return entry(f"reminder-{status}", day, step=step, step_name=f"s{step}",
                 message_id=MID.format(step), smtp_reply="250 ok")


def test_sent_and_unknown_reminders_become_steps_in_order() -> None:
    result = restored([entry("invoice-found", 1, state="chasing"), sent(1, 4),
                       sent(2, 12, "unknown")])
    assert [(s.index, s.outcome) for s in result.case.steps] == [(1, "sent"), (2, "unknown")]
    assert result.case.last_step == 2
    assert result.case.last_contact_at == at(4)
    assert result.steps_restored == 2


def test_drafted_and_handed_over_steps_are_kept_with_their_outcome() -> None:
    result = restored([sent(1, 4, "drafted"),
                       entry("handed-over", 20, step=2, step_name="letter", channel="letter")])
    assert [s.outcome for s in result.case.steps] == ["drafted", "handed-over"]


def test_failed_reminder_is_not_a_step_and_a_transient_one_changes_nothing() -> None:
    result = restored([entry("invoice-found", 1, state="chasing"),
                       entry("reminder-failed", 4, step=1, message_id=MID.format(1),
                             smtp_reply="421 try later")])
    assert result.case.steps == ()
    assert result.case.state is CaseState.CHASING
    assert result.decisions_applied == 0


def test_permanently_refused_reminder_leaves_the_case_paused_for_the_owner() -> None:
    result = restored([entry("reminder-failed", 4, step=1, message_id=MID.format(1),
                             smtp_reply="550 no such user")])
    assert result.case.state is CaseState.PAUSED
    assert result.case.paused_until is None
    assert "550" in result.case.reason


def test_send_resolved_after_a_crash_restores_the_step_from_its_message_id() -> None:
    result = restored([entry("send-resolved", 5, message_id=MID.format(2), status="unknown")])
    assert [(s.index, s.name, s.outcome) for s in result.case.steps] == [
        (2, "reminder-1", "unknown")]


def test_a_step_journalled_twice_is_recorded_once() -> None:
    result = restored([sent(1, 4), entry("send-resolved", 5, message_id=MID.format(1),
                                         status="sent")])
    assert len(result.case.steps) == 1


def test_found_in_sent_is_a_sent_step() -> None:
    result = restored([entry("reminder-found-in-sent", 4, step=1, message_id=MID.format(1))])
    assert [(s.index, s.outcome, s.name) for s in result.case.steps] == [(1, "sent", "courtesy")]


def test_draft_sent_by_owner_turns_the_drafted_step_into_a_sent_one() -> None:
    result = restored([sent(1, 4, "drafted"),
                       entry("draft-sent-by-owner", 6, message_id=MID.format(1))])
    assert result.case.steps[0].outcome == "sent"
    assert result.case.last_contact_at == at(6)


def test_shell_paid_is_restored_from_what_the_entry_recorded() -> None:
    result = restored([sent(1, 4), entry("owner-paid", 10, via="shell", state="paid",
                                         paid="1200.00", paused_until=None)])
    assert result.case.state is CaseState.PAID
    assert result.case.paid == Decimal("1200.00")
    assert result.decisions_applied == 1


def test_shell_partial_payment_keeps_chasing_the_balance() -> None:
    result = restored([entry("owner-paid", 10, via="shell", state="chasing", paid="200",
                             paused_until=None)])
    assert result.case.state is CaseState.CHASING
    assert result.case.balance == Decimal("1000.00")


def test_shell_pause_until_a_date_then_a_step_after_it_ended() -> None:
    """A pause that ended: the step sent after it means chasing went on."""
    result = restored([entry("owner-pause", 5, via="shell", state="paused",
                             paused_until=at(10).isoformat()), sent(2, 12)])
    assert result.case.state is CaseState.CHASING
    assert result.case.paused_until is None


def test_shell_pause_still_running_stays() -> None:
    result = restored([sent(1, 4), entry("owner-pause", 5, via="shell", state="paused",
                                         paused_until=at(30).isoformat())])
    assert result.case.state is CaseState.PAUSED
    assert result.case.paused_until == at(30)


def test_pause_then_resume_by_shell() -> None:
    result = restored([entry("owner-pause", 5, via="shell", state="paused", paused_until=None),
                       entry("owner-resume", 8, via="shell", state="chasing",
                             paused_until=None)])
    assert result.case.state is CaseState.CHASING


def test_shell_stop_and_facts() -> None:
    stopped = restored([entry("owner-stop", 5, via="shell", state="stopped")])
    assert stopped.case.state is CaseState.STOPPED
    facts = restored([entry("owner-facts", 5, via="shell", state="chasing", amount="99.50",
                            due="2026-06-01", paused_until=None)],
                     seen(amount=None, due_date=None, state=CaseState.NEEDS_FACTS))
    assert (facts.case.amount, facts.case.due_date, facts.case.state) == (
        Decimal("99.50"), date(2026, 6, 1), CaseState.CHASING)


def test_mailed_command_is_replayed_from_its_line_at_its_time() -> None:
    calls: list[tuple[str, str, datetime]] = []

    def apply(case: Case, verb: str, line: str, when: datetime) -> Case:
        calls.append((verb, line, when))
        return owner.pause(case, when, when + timedelta(days=14), "paused")

    result = restored([entry("owner-pause", 5, via="dkim", line="pause 14d", state="paused")],
                      apply=apply)
    assert calls == [("pause", "pause 14d", at(5))]
    assert result.case.paused_until == at(19)


def test_folder_drop_is_replayed_by_its_verb() -> None:
    calls: list[tuple[str, str]] = []

    def apply(case: Case, verb: str, line: str, when: datetime) -> Case:
        calls.append((verb, line))
        return owner.stop(case, when)

    result = restored([entry("owner-stop", 5, via="folder", folder="Relance.Stop")],
                      apply=apply)
    assert calls == [("stop", "")]
    assert result.case.state is CaseState.STOPPED


def test_refused_replay_keeps_the_journalled_state_and_says_so() -> None:
    def refuse(case: Case, verb: str, line: str, when: datetime) -> Case:
        raise CommandRefused("no")

    result = restored([entry("owner-stop", 5, via="dkim", line="stop", state="stopped")],
                      apply=refuse)
    assert result.case.state is CaseState.STOPPED
    assert result.problems and "owner-stop" in result.problems[0]


def test_plan_by_mail_is_replayed() -> None:
    def apply(case: Case, verb: str, line: str, when: datetime) -> Case:
        assert (verb, line) == ("plan", "plan 3x monthly")
        return Case(**{**case.__dict__, "instalments": ((date(2026, 6, 1), Decimal(400)),)})

    result = restored([entry("owner-plan", 5, via="dkim", line="plan 3x monthly",
                             state="chasing")], apply=apply)
    assert result.case.instalments == ((date(2026, 6, 1), Decimal(400)),)


def test_payment_matched_adds_its_amount() -> None:
    result = restored([entry("payment-matched", 9, amount="200.00", how="number",
                             state="chasing"),
                       entry("payment-matched", 10, amount="1000.00", state="paid")])
    assert result.case.paid == Decimal("1200.00")
    assert result.case.state is CaseState.PAID


def test_client_reply_pauses_until_what_the_reread_computed() -> None:
    result = restored([sent(1, 4), entry("client-replied", 6, state="paused",
                                         message_id="<r@c>")],
                      reply_until=at(20))
    assert result.case.state is CaseState.PAUSED
    assert result.case.paused_until == at(20)


def test_client_reply_without_the_reread_pauses_until_resumed() -> None:
    result = restored([entry("client-replied", 6, state="paused", message_id="<r@c>")])
    assert (result.case.state, result.case.paused_until) == (CaseState.PAUSED, None)


def test_auto_reply_waits_only_a_chased_case() -> None:
    result = restored([entry("auto-reply", 6, waits_until=at(15).isoformat())])
    assert (result.case.state, result.case.paused_until) == (CaseState.PAUSED, at(15))
    stopped = restored([entry("owner-stop", 5, via="shell", state="stopped"),
                        entry("auto-reply", 6, waits_until=at(15).isoformat())])
    assert stopped.case.state is CaseState.STOPPED


def test_bounce_replaced_and_credit_note_leave_their_state() -> None:
    assert restored([entry("bounce", 6, failed=["a@b"], state="bad_address")]
                    ).case.state is CaseState.BAD_ADDRESS
    replaced = restored([entry("invoice-replaced", 6, by="F-2", steps_sent=0)]).case
    assert replaced.state is CaseState.STOPPED and "F-2" in replaced.reason
    assert restored([entry("credit-note-applied", 6, credit_note="A-1", state="stopped")]
                    ).case.state is CaseState.STOPPED


def test_opened_state_comes_from_the_journal_not_from_todays_age_rule() -> None:
    """Re-read long after, the invoice looks too old to adopt; it was being chased."""
    result = restored([entry("invoice-found", 1, state="chasing")],
                      seen(state=CaseState.DONE, reason="older than 90 days"))
    assert result.case.state is CaseState.CHASING
    assert result.case.opened_at == at(1)


def test_reread_decisions_are_reset_and_not_counted_twice() -> None:
    """A payment the re-read applied again is applied once, from the journal."""
    result = restored([entry("invoice-found", 1, state="chasing"),
                       entry("payment-matched", 9, amount="200.00", state="chasing")],
                      seen(paid=Decimal("200.00")))
    assert result.case.paid == Decimal("200.00")


def test_entries_of_no_case_or_other_events_are_passed_over() -> None:
    folded = rebuild.fold_journal([entry("owner-notified", 3, kind="digest"),
                                   entry("would-send", 3, step=1),
                                   entry("message-skipped", 3, number=None),
                                   entry("state-rebuilt", 3, number=None)])
    assert folded.histories == {}


def test_unreadable_entry_is_skipped_with_its_line() -> None:
    bad = entry("reminder-sent", 4, step=1, message_id=MID.format(1))
    bad["at"] = "yesterday"
    numbered = rebuild.number_lines([entry("invoice-found", 1), bad], skipped_lines=[2])
    folded = rebuild.fold_journal(numbered)
    assert folded.problems == [
        "journal.jsonl:3: reminder-sent of F-1: Invalid isoformat string: 'yesterday'; "
        "skipped"]


def test_number_lines_counts_the_lines_a_read_skipped() -> None:
    numbered = rebuild.number_lines([{"event": "a"}, {"event": "b"}, {"event": "c"}], [1, 3])
    assert [e["_line"] for e in numbered] == [2, 4, 5]


@pytest.mark.parametrize(("message_id", "index"), [
    (MID.format(3), 3), ("<relance.0123456789abcdef.12@x>", 12), ("<other@x>", None), ("", None),
])
def test_step_of_message_id(message_id: str, index: int | None) -> None:
    assert rebuild.step_of_message_id(message_id) == index


def test_news_is_what_the_reread_saw_and_the_journal_did_not() -> None:
    journal = [entry("client-replied", 6, message_id="<r1@c>", state="paused"),
               entry("payment-matched", 9, amount="200.00", payer="ACME", state="chasing")]
    reread = [entry("client-replied", 30, message_id="<r1@c>", state="paused"),
              entry("client-replied", 30, "F-2", message_id="<r1@c>", state="paused"),
              entry("client-replied", 30, message_id="<r2@c>", state="paused"),
              entry("payment-matched", 30, amount="200.00", payer="ACME", state="chasing"),
              entry("invoice-found", 30, state="chasing"),
              entry("owner-paid", 30, via="dkim", line="paid", state="paid")]
    news = rebuild.news_entries(journal, reread)
    assert [(e["event"], e.get("message_id") or e.get("line")) for e in news] == [
        ("client-replied", "<r2@c>"), ("owner-paid", "paid")]


def test_send_records_one_per_message_id_grouped_reminders_share_it() -> None:
    one = restored([sent(1, 4), sent(2, 12, "unknown")]).case
    other = Case(**{**one.__dict__, "number": "F-2", "steps": one.steps[:1]})
    drafted = Case(**{**one.__dict__, "number": "F-3", "steps": (
        restored([sent(3, 20, "drafted")]).case.steps)})
    records = rebuild.sends_to_record([one, other, drafted])
    assert [(r.message_id, r.numbers, r.status) for r in records] == [
        (MID.format(1), "F-1 F-2", "sent"), (MID.format(2), "F-1", "unknown")]
    assert records[0].label == "1:s1 1:s1"


def test_not_placed_names_what_the_mailbox_no_longer_shows() -> None:
    folded = rebuild.fold_journal([entry("invoice-found", 1, "F-1"),
                                   entry("invoice-found", 1, "F-9")])
    assert rebuild.not_placed(folded.histories, ["F-1"]) == ["F-9"]
