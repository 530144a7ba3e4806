"""The daemon's systemd face without a mail server: the STATUS line, reloads, waiting."""

from __future__ import annotations

import gc
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relance.core.schedule import BusinessCalendar, plan_next
from relance.model import Case, CaseState, Mode
from relance.rules.load import load_rules
from relance.rules.model import Rules
from relance.sdnotify import Notifier
from relance.service import Service, status_line
from relance.store.state import StateStore

PARIS = ZoneInfo("Europe/Paris")
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
NOW = datetime(2026, 3, 2, 14, 0, tzinfo=PARIS)  # a Monday afternoon


@pytest.fixture(scope="module")
def rules() -> Rules:
    loaded, errors = load_rules(RULES_DIR)
    assert loaded is not None, errors
    return loaded


@pytest.fixture(scope="module")
def calendar(rules: Rules) -> BusinessCalendar:
    return BusinessCalendar.from_rules(rules, PARIS)


def case(number: str, due: date | None, state: CaseState = CaseState.CHASING) -> Case:
    return Case(
        number=number, client_addrs=("compta@client.fr",), subject=f"Facture {number}",
        root_message_id=f"<{number}@atelier.fr>", amount=Decimal("1250.00"), currency="EUR",
        issue_date=date(2026, 1, 15), due_date=due, state=state, opened_at=NOW,
    )


def test_no_cases(rules: Rules, calendar: BusinessCalendar) -> None:
    assert status_line([], rules, calendar, NOW) == "0 open cases"


def test_next_send_this_week_by_weekday(rules: Rules, calendar: BusinessCalendar) -> None:
    # Due Friday: the courtesy notice (due - 5 days) is past; reminder-1 at due + 5 days
    # is more than a week out; a case due Sunday gets its courtesy notice Tuesday 08:30.
    cases = [case("F-2", date(2026, 3, 13)), case("F-1", date(2026, 3, 8))]
    assert status_line(cases, rules, calendar, NOW) == (
        "2 open cases, next send Tue 08:30 (F-1 courtesy)")


def test_next_send_further_out_gives_the_date(rules: Rules, calendar: BusinessCalendar) -> None:
    # due - 5 days is Saturday 25 April: the courtesy notice waits for Monday.
    line = status_line([case("F-1", date(2026, 4, 30))], rules, calendar, NOW)
    assert line == "1 open case, next send Mon 2026-04-27 08:30 (F-1 courtesy)"


def test_cases_that_need_a_human_are_counted(rules: Rules, calendar: BusinessCalendar) -> None:
    cases = [
        case("F-1", date(2026, 3, 8)),
        case("F-2", None, CaseState.NEEDS_FACTS),
        replace(case("F-3", date(2026, 2, 1), CaseState.PAUSED), paused_until=None),
        case("F-4", date(2026, 2, 1), CaseState.PAID),
    ]
    assert status_line(cases, rules, calendar, NOW, Mode.DRY_RUN) == (
        "dry-run: 3 open cases (1 paused, 1 need facts), next send Tue 08:30 (F-1 courtesy)")


def test_the_plans_a_daemon_made_give_the_same_line(
    rules: Rules, calendar: BusinessCalendar
) -> None:
    cases = [case("F-2", date(2026, 3, 13)), case("F-1", date(2026, 3, 8)),
             case("F-3", None, CaseState.NEEDS_FACTS)]
    planned = [(c.number, p) for c in cases
               if (p := plan_next(c, rules, calendar, NOW)) is not None]
    assert [number for number, _ in planned] == ["F-2", "F-1"]
    assert status_line(cases, rules, calendar, NOW, planned=planned) == status_line(
        cases, rules, calendar, NOW) == (
        "3 open cases (1 need facts), next send Tue 08:30 (F-1 courtesy)")
    # The line is read from the plans it is given, not planned again.
    assert status_line(cases, rules, calendar, NOW, planned=[]) == (
        "3 open cases (1 need facts), nothing planned")


def test_open_cases_with_nothing_planned(rules: Rules, calendar: BusinessCalendar) -> None:
    line = status_line([case("F-2", None, CaseState.NEEDS_FACTS)], rules, calendar, NOW)
    assert line == "1 open case (1 need facts), nothing planned"


# -- Service without a mailbox -----------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.name = f"@relance-svc-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        found = []
        try:
            while True:
                found.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return found


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.sock.close()


def runtime(rules: Rules, calendar: BusinessCalendar, label: str) -> Any:
    config = SimpleNamespace(tz=PARIS, mode=Mode.SEND, rules_dir=Path("/nonexistent/rules"),
                             templates_dir=Path("/nonexistent/templates"))
    templates = SimpleNamespace(names=lambda: ["courtesy"])
    return SimpleNamespace(rules=rules, calendar=calendar, config=config, templates=templates,
                           label=label)


def service(tmp_path: Path, listener: Listener, rt: Any, reload: Any,
            sleep: Any = lambda s: None) -> Service:
    daemon = SimpleNamespace(rt=rt, store=StateStore(tmp_path / "state"), config=rt.config,
                             on_event=None, planned=lambda now: [], save_plan=lambda: None)
    clock = SimpleNamespace(now=lambda: NOW)
    return Service(daemon, clock, reload, sleep, Notifier(listener.name))  # type: ignore[arg-type]


def test_reload_takes_the_new_rules(tmp_path: Path, listener: Listener, rules: Rules,
                                    calendar: BusinessCalendar,
                                    caplog: pytest.LogCaptureFixture) -> None:
    old, new = runtime(rules, calendar, "old"), runtime(rules, calendar, "new")
    svc = service(tmp_path, listener, old, lambda: new)
    svc.on_hup(1, None)
    gc.freeze()  # as the start-up did, with the old rules among the frozen objects
    with caplog.at_level(logging.INFO, logger="relance"):
        svc.handle_reload()
    assert svc.daemon.rt.label == "new"
    assert gc.get_freeze_count() == 0, "the replaced Runtime goes back to the collector"
    assert "event=reloaded steps=5 templates=1" in caplog.text
    sent = listener.messages()
    assert sent[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert sent[1:] == ["READY=1", "STATUS=0 open cases"]


@pytest.mark.parametrize("failure", ["returns None", "raises"])
def test_failed_reload_keeps_the_old_rules(tmp_path: Path, listener: Listener, rules: Rules,
                                           calendar: BusinessCalendar, failure: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        if failure == "raises":
            raise OSError("rules/ vanished")

    old = runtime(rules, calendar, "old")
    svc = service(tmp_path, listener, old, broken)
    svc.on_hup(1, None)
    with caplog.at_level(logging.INFO, logger="relance"):
        svc.handle_reload()
    assert svc.daemon.rt is old
    assert "event=reload-failed" in caplog.text
    assert ("OSError: rules/ vanished" in caplog.text) == (failure == "raises")
    assert "READY=1" in listener.messages()


def test_reload_only_when_asked(tmp_path: Path, listener: Listener, rules: Rules,
                                calendar: BusinessCalendar) -> None:
    svc = service(tmp_path, listener, runtime(rules, calendar, "old"), lambda: 1 / 0)
    svc.handle_reload()
    assert listener.messages() == []


def test_sigterm_ends_the_wait_and_says_stopping_once(
    tmp_path: Path, listener: Listener, rules: Rules, calendar: BusinessCalendar
) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            svc.on_term(15, None)
            svc.on_term(15, None)

    svc = service(tmp_path, listener, runtime(rules, calendar, "old"), lambda: None, sleep)
    svc.wait(300.0)
    assert slept == [0.5, 0.5, 0.5]
    assert listener.messages() == ["STOPPING=1"]
