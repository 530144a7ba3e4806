"""The daemon starts without the heavy readers and writers it may never use.

fpdf (letters), factur-x and lxml (structured invoices), pypdf (PDF attachments), dkimpy
(evidence), mail-parser (bodies) and holidays (calendars) made `import relance.app` cost
110 MB of resident memory instead of 45; they are imported on first use. A fresh
interpreter is the only honest place to look: the test session has imported them all.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("fpdf", "facturx", "pypdf", "dkim", "lxml", "mailparser", "holidays")


def test_importing_the_daemon_loads_none_of_the_heavy_libraries() -> None:
    code = (
        "import relance.app, relance.cli, relance.service; import sys; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def test_each_library_is_there_once_its_feature_is_used() -> None:
    """The lazy imports are real imports: reading a PDF, an invoice XML, checking DKIM,
    writing a letter and reading a body each load their library (and only then)."""
    code = """
import sys
from datetime import UTC, datetime
from relance.core import documents
from relance.store.evidence import dkim_check
loaded = []
def step(name, action):
    before = name in sys.modules
    action()
    loaded.append((name, before, name in sys.modules))
step("pypdf", lambda: documents.read_pdf(b"%PDF-1.4 broken", "x.pdf"))
step("lxml", lambda: documents.parse_invoice_xml(b"<Invoice"))  # not well-formed: no facturx
step("facturx", lambda: documents.parse_invoice_xml(b"<Invoice/>"))
step("dkim", lambda: dkim_check(b"From: a@b.example\\r\\n\\r\\nx", datetime.now(UTC)))
from relance.core.letter import _pdf_class
step("fpdf", _pdf_class)
from relance.mailbox.parse import parse_message
step("mailparser", lambda: parse_message(b"Subject: x\\r\\n\\r\\nbody\\r\\n"))
print(loaded)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == str([
        ("pypdf", False, True), ("lxml", False, True), ("facturx", False, True),
        ("dkim", False, True), ("fpdf", False, True), ("mailparser", False, True),
    ])
