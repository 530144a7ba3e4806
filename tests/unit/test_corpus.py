"""Every mail of the invoice corpus (tests/corpus/mails) gives the facts its sidecar states.

The corpus is written by tests/corpus/build.py; `python -m tests.corpus.report` prints the
precision, recall and per-fact accuracy these tests hold to.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.corpus` is imported as a package from the root
    sys.path.insert(0, str(ROOT))

from relance.core.extract import extract_invoices, extract_invoices_with_notes  # noqa: E402
from relance.mailbox.parse import parse_message  # noqa: E402
from tests.corpus.build import CASES, generated_cases  # noqa: E402
from tests.corpus.report import (  # noqa: E402
    FACTS,
    MAILS,
    CorpusMail,
    Scores,
    corpus_mails,
    judge,
)

CORPUS = corpus_mails()

# Mails the extractor gets wrong, with why; strict, so a fix shows up as a failure here.
KNOWN_MISSES: dict[str, str] = {}


@pytest.mark.parametrize(
    "mail",
    [
        pytest.param(mail, id=mail.name, marks=pytest.mark.xfail(
            reason=KNOWN_MISSES[mail.name], strict=True)) if mail.name in KNOWN_MISSES
        else pytest.param(mail, id=mail.name)
        for mail in CORPUS
    ],
)
def test_corpus_mail_gives_the_expected_facts(mail: CorpusMail) -> None:
    outcome = judge(mail)
    assert outcome.problems() == [], "\n".join(outcome.problems())
    # A guard against runaway parsing (a bomb), loose for a loaded machine; speed is
    # measured in bench/, not here.
    assert outcome.seconds < 30, f"{mail.name} took {outcome.seconds:.2f} s"


def test_corpus_is_big_enough_and_small_enough() -> None:
    assert len(CORPUS) >= 60
    assert sum(path.stat().st_size for path in MAILS.iterdir()) < 5_000_000
    assert {mail.name for mail in CORPUS} == set(CASES), "run python -m tests.corpus.build"
    invoices = [facts for mail in CORPUS for facts in mail.expected]
    for facts in invoices:
        assert set(FACTS) <= set(facts)
        assert facts["kind"] in ("invoice", "credit_note")
    assert sum(not mail.expected for mail in CORPUS) >= 15  # non-invoices


@pytest.mark.parametrize("name", ["fx_minimum_classic", "pdf_grid_layout",
                                  "hostile_encrypted_pdf", "body_two_invoices_listed"])
def test_corpus_files_are_what_build_writes(name: str) -> None:
    """The generator is deterministic and the committed files are its output."""
    built = CASES[name]()
    assert (MAILS / f"{name}.eml").read_bytes() == built.raw


def test_corpus_scores_stay_high() -> None:
    scores = Scores()
    for mail in CORPUS:
        scores.add(judge(mail))
    assert scores.detected / scores.found >= 0.97  # precision
    assert scores.detected / scores.expected >= 0.97  # recall
    for name in FACTS:
        assert scores.correct[name] / scores.detected >= 0.97, name


@pytest.mark.parametrize("name", sorted(generated_cases()))
def test_big_scans_are_bounded_and_noted(name: str) -> None:
    """Scans of many megabytes, built here (too big for git): facts from the mail, a note,
    and extraction in bounded time and memory."""
    built = generated_cases()[name]()
    mail = parse_message(built.raw)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        found, notes = extract_invoices_with_notes(mail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5
    assert peak < 120 * 1024 * 1024
    assert [f.number for f in found] == ["2026-125"]
    assert found[0].amount is not None and found[0].notes
    assert notes


@pytest.mark.parametrize("name", ["hostile_flate_bomb", "hostile_xml_bomb_in_facturx",
                                  "hostile_zip_named_pdf"])
def test_bombs_cost_little_memory(name: str) -> None:
    mail = parse_message((MAILS / f"{name}.eml").read_bytes())
    tracemalloc.start()
    try:
        found = extract_invoices(mail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found and found[0].notes
    assert peak < 80 * 1024 * 1024
