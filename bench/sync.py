"""1. Initial sync: relance's first pass against a raw imaplib header fetch, same mailbox.

For each size: a fresh Dovecot user holding the generated mailbox, indexed once (not
timed). Then, alternating, `runs` times: the limit, a raw imaplib `UID FETCH 1:*
(BODY.PEEK[HEADER.FIELDS (relance's fields)])` of Sent and INBOX; and relance's first
pass (`Daemon.run_pass`, fresh state, dry-run, `now` = bench.NOW when nothing is due), in
a child process so its peak RSS is its own. Figures: the medians and their ratio.

    python -m bench.sync --sizes 1k 10k 100k --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    NOW,
    REPO_ROOT,
    WORK_DIR,
    median,
    parse_sizes,
    save_results,
    size_label,
    vm_hwm_mb,
    write_office,
)
from relance.mailbox.parse import HEADER_FIELDS

FOLDERS = ("Sent", "INBOX")


def raw_header_fetch(host: str, port: int, user: str, password: str) -> dict[str, int]:
    """The limit: one `UID FETCH 1:*` of relance's header fields per folder, plain imaplib."""
    item = f"(BODY.PEEK[HEADER.FIELDS ({' '.join(HEADER_FIELDS)})])"
    imap = imaplib.IMAP4(host, port)
    imap.login(user, password)
    fetched = 0
    size = 0
    try:
        for folder in FOLDERS:
            typ, _ = imap.select(folder, readonly=True)
            if typ != "OK":
                raise RuntimeError(f"SELECT {folder}: {typ}")
            typ, data = imap.uid("FETCH", "1:*", item)
            if typ != "OK":
                raise RuntimeError(f"UID FETCH {folder}: {typ}")
            for part in data:
                if isinstance(part, tuple):
                    fetched += 1
                    size += len(part[1])
    finally:
        imap.logout()
    return {"messages": fetched, "header_bytes": size}


def imapclient_header_fetch(host: str, port: int, user: str, password: str) -> int:
    """The library's floor: the same header fields through imapclient, as relance's
    adapter asks for them (SEARCH, then UID FETCH in batches of 1,000), no parsing."""
    import imapclient

    from relance.mailbox.imap import FETCH_BATCH, HEADER_ITEM

    client = imapclient.IMAPClient(host, port=port, ssl=False, timeout=60)
    client.login(user, password)
    fetched = 0
    try:
        for folder in FOLDERS:
            client.select_folder(folder, readonly=True)
            uids = sorted(client.search(["ALL"]))
            for start in range(0, len(uids), FETCH_BATCH):
                batch = uids[start:start + FETCH_BATCH]
                fetched += len(client.fetch(batch, [HEADER_ITEM, b"RFC822.SIZE"]))
    finally:
        client.logout()
    return fetched


WHAT_IFS = ("none", "journal-no-fsync")
"""Changes to relance tried from the bench (monkeypatched in the child, never in the
product) to measure what a fix would gain before the lead makes it:
- none: relance as it is, the baseline measured next to the others;
- (keep-selection, measured here before, is now the product's own behaviour: `Mailbox`
  SELECTs only when the folder changes, and fetches candidate bodies in batches);
- journal-no-fsync: the journal's per-entry fsync skipped: the upper bound of writing
  the entries of one transaction with one fsync."""


def apply_what_ifs(names: list[str]) -> None:
    import os
    import types

    from relance.store import journal as journal_module

    if "journal-no-fsync" in names:
        journal_module.os = types.SimpleNamespace(  # type: ignore[attr-defined]
            **{**vars(os), "fsync": lambda fd: None})


