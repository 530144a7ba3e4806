"""The command line: argument parsing only; each verb calls one function.

Exit codes: 0 ok, 1 a problem it reported, 2 bad usage (argparse's own).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from relance import __version__, logs

Handler = Callable[[argparse.Namespace], int]


def _iso_instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'"{text}" is not an ISO-8601 instant; expected e.g. 2026-12-01T09:00:00+01:00'
        ) from None
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'"{text}" is not a date; expected YYYY-MM-DD'
        ) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="config file (default: $RELANCE_CONFIG, ./relance.toml, "
                             "/etc/relance/relance.toml)")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug details")

    parser = argparse.ArgumentParser(
        prog="relance", description="Chase unpaid invoices from the firm's own mailbox.")
    parser.add_argument("--version", action="version", version=f"relance {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, parents=[common], help=help_text, description=help_text)

    p = verb("init", "write a commented relance.toml, rules/ and templates/ into DIR")
    p.add_argument("dir", nargs="?", default=".", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite existing files")

    verb("check", "validate config, rules and templates; connect to IMAP and SMTP")

    p = verb("run", "the daemon: watch the mailbox and chase what is due")
    p.add_argument("--once", action="store_true", help="one pass, then exit (cron, tests)")
    p.add_argument("--now", type=_iso_instant, metavar="ISO-8601",
                   help="stand-in for the clock in this run (with --once)")

    p = verb("status", "list open cases")
    p.add_argument("--json", action="store_true", help="stable, documented JSON output")
    p.add_argument("--all", action="store_true", help="closed cases too")
    p.add_argument("--now", type=_iso_instant, metavar="ISO-8601", help=argparse.SUPPRESS)

    p = verb("show", "one case: facts, timeline, and the next reminder as it will leave")
    p.add_argument("number")
    p.add_argument("--now", type=_iso_instant, metavar="ISO-8601", help=argparse.SUPPRESS)

    p = verb("paid", "record a payment (in full, or --amount for a part)")
    p.add_argument("number")
    p.add_argument("--amount")
    p = verb("pause", "stop chasing a case for a while")
    p.add_argument("number")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--until", type=_iso_date, metavar="DATE")
    group.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 14d, 2w")
    p = verb("resume", "chase a paused case again")
    p.add_argument("number")
    p = verb("stop", "stop chasing a case for good")
    p.add_argument("number")
    p = verb("facts", "give an invoice the facts relance could not read (amount, due date)")
    p.add_argument("number")
    p.add_argument("--amount")
    p.add_argument("--due", type=_iso_date, metavar="DATE")
    p = verb("sent-lrar", "record the date the formal notice left by registered post")
    p.add_argument("number")
    p.add_argument("date", type=_iso_date, metavar="DATE")
    for name in ("paid", "pause", "resume", "stop", "facts", "sent-lrar"):
        verbs.choices[name].add_argument("--now", type=_iso_instant, help=argparse.SUPPRESS)

    p = verb("rebuild", "a new state from the mailbox and the journal, when the state file "
                        "cannot be read (the old files are moved aside)")
    p.add_argument("--now", type=_iso_instant, help=argparse.SUPPRESS)

    evidence = verbs.add_parser("evidence", help="evidence bundles: export one, verify all",
                                description="evidence bundles: export one, verify all")
    sub = evidence.add_subparsers(dest="evidence_verb", required=True, metavar="ACTION")
    p = sub.add_parser("export", parents=[common], help="write one case's bundle and a zip")
    p.add_argument("number")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--now", type=_iso_instant, help=argparse.SUPPRESS)
    sub.add_parser("verify", parents=[common], help="check every bundle and the ledger chain")

    p = verb("demo", "see the whole loop on an embedded mail server; needs no account")
    p.add_argument("--fast", action="store_true", help="no pauses between simulated days")
    return parser


def _handler(verb: str) -> Handler:
    """Import lazily: `relance --help` must not pay for the whole program."""
    from relance import commands

    table: dict[str, Handler] = {
        "init": commands.init,
        "check": commands.check,
        "run": commands.run,
        "status": commands.status,
        "show": commands.show,
        "paid": commands.owner_command,
        "pause": commands.owner_command,
        "resume": commands.owner_command,
        "stop": commands.owner_command,
        "facts": commands.owner_command,
        "sent-lrar": commands.owner_command,
        "evidence": commands.evidence,
        "rebuild": commands.rebuild,
        "demo": commands.demo,
    }
    return table[verb]


def setup_logging(verbose: bool) -> None:
    """One event a line on stderr: key=value, or JSON with RELANCE_LOG_FORMAT=json."""
    logs.setup(verbose)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return _handler(args.verb)(args)
    except KeyboardInterrupt:
        return 1


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")
