"""The plan a daemon keeps across a restart (`store.plan`), and the span it holds for.

A Daemon here is built as `relance run` builds it, from a relance.toml and the default
rules, with no mailbox: planning and starting read only the state directory.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relance import app, defaults
from relance.config import load_config
from relance.core.schedule import BusinessCalendar, plan_each, plan_span
from relance.model import Case, CaseState
from relance.store.journal import Journal
from relance.store.plan import PLAN_FILE
from relance.store.state import StateStore

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 3, 2, 7, 0, tzinfo=PARIS)  # a Monday, before the send window


def paris(d: int, hh: int = 9, mm: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, d, hh, mm, tzinfo=PARIS)


def make_case(number: str, due: date = date(2026, 3, 10), **fields: Any) -> Case:
    return Case(number=number, client_addrs=(f"compta@{number.lower()}.example",),
                subject=f"Facture {number}", root_message_id=f"<{number}@atelier.example>",
                amount=Decimal("120.00"), due_date=due, **fields)


def new_daemon(home: Path) -> app.Daemon:
    config_path = home / "relance.toml"
    if not config_path.exists():
        config_path.write_text("""\
mode = "dry-run"
timezone = "Europe/Paris"
state_dir = "state"

[imap]
host = "127.0.0.1"
port = 1
username = "firm"
password = "x"

[smtp]
host = "127.0.0.1"
port = 1
username = "firm"
password = "x"

