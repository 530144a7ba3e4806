"""How well invoice extraction does on the corpus: `python -m tests.corpus.report`.

Prints precision and recall of detection (an invoice found in a mail that sends it, by
number), the exact-match accuracy of each fact over the invoices found, and, with `-v`,
every miss. `--generated` adds the big scans built in memory (slower).

The comparison lives here so that the test (tests/unit/test_corpus.py) and the report
judge the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relance.core.extract import due_date_for, extract_invoices_with_notes
from relance.mailbox.parse import parse_message
from relance.model import InvoiceFacts

MAILS = Path(__file__).resolve().parent / "mails"
FACTS = ("number", "kind", "amount", "currency", "issue_date", "due_date")
HELD_OUT_PREFIX = "heldout_"


@dataclass(frozen=True)
class CorpusMail:
    name: str
    raw: bytes
    expected: list[dict[str, Any]]


def corpus_mails() -> list[CorpusMail]:
    return [
        CorpusMail(path.stem, path.read_bytes(),
                   json.loads(path.with_suffix(".expected.json").read_text("utf-8")))
        for path in sorted(MAILS.glob("*.eml"))
    ]


def generated_mails() -> Iterator[CorpusMail]:
    from tests.corpus.build import generated_cases

    for name, make in generated_cases().items():
        built = make()
        yield CorpusMail(name, built.raw, built.expected)


def facts_as_sidecar(facts: InvoiceFacts) -> dict[str, Any]:
    """The facts in the sidecar's terms; the due date as the invoice itself sets it (a date,
    else its own terms), not the firm's default terms."""
    due = facts.due_date
    if due is None and facts.terms_days is not None:
        due = due_date_for(facts, default_terms_days=0)
    return {
        "number": facts.number,
        "kind": facts.kind,
        "amount": f"{facts.amount:.2f}" if facts.amount is not None else None,
        "currency": facts.currency,
        "issue_date": facts.issue_date.isoformat() if facts.issue_date else None,
        "due_date": due.isoformat() if due else None,
    }


def _key(number: str | None) -> str:
    return "".join((number or "").split()).upper()


@dataclass
class Outcome:
    """One mail judged: pairs of (expected, found), and what is missing or extra."""

    name: str
    pairs: list[tuple[dict[str, Any], InvoiceFacts]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    extra: list[InvoiceFacts] = field(default_factory=list)
    mail_notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def wrong_facts(self) -> list[str]:
        """'number: expected X, got Y' for every fact and check that does not match."""
        problems = []
        for expected, found in self.pairs:
            got = facts_as_sidecar(found)
            label = expected["number"]
            for name in FACTS:
                if got[name] != expected[name]:
                    problems.append(f"{label} {name}: expected {expected[name]}, "
                                    f"got {got[name]}")
            problems.extend(f"{label} {p}" for p in _check_extras(expected, found))
        return problems

    def problems(self) -> list[str]:
        found = [f"missed {e['number']}" for e in self.missed]
        found += [f"extra {f.number} ({f.source})" for f in self.extra]
        return found + self.wrong_facts()


def _check_extras(expected: dict[str, Any], found: InvoiceFacts) -> list[str]:
    problems = []
    notes = " | ".join(found.notes).lower()
    for word in expected.get("notes", []):
        if word.lower() not in notes:
            problems.append(f"notes: no '{word}' in {list(found.notes)}")
    for name in expected.get("disagreements", []):
        if not any(d.startswith(f"{name}:") for d in found.disagreements):
            problems.append(f"disagreements: no {name} in {list(found.disagreements)}")
    for number in expected.get("refers_to", []):
        if number not in notes.upper():
            problems.append(f"refers_to: {number} not in notes {list(found.notes)}")
    return problems


def judge(mail: CorpusMail) -> Outcome:
    started = time.perf_counter()
    found, mail_notes = extract_invoices_with_notes(parse_message(mail.raw))
    outcome = Outcome(mail.name, mail_notes=mail_notes)
    outcome.seconds = time.perf_counter() - started
    left = list(found)
    for expected in mail.expected:
        match = next((f for f in left if _key(f.number) == _key(expected["number"])), None)
        if match is None:
            outcome.missed.append(expected)
        else:
            left.remove(match)
            outcome.pairs.append((expected, match))
    # A found invoice with the wrong number next to an expected one it failed to match is
    # one invoice with a wrong number, not one missed and one invented.
    while outcome.missed and left:
        outcome.pairs.append((outcome.missed.pop(0), left.pop(0)))
    outcome.extra = left
    return outcome


@dataclass
class Scores:
    mails: int = 0
    expected: int = 0
    found: int = 0
    detected: int = 0  # expected invoices found (with any number)
    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FACTS, 0))
    checks: int = 0
    checks_ok: int = 0
    mails_exact: int = 0

    def add(self, outcome: Outcome) -> None:
        self.mails += 1
        self.expected += len(outcome.pairs) + len(outcome.missed)
        self.found += len(outcome.pairs) + len(outcome.extra)
        self.detected += len(outcome.pairs)
        for expected, facts in outcome.pairs:
            got = facts_as_sidecar(facts)
            for name in FACTS:
                self.correct[name] += got[name] == expected[name]
            wanted = sum(len(expected.get(k, [])) for k in ("notes", "disagreements",
                                                            "refers_to"))
            self.checks += wanted
            self.checks_ok += wanted - len(_check_extras(expected, facts))
        self.mails_exact += not outcome.problems()

    def lines(self) -> list[str]:
        precision = self.detected / self.found if self.found else 1.0
        recall = self.detected / self.expected if self.expected else 1.0
        out = [
            f"mails: {self.mails}, invoices expected: {self.expected}, found: {self.found}",
            f"detection precision: {precision:.1%} ({self.detected}/{self.found})",
            f"detection recall:    {recall:.1%} ({self.detected}/{self.expected})",
            "exact-match accuracy over the invoices found:",
        ]
        for name in FACTS:
            count = self.correct[name]
            share = count / self.detected if self.detected else 1.0
            out.append(f"  {name:<11} {share:6.1%} ({count}/{self.detected})")
        out.append(f"notes/disagreements/refers_to checks: {self.checks_ok}/{self.checks}")
        out.append(f"mails entirely right: {self.mails_exact}/{self.mails}")
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list every miss")
    parser.add_argument("--generated", action="store_true", help="add the big scans")
    args = parser.parse_args(argv)
    mails = corpus_mails()
    if args.generated:
        mails += list(generated_mails())
    scores, held_out = Scores(), Scores()
    slowest = (0.0, "")
    for mail in mails:
        outcome = judge(mail)
        scores.add(outcome)
        if mail.name.startswith(HELD_OUT_PREFIX):
            held_out.add(outcome)
        slowest = max(slowest, (outcome.seconds, mail.name))
        if args.verbose and outcome.problems():
            print(f"{mail.name}:")
            for problem in outcome.problems():
                print(f"    {problem}")
    print("== whole corpus")
    print("\n".join(scores.lines()))
    print(f"slowest mail: {slowest[1]} ({slowest[0]:.2f} s)")
    print(f"== held out ({HELD_OUT_PREFIX}*: written after tuning; see build.py)")
    print("\n".join(held_out.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
