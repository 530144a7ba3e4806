"""Where a restart's time goes: pyinstrument over restarts on an unchanged mailbox.

Seeds the home bench.restart uses (100k messages, 10k open cases), runs two untimed
passes (the second leaves the plan a clean stop saves), then `--runs` profiled restarts
at `--at` (bench.NOW, 07:00, or 09:00 inside the send window). Writes
build/bench/profiles/restart-N.html and .txt; the figure to read is each share.

    python -m bench.profile_restart --runs 3
    python -m bench.profile_restart --runs 3 --at 09:00 --no-saved-plan
"""

from __future__ import annotations

import argparse
from datetime import datetime

from bench import NOW, WORK_DIR, parse_sizes
from bench.restart import IN_WINDOW, forget_saved_plan, seeded_home
from bench.sync import run_relance_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="100k")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--at", choices=["07:00", "09:00"], default="07:00")
    parser.add_argument("--no-saved-plan", action="store_true")
    args = parser.parse_args()
    from tests.mailservers import Dovecot

    at: datetime = NOW if args.at == "07:00" else IN_WINDOW
    out = WORK_DIR / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    with Dovecot() as dovecot:
        config = seeded_home(dovecot, parse_sizes([args.size])[0], args.cases)
        run_relance_pass(config, now=IN_WINDOW.isoformat())  # the Monday digest, once
        run_relance_pass(config, now=at.isoformat())
        for i in range(args.runs):
            if args.no_saved_plan:
                forget_saved_plan(config)
            result = run_relance_pass(config, now=at.isoformat(),
                                      profile=out / f"restart-{i}.html")
            print(f"run {i}: ready {result['ready_seconds']:.3f} s (under the profiler), "
                  f"profile {out / f'restart-{i}.txt'}")


if __name__ == "__main__":
    main()
