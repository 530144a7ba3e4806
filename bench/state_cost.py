"""4. State cost: one state transition, and a full pass, at 1k and 10k open cases.

The state is built directly (N open cases as the first pass would store them, with
their thread ids and some steps already taken) so the figure is the state's own cost, not
the mailbox's. Measured, each `runs` times, median:
- transition: one transaction that pauses one case (read state.json under the lock,
  decode, change one case, write it back atomically with fsync), as `relance pause` or a
  client's reply does;
- read: a `reading()` snapshot and `cases()` (what status, next_wake and act start with);
- full pass: `run_pass` over an unchanged (empty) mailbox plus `next_wake`: every case
  looked at, nothing due.

    python -m bench.state_cost --cases 1000 10000 --runs 7
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import (
    NOW,
    WORK_DIR,
    median,
    new_daemon,
    quiet_logs,
    save_results,
    write_office,
)
from bench.mailbox_gen import CLIENTS, FIRM_DOMAIN, client_address, client_name


def synthetic_cases(count: int, seed: int = 7) -> list[Any]:
    """`count` open cases as a first pass leaves them: most chasing, some paused, a
    third with a courtesy mail already sent; nothing due at bench.NOW."""
    from relance.model import Case, CaseState, StepRecord

    rng = random.Random(seed)
    cases = []
    for n in range(1, count + 1):
        client = rng.randrange(CLIENTS)
        issued = NOW - timedelta(days=rng.randint(1, 90))
        due = NOW.date() + timedelta(days=rng.randint(10, 60))
        root = f"<inv-{n:06d}@{FIRM_DOMAIN}>"
        steps: tuple[StepRecord, ...] = ()
        thread = [root]
        if rng.random() < 0.3:
            sent = f"<relance-{n:06d}-1@{FIRM_DOMAIN}>"
            steps = (StepRecord(1, "courtesy", NOW - timedelta(days=2), sent, "sent"),)
            thread.append(sent)
        state, reason, until = CaseState.CHASING, "", None
        if rng.random() < 0.1:
            thread.append(f"<reply-{n:06d}@client{client:03d}.example>")
            state, reason = CaseState.PAUSED, f"client replied {NOW:%Y-%m-%d}: bien reçu"
            until = NOW + timedelta(days=7)
        cases.append(Case(
            number=f"F-{issued.year}-{n:06d}", client_addrs=(client_address(client),),
            subject=f"Facture n° F-{issued.year}-{n:06d}", root_message_id=root,
            client_name=client_name(client),
            amount=Decimal(rng.randint(8_000, 950_000)) / 100, issue_date=issued.date(),
            due_date=due, state=state, thread_ids=tuple(thread), steps=steps,
            last_contact_at=issued, paused_until=until, reason=reason,
            invoice_folder="Sent", invoice_uid=n, opened_at=issued,
        ))
    return cases


def closed_cases(count: int, seed: int = 11) -> list[Any]:
    """`count` closed cases as years of a firm's life leave them: paid after four sent
    steps, their reminders in their threads (numbers and Message-IDs apart from
    `synthetic_cases`'s)."""
    from relance.model import CaseState, StepRecord

    closed = []
    for case in synthetic_cases(count, seed=seed):
        steps = tuple(
            StepRecord(i, f"step-{i}", NOW - timedelta(days=400 - 10 * i),
                       f"<relance-{case.number}-{i}@{FIRM_DOMAIN}>", "sent")
            for i in range(1, 5))
        closed.append(dataclasses.replace(
            case, number=f"{case.number}-P", root_message_id=f"<paid-{case.invoice_uid:06d}"
            f"@{FIRM_DOMAIN}>", state=CaseState.PAID, paid=case.amount, steps=steps,
            issue_date=(NOW - timedelta(days=420)).date(),
            due_date=(NOW - timedelta(days=390)).date(),
            opened_at=NOW - timedelta(days=420), last_contact_at=steps[-1].at,
            thread_ids=(*case.thread_ids, *(step.message_id for step in steps)),
            paused_until=None, reason="paid (owner)"))
    return closed


def seed_state(daemon: Any, cases: list[Any]) -> None:
    with daemon.store.transaction() as tx:
        for case in cases:
            tx.put_case(case)


def measure_cases(dovecot: Any, count: int, runs: int) -> dict[str, Any]:
    from relance.mailbox.imap import Mailbox
    from relance.model import CaseState

    quiet_logs()
    user = dovecot.new_user("state", "bench")
    home = Path(tempfile.mkdtemp(prefix=f"state-{count}-", dir=_homes()))
    config = write_office(home, host=dovecot.host, port=dovecot.imap_port,
                          username=user.address, password=user.password)
    daemon = new_daemon(config)
    cases = synthetic_cases(count)
    seed_s = _time(lambda: seed_state(daemon, cases))
    with Mailbox(daemon.config.imap) as mailbox:
        daemon.run_pass(mailbox, NOW)  # first pass: folders created, cursors written
        transitions, reads, decodes, passes = [], [], [], []
        for run in range(runs):
            target = cases[(run * 7919) % count]

            def pause(number: str = target.number, run: int = run) -> None:
                with daemon.store.transaction() as tx:
                    case = tx.get_case(number)
                    assert case is not None
                    tx.put_case(dataclasses.replace(
                        case, state=CaseState.PAUSED, reason=f"bench pause {run}",
                        paused_until=NOW + timedelta(days=14)))

            transitions.append(_time(pause))

            def read(number: str = target.number) -> None:
                with daemon.store.reading() as view:
                    view.get_case(number)

            reads.append(_time(read))

            def decode_all() -> None:
                with daemon.store.reading() as view:
                    view.cases()

            decodes.append(_time(decode_all))

            def full_pass() -> None:
                daemon.run_pass(mailbox, NOW)
                daemon.next_wake(NOW)

            passes.append(_time(full_pass))
    size = daemon.store.path.stat().st_size
    shutil.rmtree(home, ignore_errors=True)
    return {
        "cases": count, "runs": runs, "seed_seconds": seed_s, "state_bytes": size,
        "transition_s": transitions, "transition_median_s": median(transitions),
        "read_one_median_s": median(reads), "read_all_median_s": median(decodes),
        "pass_s": passes, "pass_median_s": median(passes),
    }


def _homes() -> Path:
    path = WORK_DIR / "homes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _time(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", type=int, default=[1_000, 10_000])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from tests.mailservers import Dovecot

    results = []
    with Dovecot() as dovecot:
        for count in args.cases:
            r = measure_cases(dovecot, count, args.runs)
            results.append(r)
            print(f"{count} cases: transition {1000 * r['transition_median_s']:.1f} ms, "
                  f"read one {1000 * r['read_one_median_s']:.1f} ms, "
                  f"full pass {1000 * r['pass_median_s']:.0f} ms, state "
                  f"{r['state_bytes'] / 1e6:.1f} MB", file=sys.stderr)
    save_results("state_cost", "python -m bench.state_cost " + " ".join(sys.argv[1:]),
                 {"counts": results})


if __name__ == "__main__":
    main()
