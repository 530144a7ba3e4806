"""2. Restart on an unchanged mailbox: how long until relance is ready again.

After a first pass over the mailbox (100k messages, 10k open cases by default), relance
is started again on the same state and the same, unchanged mailbox, `runs` times.

The state is the one a first pass leaves: by default built directly (bench.state_cost's
10k open cases, and each folder's cursor at the mailbox's last UID, then one untimed
pass, which creates relance's folders), because a real first pass over 100k messages
takes one to two minutes; `--real-first-pass` runs that pass instead. The figures:
the second `run_pass` itself (connect, SELECT each folder, see nothing is new, decide
nothing is due); "ready", that pass and what `relance run` does before it idles (the
next wake-up and the status line); both at bench.NOW (07:00, before the send window) and
at 09:00 (inside it, where every open case is weighed); and the whole process, from exec
to the pass done (imports, config, rules and templates included), as `relance run
--once` pays it.

    python -m bench.restart --size 100k --runs 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench import NOW, REPO_ROOT, WORK_DIR, median, parse_sizes, save_results, size_label
from bench.sync import measure as first_pass
from bench.sync import public, run_relance_pass

IN_WINDOW = NOW + timedelta(hours=2)
"""A restart inside the send window (09:00 on a Monday), where `act` decides over every
open case; bench.NOW (07:00) is before it, where nothing can be due."""


def forget_saved_plan(config: Path) -> None:
    """Remove the plan a clean stop saved (relance.store.plan.PLAN_FILE, named here as a
    string: bench/before_after.sh runs this bench over relance code that has none), so
    the next start decodes and plans every open case, as after a crash, on another day,
    or after a command changed the state."""
    (config.parent / "state" / "plan.json").unlink(missing_ok=True)


def measure_restart(config: Path, runs: int, saved_plan: bool = True) -> dict[str, Any]:
    """`runs` second passes on the state `config` names; the mailbox is left as it is.
    Each run is timed at bench.NOW, before the send window, and again inside it. Each
    finds the plan the run before it saved when it stopped, as a restarted daemon does;
    without `saved_plan` it is removed first (`forget_saved_plan`)."""

    def start() -> None:
        if not saved_plan:
            forget_saved_plan(config)

    passes: list[float] = []
    ready: list[float] = []
    in_window: list[float] = []
    in_window_ready: list[float] = []
    processes: list[float] = []
    connects: list[float] = []
    peaks: list[float] = []
    # Untimed: the Monday digest (due at 08:00) goes out in the first pass in the window,
    # once; the timed runs after it are alike.
    run_relance_pass(config, now=IN_WINDOW.isoformat())
    for _ in range(runs):
        start()
        inside = run_relance_pass(config, now=IN_WINDOW.isoformat())
        in_window.append(inside["seconds"])
        in_window_ready.append(inside["ready_seconds"])
        start()
        result = run_relance_pass(config)
        passes.append(result["seconds"])
        ready.append(result["ready_seconds"])
        peaks.append(result["peak_rss_mb"])
        connects.append(result["connect_seconds"])
        start()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "relance", "run", "--config", str(config), "--once",
             "--now", NOW.isoformat()],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=600)
        processes.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"relance run --once failed:\n{done.stderr[-2000:]}")
    return {
        "runs": runs,
        "pass_seconds": passes,
        "pass_median_s": median(passes),
        "ready_seconds": ready,
        "ready_median_s": median(ready),
        "in_window_seconds": in_window,
        "in_window_median_s": median(in_window),
        "in_window_ready_seconds": in_window_ready,
        "in_window_ready_median_s": median(in_window_ready),
        "connect_median_s": median(connects),
        "peak_rss_median_mb": median(peaks),
        "process_seconds": processes,
        "process_median_s": median(processes),
        "cases": result["cases"],
        "open_cases": result["open_cases"],
        "state_bytes": result["state_bytes"],
        "cold_cases": result.get("cold_cases"),
        "cold_bytes": result.get("cold_bytes"),
    }


def seeded_home(dovecot: Any, size: int, cases: int, closed: int = 0,
                hot: bool = False) -> Path:
    """A mailbox of `size` messages and the state a first pass would leave on it:
    `cases` open cases (and `closed` paid ones, years of them), every folder read to its
    end. The closed cases' journal says they were paid and sealed, so the untimed pass
    moves them to the cold file, as the daemon does; with `hot`, the journal says nothing
    of them and they stay in the hot state (relance before the cold file). Returns the
    relance.toml."""
    from bench import new_daemon, quiet_logs
    from bench.mailbox_gen import install, warm
    from bench.state_cost import closed_cases, seed_state, synthetic_cases
    from bench.sync import fresh_office
    from relance.mailbox.imap import Mailbox
    from relance.store.state import Cursor

    quiet_logs()
    user, _corpus = install(dovecot, size)
    warm(dovecot, user)
    homes = WORK_DIR / "homes"
    homes.mkdir(parents=True, exist_ok=True)
    config = fresh_office(dovecot, user, homes, f"restart-{size_label(size)}")
    daemon = new_daemon(config)
    paid = closed_cases(closed)
    seed_state(daemon, synthetic_cases(cases) + paid)
    if not hot:
        for case in paid:
            daemon.journal.append("invoice-found", at=case.opened_at or NOW, case=case.number)
            daemon.journal.append("owner-paid", at=case.steps[-1].at, case=case.number)
            daemon.journal.append("evidence-written", at=case.steps[-1].at, case=case.number)
    with Mailbox(daemon.config.imap) as mailbox:
        with daemon.store.transaction() as tx:
            for folder in (mailbox.sent_folder(), "INBOX"):
                state = mailbox.folder_state(folder)
                tx.set_cursor(Cursor(folder, state.uidvalidity, state.uidnext - 1,
                                     state.highestmodseq))
        daemon.run_pass(mailbox, NOW)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="100k")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--closed", type=int, default=0,
                        help="paid cases in the state besides the open ones (years of a "
                             "firm's life); results go to restart-closed-N[-hot].json")
    parser.add_argument("--hot", action="store_true",
                        help="keep the closed cases in the hot state (no journal of their "
                             "seal): relance before closed.jsonl, side by side")
    parser.add_argument("--real-first-pass", action="store_true")
    parser.add_argument("--no-saved-plan", action="store_true",
                        help="remove plan.json before each start (results go to "
                             "restart-no-plan.json)")
    args = parser.parse_args()
    from tests.mailservers import Dovecot

    size = parse_sizes([args.size])[0]
    extra: dict[str, Any] = {}
    with Dovecot() as dovecot:
        if args.real_first_pass:
            first = first_pass(dovecot, size, 1, keep_last=True)
            config = Path(first["last_home"]) / "relance.toml"
            extra["first_pass"] = public(first)
        else:
            config = seeded_home(dovecot, size, args.cases, args.closed, args.hot)
            extra["state"] = (f"seeded: {args.cases} open cases, {args.closed} closed "
                              f"({'hot' if args.hot else 'sealed, moved cold'}), "
                              "cursors at the last UID")
            extra["closed_cases"] = args.closed
            extra["closed_hot"] = args.hot
        result = measure_restart(config, args.runs, saved_plan=not args.no_saved_plan)
        extra["saved_plan"] = not args.no_saved_plan
    print(f"restart {size_label(size)}: pass {result['pass_median_s']:.3f} s "
          f"(ready {result['ready_median_s']:.3f} s; in the send window "
          f"{result['in_window_median_s']:.3f} s, ready {result['in_window_ready_median_s']:.3f}"
          f" s), "
          f"process {result['process_median_s']:.2f} s, peak {result['peak_rss_median_mb']:.0f}"
          f" MB ({result['open_cases']} open cases of {result['cases']})")
    name = "restart" if not args.closed else f"restart-closed-{args.closed}" + (
        "-hot" if args.hot else "")
    if args.no_saved_plan:
        name += "-no-plan"
    save_results(name,
                 "python -m bench.restart " + " ".join(sys.argv[1:]),
                 {"size": size, **extra, **result})


if __name__ == "__main__":
    main()