def time_body_reading() -> dict[str, float]:
    """Measure, without changing it, the part of a pass spent on whole messages: fetching
    and parsing a body (`Sync._full`), reading an invoice's PDF and text
    (`extract_invoices_with_notes`) and an answer's words and DKIM (`_reading_of`). The
    rest of the pass is the header phase: fetching and reading headers, deciding, the state
    and the journal; it is what compares with the raw header fetch."""
    from relance import intake, listening, sync

    spent = {"seconds": 0.0, "calls": 0}

    def timed(function: Any, count: bool = False) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - started
                spent["calls"] += count
        return wrapper

    sync.Sync._full = timed(sync.Sync._full, count=True)  # type: ignore[method-assign]
    intake.extract_invoices_with_notes = timed(intake.extract_invoices_with_notes)
    listening.Listening._reading_of = timed(  # type: ignore[method-assign]
        listening.Listening._reading_of)
    return spent


def _before_idle(daemon: Any, now: Any) -> None:
    """What `relance run` does after a pass and before IDLE (`Service.serve`): the next
    wake-up, and the status line systemd shows. A daemon is ready once they are done."""
    from relance import service
    from relance.model import OPEN_STATES

    rt = daemon.rt
    # relance before Daemon.planned (12075a3, bench/before_after.sh) planned in each call
    shared = (daemon.planned(now),) if hasattr(daemon, "planned") else ()
    daemon.next_wake(now, *shared)
    local = now.astimezone(rt.config.tz)
    if hasattr(service, "status_text"):  # Service.report_status, decoding no case
        with daemon.store.reading() as view:
            open_states = view.open_states()
        service.status_text(open_states, shared[0], local, rt.config.mode)
        return
    with daemon.store.reading() as view:
        cases = view.cases_in(OPEN_STATES)
    service.status_line(cases.values(), rt.rules, rt.calendar, local, rt.config.mode, *shared)


def relance_pass_child(config: Path, now: str, profile: Path | None,
                       what_ifs: list[str] | None = None) -> dict[str, Any]:
    """In the child: one `run_pass` on the config's (fresh or kept) state, measured."""
    from datetime import datetime

    from bench import new_daemon, quiet_logs
    from relance.mailbox.imap import Mailbox

    quiet_logs()
    apply_what_ifs(what_ifs or [])
    reading = time_body_reading()
    daemon = new_daemon(config)
    instant = datetime.fromisoformat(now)
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    started = time.perf_counter()
    with daemon.store.lock_daemon():
        if hasattr(daemon, "warm_start"):  # as `relance run` starts (older code had none)
            if "now" in inspect.signature(daemon.warm_start).parameters:
                daemon.warm_start(instant)
            else:  # 2f5ba60 to 66f8455: no saved plan, a daemon decodes at start
                daemon.warm_start()
        opening = time.perf_counter()
        with Mailbox(daemon.config.imap) as mailbox:
            connected = time.perf_counter()
            daemon.run_pass(mailbox, instant)
    seconds = time.perf_counter() - started
    then_idle = time.perf_counter()
    _before_idle(daemon, instant)
    ready_seconds = seconds + time.perf_counter() - then_idle
    if hasattr(daemon, "save_plan"):  # untimed: what `relance run` does when it stops
        daemon.save_plan()
    if profiler is not None:
        profiler.stop()
        assert profile is not None
        profile.write_text(profiler.output_html())
        (profile.with_suffix(".txt")).write_text(
            profiler.output_text(unicode=False, color=False, show_all=False))
    peak = vm_hwm_mb()  # before the counting below, which reads what the pass did not
    events: dict[str, int] = {}
    for entry in daemon.journal.entries():
        events[str(entry["event"])] = events.get(str(entry["event"]), 0) + 1
    from relance.model import OPEN_STATES
    from relance.store import state as state_module

    # relance before the cold file (1832ad3, bench/closed_side_by_side.sh) has none of it
    with daemon.store.reading() as view:
        cases, open_cases, cold_cases = (
            len(view.case_map()), len(view.cases_in(OPEN_STATES)),
            view.cold_count() if hasattr(view, "cold_count") else 0)
    cold = daemon.store.state_dir / getattr(state_module, "COLD_FILE", "closed.jsonl")
    return {
        "seconds": seconds,
        "ready_seconds": ready_seconds,
        "body_seconds": reading["seconds"],
        "bodies_read": reading["calls"],
        "connect_seconds": connected - opening,
        "peak_rss_mb": peak,
        "cases": cases,
        "open_cases": open_cases,
        "cold_cases": cold_cases,
        "state_bytes": daemon.store.path.stat().st_size,
        "cold_bytes": cold.stat().st_size if cold.exists() else 0,
        "events": events,
    }


