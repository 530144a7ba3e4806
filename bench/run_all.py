"""Run every benchmark in turn, then write docs/benchmarks.md (table) and
docs/benchmarks.png (plot) from build/bench/results/*.json.

    python -m bench.run_all                 # everything, about 8 minutes on 2 cores
    python -m bench.run_all --quick         # 1k and 10k only, fewer runs
    python -m bench.run_all --render-only   # redraw the doc from the last results

The doc's text after the `<!-- findings -->` line is written by hand (the profile
findings) and kept as it is when the doc is rewritten.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from bench import REPO_ROOT, load_results, machine, median, size_label

DOC = REPO_ROOT / "docs" / "benchmarks.md"
PLOT = REPO_ROOT / "docs" / "benchmarks.png"
MARKER = "<!-- findings -->"
RESULT_NAMES = ("sync", "header_fetch", "restart", "reply_latency", "state_cost", "memory",
                "peer_imapfilter")


def run_step(module: str, *args: str) -> None:
    command = [sys.executable, "-m", f"bench.{module}", *args]
    print("$ " + " ".join(command[1:]), file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)


STEPS = ("sync", "header_fetch", "restart", "reply_latency", "state_cost", "memory",
         "peer_imapfilter")


def run_everything(quick: bool, start_at: str = "sync") -> None:
    skip = set(STEPS[:STEPS.index(start_at)])

    def run(module: str, *args: str) -> None:
        if module not in skip:
            run_step(module, *args)

    sizes = ["1k", "10k"] if quick else ["1k", "10k", "100k"]
    # A 100k first pass takes about 55 s (session 3); a run past 20 minutes is stopped
    # and its figure becomes a lower bound.
    run("sync", "--sizes", *sizes, "--runs", "2" if quick else "3",
        "--runs-100k", "1" if quick else "3",
        "--timeout", "1200")
    run("header_fetch", "--size", "10k" if quick else "100k", "--runs", "3")
    run("restart", "--size", "10k" if quick else "100k", "--runs", "5")
    run("restart", "--size", "10k" if quick else "100k", "--runs", "5", "--no-saved-plan")
    run("reply_latency", "--replies", "20" if quick else "50")
    run("state_cost", "--cases", "1000", "10000", "--runs", "5" if quick else "7")
    run("memory", "--size", "10k", "--every", "6" if quick else "3")
    peer_sizes = ["10k"] if quick else ["10k", "100k"]
    run("peer_imapfilter", "--sizes", *peer_sizes, "--runs", "3", "--relance-from-sync")


# --- the doc ---------------------------------------------------------------------------


def _s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _commit_of(result: dict[str, Any]) -> str:
    """The commit a result was measured at (`bench.machine`'s git describe, less -dirty:
    before_after.sh copies this checkout's bench into the old tree)."""
    return str(result["machine"]["relance_code"].split()[-1].removesuffix("-dirty"))


def rows() -> list[list[str]]:
    """One table row per figure: what, size, relance, reference, ratio, target, runs."""
    out: list[list[str]] = []
    sync = load_results("sync")
    if sync:
        for r in sync["sizes"]:
            more = "> " if r.get("timed_out") else ""
            out.append([
                "1 initial sync", f"{size_label(r['size'])} msgs",
                more + _s(r["relance_median_s"]) + (" (stopped)" if more else ""),
                f"raw imaplib {_s(r['raw_median_s'])}" + (
                    f"; imapclient {_s(r['imapclient_median_s'])}"
                    if "imapclient_median_s" in r else ""),
                f"{more}{r['ratio']:.0f}x", "≤ 3x at 100k" + (
                    f": {_mark(r['ratio'] <= 3)}" if r["size"] >= 100_000 else ""),
                str(r["runs"]), sync["command"]])
            if "header_phase_median_s" in r:
                out.append([
                    "1 initial sync: header phase", f"{size_label(r['size'])} msgs",
                    f"{_s(r['header_phase_median_s'])} (the pass less "
                    f"{_s(r['body_median_s'])} reading {r['bodies_read']} whole messages)",
                    f"raw imaplib {_s(r['raw_median_s'])}",
                    f"{r['header_phase_ratio']:.1f}x", "", str(r["runs"]), sync["command"]])
    headers = load_results("header_fetch")
    if headers:
        m = headers["median_s"]
        out.append([
            "1 header phase, its parts", f"{size_label(headers['size'])} msgs",
            f"`fetch_headers` {_s(m['relance'])}; `parse_headers` {_s(m['parse'])} "
            f"({headers['parse_us_per_message']:.0f} µs per message)",
            f"raw imaplib {_s(m['raw'])}; imapclient {_s(m['imapclient'])}",
            f"{m['relance'] / m['raw']:.1f}x", "", str(headers["runs"]), headers["command"]])
    restart = load_results("restart")
    if restart:
        # Ready: the pass and what `relance run` does before IDLE (older results: the pass).
        ready = restart.get("ready_median_s", restart["pass_median_s"])
        out.append([
            "2 restart, unchanged mailbox, 07:00 (before the send window)",
            f"{size_label(restart['size'])} msgs, {restart['open_cases']} open cases",
            f"ready {_s(ready)} (the pass {_s(restart['pass_median_s'])})",
            f"whole `relance run --once` {_s(restart['process_median_s'])}", "",
            f"< 0.5 s: {_mark(ready < 0.5)}", str(restart["runs"]), restart["command"]])
        if "in_window_median_s" in restart:
            inside = restart["in_window_ready_median_s"]
            out.append([
                "2 restart, unchanged mailbox, 09:00 (in the send window)",
                f"{size_label(restart['size'])} msgs, {restart['open_cases']} open cases",
                f"ready {_s(inside)} (the pass {_s(restart['in_window_median_s'])})", "", "",
                f"< 0.5 s: {_mark(inside < 0.5)}", str(restart["runs"]), restart["command"]])
        replanned = load_results("restart-no-plan")  # bench.restart --no-saved-plan
        if replanned:
            out.append([
                "2 restart, no saved plan that holds (after a crash, on another day, or "
                "after a command changed the state)",
                f"{size_label(replanned['size'])} msgs, {replanned['open_cases']} open cases",
                f"ready {_s(replanned['ready_median_s'])} at 07:00, "
                f"{_s(replanned['in_window_ready_median_s'])} at 09:00",
                "", "", f"< 0.5 s: {_mark(replanned['ready_median_s'] < 0.5)}",
                str(replanned["runs"]), replanned["command"]])
        before = load_results("restart-before")  # bench/before_after.sh BEFORE restart ...
        if before and "ready_median_s" in before:
            out.append([
                "2 restart, unchanged mailbox: the code before",
                f"{_commit_of(before)}, the same state, just before",
                f"ready {_s(before['ready_median_s'])} at 07:00, "
                f"{_s(before['in_window_ready_median_s'])} at 09:00", "",
                f"{ready / before['ready_median_s']:.2f}x at 07:00, "
                f"{restart['in_window_ready_median_s'] / before['in_window_ready_median_s']:.2f}x"
                " at 09:00", "", str(before["runs"]), before["command"]])
    for closed in (10_000, 30_000):
        after, before = (load_results(f"restart-closed-{closed}"),
                         load_results(f"restart-closed-{closed}-before"))
        if after and before:
            # "ready" where both runs measured it (bench/restart.py since 00e9fc6)
            key = ("ready_median_s" if "ready_median_s" in after and "ready_median_s" in before
                   else "pass_median_s")
            what = "ready" if key == "ready_median_s" else "pass"
            out.append([
                "2 restart, years of closed cases", f"{size_label(after['size'])} msgs, "
                f"{after['open_cases']} open + {closed} paid and sealed",
                f"{what} {_s(after[key])}, peak {after['peak_rss_median_mb']:.0f} MB "
                f"({after['cold_cases']} in `closed.jsonl`)",
                f"the same before the cold file ({_commit_of(before)}): {_s(before[key])}, "
                f"{before['peak_rss_median_mb']:.0f} MB",
                f"{after[key] / before[key]:.2f}x", "",
                str(after["runs"]), after["command"]])
    reply = load_results("reply_latency")
    if reply:
        out.append([
            "3 reply → pause durable (IDLE)", f"{reply['replies']} replies, "
            f"{size_label(reply['mailbox'])} mailbox",
            f"p50 {_s(reply['p50_s'])}, p95 {_s(reply['p95_s'])}" + (
                f"; {len(reply['missed'])} missed by IDLE (max {_s(reply['max_s'])}, "
                "seen at the next wake)" if reply.get("missed") else ""),
            "Dovecot's IDLE batching ≈ 500 ms", "", f"p95 < 1 s: {_mark(reply['p95_s'] < 1)}",
            str(reply["replies"]), reply["command"]])
    state = load_results("state_cost")
    if state:
        for r in state["counts"]:
            ok = r["transition_median_s"] < 0.020
            out.append([
                "4 state: one transition", f"{r['cases']} open cases",
                _s(r["transition_median_s"]),
                f"state.json {r['state_bytes'] / 1e6:.1f} MB", "",
                "< 20 ms at 10k" + (f": {_mark(ok)}" if r["cases"] >= 10_000 else ""),
                str(r["runs"]), state["command"]])
            out.append([
                "4 state: full pass, nothing new", f"{r['cases']} open cases",
                _s(r["pass_median_s"]), f"read all cases {_s(r['read_all_median_s'])}", "",
                "", str(r["runs"]), state["command"]])
    memory = load_results("memory")
    if sync:
        for r in sync["sizes"]:
            if r["size"] >= 100_000:
                peak = r["peak_rss_median_mb"]
                more = "≥ " if r.get("timed_out") else ""
                out.append(["5 memory: peak RSS, first sync", "100k msgs",
                            f"{more}{peak:.0f} MB", "until stopped" if more else "", "",
                            f"< 150 MB: {_mark(peak < 150)}", str(r["runs"]),
                            sync["command"]])
    if memory:
        week = memory["week"]
        # The first day loads, once, the libraries only new mail needs (pypdf, mail-parser:
        # imported on first use); growth is counted from the second day on.
        rss = [s["rss_mb"] for s in week["samples"]]
        per_day = max(1, round(24 / week["every_hours"]))
        second_day = median(rss[per_day:2 * per_day] or rss)
        growth = week["rss_last_day_median_mb"] - second_day
        out.append([
            "5 memory: RSS over a simulated week",
            f"{size_label(memory['size'])} msgs, pass every {week['every_hours']:g} h",
            f"{week['rss_first_mb']:.0f} → {week['rss_last_mb']:.0f} MB "
            f"(max {week['rss_max_mb']:.0f}; day 2 median {second_day:.0f})", f"first-pass peak "
            f"{memory['first_pass']['peak_rss_median_mb']:.0f} MB", f"{growth:+.0f} MB from day 2",
            f"< 150 MB, flat: {_mark(week['rss_max_mb'] < 150 and growth < 5)}",
            f"{week['passes']} passes", memory["command"]])
    peer = load_results("peer_imapfilter")
    if peer:
        for r in peer["sizes"]:
            more = "> " if r.get("relance_lower_bound") else ""
            out.append([
                "6 peer: imapfilter rule pass", f"{size_label(r['size'])} msgs",
                f"relance {more}{_s(r['relance_median_s'])}",
                f"imapfilter {_s(r['imapfilter_median_s'])}", f"{more}{r['ratio']:.0f}x", "",
                f"{r['runs']}", peer["command"]])
    return out


def plot() -> bool:
    """docs/benchmarks.png: first sync against its references, and RSS over the week."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (python -m pip install -e '.[bench]'): no plot drawn "
              "and none linked from the doc", file=sys.stderr)
        return False
    sync, peer, memory, state = (load_results(n) for n in
                                 ("sync", "peer_imapfilter", "memory", "state_cost"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    if sync:
        sizes = [r["size"] for r in sync["sizes"]]
        ax.plot(sizes, [r["relance_median_s"] for r in sync["sizes"]], "o-", label="relance")
        for r in sync["sizes"]:
            if r.get("timed_out"):
                ax.annotate(f"stopped at {r['relance_median_s']:.0f} s\n(> 1 h in a full run)",
                            (r["size"], r["relance_median_s"]), textcoords="offset points",
                            xytext=(-60, -45), fontsize=7, arrowprops={"arrowstyle": "->"})
        ax.plot(sizes, [r["raw_median_s"] for r in sync["sizes"]], "s-",
                label="raw imaplib header fetch")
        ax.plot(sizes, [3 * r["raw_median_s"] for r in sync["sizes"]], ":", color="grey",
                label="target: 3x raw")
    if peer:
        ax.plot([r["size"] for r in peer["sizes"]],
                [r["imapfilter_median_s"] for r in peer["sizes"]], "^-", label="imapfilter")
    ax.set(xscale="log", yscale="log", xlabel="messages in the mailbox",
           ylabel="seconds (median)", title="1 & 6. First pass over the mailbox")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax = axes[1]
    if state:
        counts = [r["cases"] for r in state["counts"]]
        ax.plot(counts, [1000 * r["transition_median_s"] for r in state["counts"]], "o-",
                label="one transition")
        ax.plot(counts, [1000 * r["pass_median_s"] for r in state["counts"]], "s-",
                label="full pass, nothing new")
        ax.axhline(20, color="grey", linestyle=":", label="target: 20 ms")
    ax.set(xscale="log", yscale="log", xlabel="open cases", ylabel="ms (median)",
           title="4. State cost")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax = axes[2]
    if memory:
        samples = memory["week"]["samples"]
        hours = [i * memory["week"]["every_hours"] / 24 for i in range(len(samples))]
        ax.plot(hours, [s["rss_mb"] for s in samples], "-", label="RSS after each pass")
        ax.axhline(150, color="grey", linestyle=":", label="target: 150 MB")
        ax.set(xlabel="simulated days", ylabel="MB", ylim=(0, None),
               title=f"5. Daemon memory over a week ({size_label(memory['size'])} msgs)")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"relance benchmarks — {machine()['cores']} cores, Dovecot on loopback")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)
    plt.close(fig)
    return True


def render() -> None:
    info = machine()
    findings = ""
    if DOC.exists() and MARKER in DOC.read_text():
        findings = DOC.read_text().split(MARKER, 1)[1]
    table = ["| figure | workload | relance | reference | ratio | target | runs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    commands: list[str] = []
    for row in rows():
        table.append("| " + " | ".join(row[:7]) + " |")
        if row[7] not in commands:
            commands.append(row[7])
    drew = plot()
    loads = [r["machine"]["load_average_1m"] for r in map(load_results, RESULT_NAMES)
             if r and "load_average_1m" in r.get("machine", {})]
    load_text = (f" Load average (1 min) when each bench ended: {min(loads):g} to {max(loads):g}."
                 if loads else "")
    text = f"""# Benchmarks

What relance costs as the mailbox grows, measured against the physical limit (a raw IMAP
header fetch) and a peer (imapfilter), on a real Dovecot on loopback. Written by
`python -m bench.run_all` from `build/bench/results/*.json`; every figure is the median
of the runs shown, each run on its own copy of the generated mailbox (see
`bench/mailbox_gen.py` for its mix: 10 % open invoices with a PDF, 5 % old ones, quotes,
replies, newsletters and other mail, over Sent and INBOX). What they need besides the
test command's Dovecot: `python -m pip install -e '.[bench]'` (matplotlib, pyinstrument,
py-spy) and `apt-get install -y imapfilter` (the peer).

Machine: **{info['cores']} cores** (`nproc`), {info['cpu']}, Python {info['python']},
{info['platform']}. Dovecot runs on the same cores, and other work shared the machine
during the runs: read the ratios, not the last digit.{load_text}

{chr(10).join(table)}

{"![benchmarks](benchmarks.png)" if drew else ""}

Commands that produced these figures:

{chr(10).join(f"    {c}" for c in commands)}

{MARKER}{findings}"""
    DOC.write_text(text.rstrip() + "\n")
    print(f"wrote {DOC.relative_to(REPO_ROOT)}" + (f" and {PLOT.name}" if drew else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--start-at", choices=STEPS, default="sync",
                        help="skip the benches before this one (their last results are kept)")
    args = parser.parse_args()
    if not args.render_only:
        run_everything(args.quick, args.start_at)
    render()


if __name__ == "__main__":
    main()
