"""Shared fixtures: one real Dovecot and one SMTP relay per test session, fresh users per test.

Servers start once (about 0.05 s each) and live for the whole run; isolation comes from
giving every test its own mailbox users, never from restarting servers.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The repository root on sys.path, so every test imports helpers the same way:
# `from tests.mailservers import ...` (bench scripts do too, run from the root).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.mailservers import (  # noqa: E402
    SMTP_PASSWORD,
    SMTP_USERNAME,
    Dovecot,
    MailUser,
    MakeUser,
    SmtpServer,
)


@pytest.fixture(autouse=True)
def _thawed_heap() -> Iterator[None]:
    """A daemon started in this process freezes the heap (`relance.heap`), test garbage
    and all; give it back to the collector after each test, as a reload does."""
    yield
    gc.unfreeze()


def pytest_configure(config: pytest.Config) -> None:
    """Silence aiosmtpd's per-connection warning that AUTH without TLS is unsafe.

    tests/mailservers.py filters it too, but pytest resets filters around collection,
    where that module is first imported; an ini-style filter lasts the whole run.
    """
    config.addinivalue_line(
        "filterwarnings", "ignore:Requiring AUTH while not requiring TLS:UserWarning"
    )


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """The session's Dovecot: Sent is named "Sent"; users come from `mail_user`/`make_user`."""
    with Dovecot() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_localized() -> Iterator[Dovecot]:
    """A second Dovecot whose \\Sent folder is "Éléments envoyés", as on a French host."""
    with Dovecot(sent_name="Éléments envoyés") as server:
        yield server


@pytest.fixture(scope="session")
def smtp_server(dovecot: Dovecot) -> Iterator[SmtpServer]:
    """Submission server (AUTH as SMTP_USERNAME/SMTP_PASSWORD) delivering into `dovecot`.

    Shared by the session: look messages up with `received_by(address)` rather than
    counting `received`, which holds other tests' messages too.
    """
    with SmtpServer(dovecot, username=SMTP_USERNAME, password=SMTP_PASSWORD) as server:
        yield server


@pytest.fixture
def make_user(dovecot: Dovecot) -> MakeUser:
    """Create users on the session Dovecot: `make_user("firm")` -> firm<n>@example.test."""
    return dovecot.new_user


@pytest.fixture
def mail_user(make_user: MakeUser) -> MailUser:
    """A fresh, empty mailbox for this test alone."""
    return make_user("u")