def run_relance_pass(config: Path, now: str = NOW.isoformat(),
                     profile: Path | None = None, timeout: float = 3600,
                     what_ifs: list[str] | None = None) -> dict[str, Any]:
    """`relance_pass_child` in a fresh interpreter; its JSON result."""
    command = [sys.executable, "-m", "bench.sync", "--child", str(config), "--now", now]
    if profile is not None:
        command += ["--profile-to", str(profile)]
    for name in what_ifs or []:
        command += ["--what-if", name]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=err)
        started = time.perf_counter()
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return _timed_out(child, config, time.perf_counter() - started)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"relance pass failed ({child.returncode}):\n"
                               f"{err.read().decode(errors='replace')[-3000:]}")
        result: dict[str, Any] = json.loads(out.read().decode().strip().splitlines()[-1])
    return result


def _timed_out(child: subprocess.Popen[bytes], config: Path, seconds: float) -> dict[str, Any]:
    """A pass still running at the time limit: its peak RSS so far and how far it got (from
    its journal), then it is stopped. `seconds` is then a lower bound."""
    peak = vm_hwm_mb(child.pid)
    child.kill()
    child.wait()
    events: dict[str, int] = {}
    journal = config.parent / "state" / "journal.jsonl"
    if journal.exists():
        for line in journal.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                name = str(json.loads(line)["event"])
                events[name] = events.get(name, 0) + 1
    return {"seconds": seconds, "timed_out": True, "connect_seconds": float("nan"),
            "body_seconds": float("nan"), "bodies_read": 0,
            "peak_rss_mb": peak, "cases": events.get("invoice-found", 0), "open_cases": None,
            "state_bytes": None, "events": events}


def fresh_office(dovecot: Any, user: Any, parent: Path, label: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=parent))
    return write_office(home, host=dovecot.host, port=dovecot.imap_port,
                        username=user.address, password=user.password)