[firm]
name = "Atelier Dupont"
sender = "Atelier Dupont <compta@atelier.example>"
addresses = ["compta@atelier.example"]
owners = ["patron@atelier.example"]
""", encoding="utf-8")
        for name in ("rules", "templates"):
            defaults.copy_defaults(name, home / name)
    config = load_config(config_path)
    runtime, problems = app.load_runtime(config)
    assert runtime is not None, problems
    return app.Daemon(runtime, StateStore(config.state_dir), Journal(config.state_dir))


def seed(daemon: app.Daemon, cases: list[Case]) -> None:
    with daemon.store.transaction() as tx:
        for case in cases:
            tx.put_case(case)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    daemon = new_daemon(tmp_path)
    seed(daemon, [make_case("F-1"), make_case("F-2", due=date(2026, 4, 20)),
                  make_case("F-3", state=CaseState.PAUSED, paused_until=paris(2, 12)),
                  make_case("F-4", state=CaseState.PAID)])
    return tmp_path


def spy_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from relance.store import state

    decoded: list[str] = []
    real = state.case_from_doc

    def counting(doc: Any) -> Case:
        decoded.append(doc["number"])
        return real(doc)

    monkeypatch.setattr(state, "case_from_doc", counting)
    return decoded


# --- the span: pure -----------------------------------------------------------------------


def test_a_plan_spans_its_local_day_cut_at_the_pause_ends_around_it() -> None:
    cal_tz = BusinessCalendar(tz=PARIS, weekdays=frozenset(range(5)),
                              start=datetime.min.time(), end=datetime.max.time())
    cases = [make_case("A"),
             make_case("B", state=CaseState.PAUSED, paused_until=paris(2, 6)),
             make_case("C", state=CaseState.PAUSED, paused_until=paris(2, 11)),
             make_case("D", state=CaseState.PAUSED, paused_until=paris(4, 11))]
    assert plan_span(cases, cal_tz, NOW) == (paris(2, 6), paris(2, 11))
    assert plan_span(cases[:1], cal_tz, NOW) == (paris(2, 0), paris(3, 0))
    # A pause ending exactly now has ended (the case is chased now): the span starts there.
    assert plan_span([cases[0], replace(cases[2], paused_until=NOW)], cal_tz, NOW)[0] == NOW


def test_the_plans_are_the_same_anywhere_in_the_span(home: Path) -> None:
    daemon = new_daemon(home)
    rt = daemon.rt
    with daemon.store.reading() as view:
        cases = list(view.cases_in({CaseState.CHASING, CaseState.PAUSED}).values())
    start, end = plan_span(cases, rt.calendar, NOW)
    made = plan_each(cases, rt.rules, rt.calendar, NOW)
    for at in (start, NOW + timedelta(hours=3), end - timedelta(microseconds=1)):
        assert plan_each(cases, rt.rules, rt.calendar, at) == made
    assert plan_each(cases, rt.rules, rt.calendar, end) != made  # F-3's pause ends there


# --- the daemon: reused only when it still holds -------------------------------------------


def test_a_restart_reuses_the_saved_plan_and_decodes_no_case(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = new_daemon(home)
    first.warm_start(NOW)
    planned = first.planned(NOW)
    assert [number for number, _ in planned] == ["F-1", "F-2"]
    first.save_plan()
    assert (home / "state" / PLAN_FILE).exists()

    decoded = spy_decodes(monkeypatch)
    restarted = new_daemon(home)
    restarted.warm_start(NOW + timedelta(minutes=30))
    reused = restarted.planned(NOW + timedelta(minutes=30))
    assert reused == planned
    assert {p.at.tzinfo for _, p in reused} == {PARIS}, "in the firm's zone, as planned"
    assert decoded == [], "neither the start nor the plan decoded a case"
    gc.unfreeze()


def test_a_commit_since_the_plan_plans_again(home: Path) -> None:
    first = new_daemon(home)
    first.planned(NOW)
    first.save_plan()
    other = new_daemon(home)  # `relance stop F-1` from the command line, say
    seed(other, [make_case("F-1", state=CaseState.STOPPED)])
    restarted = new_daemon(home)
    assert [number for number, _ in restarted.planned(NOW)] == ["F-2"]


def test_another_day_or_an_ended_pause_plans_again(home: Path) -> None:
    first = new_daemon(home)
    first.planned(NOW)
    first.save_plan()
    at_noon = new_daemon(home).planned(paris(2, 12))  # F-3's pause has ended
    assert [number for number, _ in at_noon] == ["F-1", "F-2", "F-3"]
    tomorrow = new_daemon(home)
    assert [number for number, _ in tomorrow.planned(paris(3, 7))] == ["F-1", "F-2", "F-3"]


def test_other_rules_plan_again(home: Path) -> None:
    first = new_daemon(home)
    before = first.planned(NOW)
    first.save_plan()
    calendar = home / "rules" / "calendar.yaml"
    calendar.write_text(calendar.read_text().replace("offset: -5d", "offset: -6d", 1),
                        encoding="utf-8")
    after = new_daemon(home).planned(NOW)
    assert [p.at for _, p in after] == [p.at - timedelta(days=1) for _, p in before]


def test_a_damaged_plan_file_is_logged_and_planned_again(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = new_daemon(home)
    planned = first.planned(NOW)
    first.save_plan()
    path = home / "state" / PLAN_FILE
    path.write_text(path.read_text()[:40], encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="relance"):
        assert new_daemon(home).planned(NOW) == planned
    assert "event=plan-unreadable" in caplog.text and "action=plan-again" in caplog.text
    path.write_text(json.dumps({"format": 99}), encoding="utf-8")
    assert new_daemon(home).planned(NOW) == planned


def test_a_plan_that_cannot_be_saved_is_logged(
    home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = new_daemon(home)
    daemon.planned(NOW)

    def full(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app, "write_plan", full)
    with caplog.at_level(logging.WARNING, logger="relance"):
        daemon.save_plan()
    assert "event=plan-not-saved" in caplog.text and "No space left" in caplog.text


def test_a_running_daemon_plans_once_until_something_changes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = new_daemon(home)
    calls: list[int] = []
    real = app.plan_each

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(app, "plan_each", counting)
    daemon.planned(NOW)
    daemon.planned(NOW + timedelta(minutes=10))  # an IDLE timeout, nothing new
    assert len(calls) == 1
    seed(daemon, [make_case("F-5")])
    assert [n for n, _ in daemon.planned(NOW + timedelta(minutes=20))] == ["F-1", "F-2", "F-5"]
    assert len(calls) == 2


@pytest.mark.parametrize(("at", "decodes"), [(NOW, False), (paris(2, 9), True)])
def test_run_once_decodes_the_open_cases_at_start_only_inside_the_send_window(
    home: Path, monkeypatch: pytest.MonkeyPatch, at: datetime, decodes: bool
) -> None:
    decoded = spy_decodes(monkeypatch)
    new_daemon(home).warm_start(at, will_plan=False)  # as `run_once` starts: no plan
    assert sorted(decoded) == (["F-1", "F-2", "F-3"] if decodes else [])
    gc.unfreeze()


def test_no_attribute_of_a_daemon_hides_a_method_of_its_parts(home: Path) -> None:
    """The Daemon is one object over several mixins (Sync, Intake, Listening, Acting):
    an attribute named like a method of one of them silently replaces that method (a
    `_plan` attribute once broke the instalment command)."""
    daemon = new_daemon(home)
    daemon.warm_start(NOW)
    daemon.planned(NOW)
    hidden = {name for name in vars(daemon) if callable(getattr(type(daemon), name, None))}
    assert hidden == set()
    gc.unfreeze()


def test_nothing_is_due_only_when_a_plan_that_holds_says_so(home: Path) -> None:
    """`act` skips decoding the cases when `nothing_due`: a restart inside the send window
    with the plan saved at 07:00, F-1's courtesy planned on the 5th."""
    first = new_daemon(home)
    first.planned(NOW)
    first.save_plan()
    restarted = new_daemon(home)
    with restarted.store.reading() as view:
        assert restarted.nothing_due(view, paris(2, 9))
        assert not restarted.nothing_due(view, paris(2, 12)), "F-3's pause ended: no plan"
    on_the_5th = new_daemon(home)
    on_the_5th.planned(paris(5, 8))
    with on_the_5th.store.reading() as view:
        assert on_the_5th.nothing_due(view, paris(5, 8, 29))
        assert not on_the_5th.nothing_due(view, paris(5, 8, 30)), "F-1's courtesy is due"
    seed(on_the_5th, [make_case("F-9")])
    with on_the_5th.store.reading() as view:
        assert not on_the_5th.nothing_due(view, paris(5, 8, 29)), "a commit: no plan holds"


def test_a_restart_inside_the_window_with_nothing_due_decodes_no_case(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = new_daemon(home)
    first.planned(NOW)
    first.save_plan()
    decoded = spy_decodes(monkeypatch)
    restarted = new_daemon(home)
    restarted.warm_start(paris(2, 9))
    with restarted.store.reading() as view:
        assert restarted.nothing_due(view, paris(2, 9))
    assert restarted.planned(paris(2, 9)) == first.planned(NOW)
    assert decoded == []
    gc.unfreeze()


def test_the_saved_plan_keeps_each_distinct_step_once_and_reads_back_equal(
    home: Path
) -> None:
    daemon = new_daemon(home)
    seed(daemon, [make_case(f"S-{i}", due=date(2026, 4, 20)) for i in range(50)])
    planned = daemon.planned(NOW)
    daemon.save_plan()
    doc = json.loads((home / "state" / PLAN_FILE).read_text(encoding="utf-8"))
    assert len(doc["planned"]) == 52 and len(doc["steps"]) == 2  # F-1's and the rest's
    reread = new_daemon(home).planned(NOW)
    assert reread == planned
    assert len({id(step) for _, step in reread}) == 2, "one object per distinct step"
