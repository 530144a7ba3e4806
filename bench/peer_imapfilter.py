"""6. A peer: imapfilter's rule pass against relance's detection pass, same mailbox.

imapfilter (Debian package `imapfilter`) runs the rule a firm would write for it: in Sent,
messages from the firm's addresses whose subject says "Facture" or "Invoice", flagged
`$Invoice`. It lets Dovecot do the work (SEARCH, then STORE); it reads no body and no
attachment, so it finds candidates, not invoices with an amount and a due date. relance's
detection pass is its first pass (as in bench.sync). Each run on its own copy of the
mailbox (the flags rename Maildir files), indexed before timing.

    python -m bench.peer_imapfilter --sizes 10k 100k --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    BILLING_ADDRESS,
    FIRM_ADDRESS,
    WORK_DIR,
    load_results,
    median,
    parse_sizes,
    save_results,
    size_label,
)

RULES = """\
options.timeout = 600
options.subscribe = false
options.create = false
options.info = false

local firm = IMAP {{
  server = '{host}',
  port = {port},
  username = '{username}',
  password = '{password}',
}}

local sent = firm['Sent']
local from_firm = sent:contain_from('{firm}') + sent:contain_from('{billing}')
local invoices = from_firm * (sent:contain_subject('Facture') + sent:contain_subject('Invoice'))
invoices:add_flags({{ '$Invoice' }})
print('matched ' .. #invoices)
"""


def run_imapfilter(host: str, port: int, username: str, password: str) -> tuple[float, int]:
    """One imapfilter rule pass; (seconds, messages matched)."""
    binary = shutil.which("imapfilter")
    if binary is None:
        raise RuntimeError("imapfilter is missing: apt-get update && apt-get install -y imapfilter")
    with tempfile.TemporaryDirectory(prefix="imapfilter-") as tmp:
        config = Path(tmp) / "config.lua"
        config.write_text(RULES.format(host=host, port=port, username=username,
                                       password=password, firm=FIRM_ADDRESS,
                                       billing=BILLING_ADDRESS))
        started = time.perf_counter()
        done = subprocess.run([binary, "-c", str(config)], capture_output=True, text=True,
                              check=False, timeout=1800, env={"HOME": tmp})
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"imapfilter failed ({done.returncode}): {done.stderr[-2000:]}")
    matched = int(done.stdout.strip().split()[-1])
    return seconds, matched


def measure(dovecot: Any, size: int, runs: int,
            relance_seconds: list[float] | None = None) -> dict[str, Any]:
    """imapfilter `runs` times; relance too, unless its first-pass times are given (the
    same mailbox in the same run of run_all, measured by bench.sync)."""
    from bench.mailbox_gen import install, warm
    from bench.sync import fresh_office, run_relance_pass

    homes = WORK_DIR / "homes"
    homes.mkdir(parents=True, exist_ok=True)
    peer: list[float] = []
    own: list[float] = list(relance_seconds or [])
    matched = 0
    for run in range(runs):
        user, corpus = install(dovecot, size)
        warm(dovecot, user)
        seconds, matched = run_imapfilter(dovecot.host, dovecot.imap_port, user.address,
                                          user.password)
        peer.append(seconds)
        line = f"[peer {size_label(size)}] run {run + 1}/{runs}: imapfilter {seconds:.2f} s"
        if relance_seconds is None:
            user, _ = install(dovecot, size)
            warm(dovecot, user)
            config = fresh_office(dovecot, user, homes, f"peer-{size_label(size)}")
            own.append(run_relance_pass(config)["seconds"])
            shutil.rmtree(config.parent, ignore_errors=True)
            line += f", relance {own[-1]:.2f} s"
        print(line + f" ({matched} matched)", file=sys.stderr)
    return {
        "size": size, "runs": runs, "imapfilter_seconds": peer,
        "imapfilter_median_s": median(peer), "imapfilter_matched": matched,
        "invoices_in_mailbox": corpus.manifest["counts"]["invoice"]
        + corpus.manifest["counts"]["old_invoice"],
        "relance_seconds": own, "relance_median_s": median(own),
        "ratio": median(own) / median(peer),
        "relance_from": "bench.sync, same run" if relance_seconds is not None else "this bench",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["10k", "100k"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--relance-from-sync", action="store_true",
                        help="take relance's first-pass times from bench.sync's last results "
                             "(same mailbox, same run_all) instead of measuring them again")
    args = parser.parse_args()
    from tests.mailservers import Dovecot

    known: dict[int, list[float]] = {}
    lower_bounds: set[int] = set()
    if args.relance_from_sync:
        sync = load_results("sync") or {"sizes": []}
        known = {r["size"]: r["relance_seconds"] for r in sync["sizes"]}
        lower_bounds = {r["size"] for r in sync["sizes"] if r.get("timed_out")}
    results = []
    with Dovecot() as dovecot:
        for size in parse_sizes(args.sizes):
            results.append(measure(dovecot, size, args.runs, known.get(size)))
            results[-1]["relance_lower_bound"] = size in lower_bounds
    for r in results:
        print(f"{size_label(r['size'])}: imapfilter {r['imapfilter_median_s']:.2f} s, relance "
              f"{r['relance_median_s']:.2f} s, ratio {r['ratio']:.1f}x")
    save_results("peer_imapfilter", "python -m bench.peer_imapfilter " + " ".join(sys.argv[1:]),
                 {"sizes": results})


if __name__ == "__main__":
    main()
