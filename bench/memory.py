"""5. Memory: peak RSS of the first sync, and RSS over a simulated week of daemon life.

The peak is the first pass's VmHWM, measured in its own process (bench.sync reports it
for every size). The week: one long-lived process, like `relance run`, keeps a Daemon and
its IMAP connection and runs a pass every `--every` hours for 7 days from bench.NOW at
09:00 (inside the send window; the clock is given as `now`, as `--now` does), while a
client reply and a new invoice land in the mailbox each simulated day. VmRSS after each
pass: first, last, max, and the growth from the first day to the last.

    python -m bench.memory --size 10k --every 3
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench import (
    NOW,
    PARIS,
    REPO_ROOT,
    median,
    parse_sizes,
    save_results,
    size_label,
    vm_hwm_mb,
    vm_rss_mb,
)

DAYS = 7
WEEK_START = NOW.replace(hour=9)  # passes then fall in the default send window (08:30-10:00)


def week_child(config: Path, every_hours: float, max_seconds: float,
               lmtp: tuple[str, int, str] | None) -> dict[str, Any]:
    """In the child: passes over a simulated week; VmRSS after each."""
    import smtplib

    from bench import new_daemon, quiet_logs
    from bench.mailbox_gen import Invoice, client_address, invoice_message, reply_message
    from relance.mailbox.imap import Mailbox

    quiet_logs()
    daemon = new_daemon(config)
    rng = random.Random(3)
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    steps = int(DAYS * 24 / every_hours)
    with daemon.store.lock_daemon(), Mailbox(daemon.config.imap) as mailbox:
        for step in range(steps + 1):
            now = WEEK_START + timedelta(hours=step * every_hours)
            if lmtp is not None and step and (step * every_hours) % 24 < every_hours:
                _new_mail(lmtp, now, step, rng, Invoice, client_address, invoice_message,
                          reply_message, smtplib)
            pass_started = time.perf_counter()
            daemon.run_pass(mailbox, now)
            daemon.next_wake(now)
            samples.append({"now": now.isoformat(), "pass_s": time.perf_counter() - pass_started,
                            "rss_mb": vm_rss_mb()})
            if time.perf_counter() - started > max_seconds:
                break
    return {"samples": samples, "peak_rss_mb": vm_hwm_mb(), "steps_planned": steps + 1,
            "seconds": time.perf_counter() - started}


def _new_mail(lmtp: tuple[str, int, str], now: Any, step: int, rng: random.Random,
              invoice_cls: Any, client_address: Any, invoice_message: Any, reply_message: Any,
              smtplib: Any) -> None:
    """One new invoice (a copy lands in INBOX, as a BCC from the invoicing tool) and one
    client reply to it, as a day brings."""
    host, port, rcpt = lmtp
    client = rng.randrange(400)
    inv = invoice_cls(f"F-W-{step:04d}", f"<week-{step}@atelier.example>", client,
                      now.astimezone(PARIS) - timedelta(hours=1),
                      (now + timedelta(days=30)).date(), "1 200,00")
    for raw in (invoice_message(inv, rng),
                reply_message(inv, now, f"<week-reply-{step}@client.example>", rng)):
        with smtplib.LMTP(host, port, timeout=10) as lmtp_client:
            lmtp_client.sendmail(client_address(client), [rcpt], raw)


def run_week(config: Path, every_hours: float, max_seconds: float,
             lmtp: tuple[str, int, str] | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.memory", "--child", str(config),
               "--every", str(every_hours), "--max-seconds", str(max_seconds)]
    if lmtp is not None:
        command += ["--lmtp", f"{lmtp[0]}:{lmtp[1]}:{lmtp[2]}"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          check=False, timeout=max_seconds + 900)
    if done.returncode != 0:
        raise RuntimeError(f"week failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    rss = [s["rss_mb"] for s in result["samples"]]
    per_day = max(1, round(24 / every_hours))
    result.update({
        "every_hours": every_hours,
        "passes": len(rss),
        "rss_first_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_max_mb": max(rss),
        "rss_first_day_median_mb": median(rss[:per_day]),
        "rss_last_day_median_mb": median(rss[-per_day:]),
        "pass_median_s": median([s["pass_s"] for s in result["samples"]]),
    })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="10k")
    parser.add_argument("--every", type=float, default=3.0, help="hours between passes")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lmtp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        lmtp = None
        if args.lmtp:
            host, port, rcpt = args.lmtp.split(":", 2)
            lmtp = (host, int(port), rcpt)
        print(json.dumps(week_child(args.child, args.every, args.max_seconds, lmtp)))
        return
    from bench.sync import measure as first_pass
    from bench.sync import public
    from tests.mailservers import Dovecot

    size = parse_sizes([args.size])[0]
    with Dovecot() as dovecot:
        first = first_pass(dovecot, size, 1, keep_last=True)
        user = first["last_user"]
        week = run_week(Path(first["last_home"]) / "relance.toml", args.every,
                        args.max_seconds, (dovecot.host, dovecot.lmtp_port, user.address))
    print(f"memory {size_label(size)}: first-pass peak {first['peak_rss_median_mb']:.0f} MB; "
          f"week: RSS {week['rss_first_mb']:.0f} → {week['rss_last_mb']:.0f} MB "
          f"(max {week['rss_max_mb']:.0f}) over {week['passes']} passes")
    save_results("memory", "python -m bench.memory " + " ".join(sys.argv[1:]),
                 {"size": size, "first_pass": public(first), "week": week})


if __name__ == "__main__":
    main()