def measure(dovecot: Any, size: int, runs: int, *, profile: bool = False,
            keep_last: bool = False, what_ifs: list[str] | None = None,
            timeout: float = 3600) -> dict[str, Any]:
    """Both sides of one size, alternating. With `keep_last`, the last run's home (config
    and state) and user stay, named in the result as "last_home" and "last_user", for the
    restart and memory benches to go on from.

    Each run gets its own copy of the mailbox (a new user, indexed before timing): a
    first pass may move mail (it archives the threads of cases that closed), and the
    next run must see the mailbox the first one saw.
    """
    from bench.mailbox_gen import install, warm

    homes = WORK_DIR / "homes"
    homes.mkdir(parents=True, exist_ok=True)
    raw_times: list[float] = []
    library_times: list[float] = []
    relance_runs: list[dict[str, Any]] = []
    raw_info: dict[str, int] = {}
    index_times: list[float] = []
    for run in range(runs):
        user, corpus = install(dovecot, size)
        index_times.append(warm(dovecot, user))
        seconds, raw_info = _timed_raw(dovecot, user)
        raw_times.append(seconds)
        started = time.perf_counter()
        imapclient_header_fetch(dovecot.host, dovecot.imap_port, user.address, user.password)
        library_times.append(time.perf_counter() - started)
        config = fresh_office(dovecot, user, homes, f"sync-{size_label(size)}")
        suffix = "".join(f"-{w}" for w in what_ifs or [])
        prof = (WORK_DIR / "profiles" / f"sync-{size_label(size)}{suffix}.html"
                if profile and run == runs - 1 else None)
        if prof is not None:
            prof.parent.mkdir(parents=True, exist_ok=True)
        result = run_relance_pass(config, profile=prof, what_ifs=what_ifs, timeout=timeout)
        relance_runs.append(result)
        print(f"[sync {size_label(size)}] run {run + 1}/{runs}: indexed in "
              f"{index_times[-1]:.1f} s; raw {seconds:.2f} s, relance {result['seconds']:.2f} s "
              f"(bodies {result['body_seconds']:.2f} s), "
              f"peak {result['peak_rss_mb']:.0f} MB, cases {result['cases']} "
              f"({result['open_cases']} open)", file=sys.stderr)
        if not (keep_last and run == runs - 1):
            shutil.rmtree(config.parent, ignore_errors=True)
    relance_s = median([r["seconds"] for r in relance_runs])
    header_s = median([r["seconds"] - r["body_seconds"] for r in relance_runs])
    raw_s = median(raw_times)
    return {
        "size": size,
        "corpus": corpus.manifest,
        "runs": runs,
        "index_seconds": index_times,
        "raw_seconds": raw_times,
        "raw_median_s": raw_s,
        "raw_fetched": raw_info,
        "imapclient_seconds": library_times,
        "imapclient_median_s": median(library_times),
        "relance_seconds": [r["seconds"] for r in relance_runs],
        "relance_median_s": relance_s,
        "ratio": relance_s / raw_s,
        "header_phase_median_s": header_s,
        "header_phase_ratio": header_s / raw_s,
        "body_median_s": median([r["body_seconds"] for r in relance_runs]),
        "bodies_read": relance_runs[-1]["bodies_read"],
        "peak_rss_mb": [r["peak_rss_mb"] for r in relance_runs],
        "peak_rss_median_mb": median([r["peak_rss_mb"] for r in relance_runs]),
        "cases": relance_runs[-1]["cases"],
        "open_cases": relance_runs[-1]["open_cases"],
        "state_bytes": relance_runs[-1]["state_bytes"],
        "events": relance_runs[-1]["events"],
        "per_message_ms": 1000 * relance_s / size,
        "timed_out": any(r.get("timed_out") for r in relance_runs),
        "last_home": str(config.parent) if keep_last else None,
        "last_user": user if keep_last else None,
    }


def public(result: dict[str, Any]) -> dict[str, Any]:
    """A result without the live objects handed between benches."""
    return {k: v for k, v in result.items() if k not in ("last_user", "last_home")}


def _timed_raw(dovecot: Any, user: Any) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    info = raw_header_fetch(dovecot.host, dovecot.imap_port, user.address, user.password)
    return time.perf_counter() - started, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1k", "10k", "100k"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runs-100k", type=int, default=None,
                        help="runs at 100k (default: --runs); a 100k pass takes over an hour")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds a relance pass may take; past it the figure is a lower "
                             "bound (shown as '> N s')")
    parser.add_argument("--profile", action="store_true",
                        help="pyinstrument the last relance run of each size")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--now", default=NOW.isoformat(), help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--what-if", action="append", choices=WHAT_IFS, default=[],
                        help="measure relance with this fix monkeypatched in (repeatable; "
                             "results go to sync-what-if.json)")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(relance_pass_child(args.child, args.now, args.profile_to,
                                            args.what_if)))
        return
    from tests.mailservers import Dovecot

    results = []
    with Dovecot() as dovecot:
        for size in parse_sizes(args.sizes):
            runs = args.runs_100k if size >= 100_000 and args.runs_100k else args.runs
            results.append(measure(dovecot, size, runs, profile=args.profile,
                                   what_ifs=args.what_if, timeout=args.timeout))
            # saved after each size: a later size that fails keeps the earlier figures
            command = "python -m bench.sync " + " ".join(sys.argv[1:])
            name = "sync-what-if-" + "+".join(args.what_if) if args.what_if else "sync"
            save_results(name, command,
                         {"what_ifs": args.what_if, "sizes": [public(r) for r in results]})
    for r in results:
        print(f"{size_label(r['size'])}: raw {r['raw_median_s']:.2f} s, relance "
              f"{r['relance_median_s']:.2f} s, ratio {r['ratio']:.1f}x, "
              f"peak {r['peak_rss_median_mb']:.0f} MB")


if __name__ == "__main__":
    main()
