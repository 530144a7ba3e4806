"""The demo's embedded mail servers behave like the firm's real provider, as the daemon uses it.

Each test gets its own servers (they start in milliseconds) and talks to them with the same
clients the daemon uses: imapclient over plain TCP and aiosmtplib with AUTH.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import aiosmtplib
import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, LoginError
from imapclient.imapclient import DRAFTS, SENT, TRASH

from relance.demo_servers import (
    SMTP_AUTH_REQUIRED,
    DemoAccount,
    DemoServers,
)

FIRM = DemoAccount("compta@atelier-dupont.test", "compta-secret")
OWNER = DemoAccount("marie@atelier-dupont.test", "marie-secret")
CLIENT = DemoAccount("factures@boulangerie-martin.test", "martin-secret")
ACCOUNTS = [FIRM, OWNER, CLIENT]

PARIS = timezone(timedelta(hours=1))

INVOICE = (
    b"From: Atelier Dupont <compta@atelier-dupont.test>\r\n"
    b"To: factures@boulangerie-martin.test\r\n"
    b"Subject: Facture F-2025-014\r\n"
    b"Date: Mon, 03 Mar 2025 09:12:00 +0100\r\n"
    b"Message-ID: <f-2025-014@atelier-dupont.test>\r\n"
    b"\r\n"
    b"Veuillez trouver ci-joint la facture F-2025-014 (1 250,00 EUR).\r\n"
)

IMAPConnect = Callable[[DemoAccount], IMAPClient]


@pytest.fixture
def servers() -> Iterator[DemoServers]:
    with DemoServers(ACCOUNTS) as running:
        yield running


@pytest.fixture
def connect(servers: DemoServers) -> Iterator[IMAPConnect]:
    """Log accounts in over IMAP; every connection is closed after the test."""
    clients: list[IMAPClient] = []

    def login(account: DemoAccount) -> IMAPClient:
        client = IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=10)
        clients.append(client)
        client.login(account.address, account.password)
        return client

    yield login
    for client in clients:
        try:
            client.logout()
        except Exception:
            client.shutdown()


def reply_from_client(to: str = FIRM.address) -> EmailMessage:
    message = EmailMessage()
    message["From"] = CLIENT.address
    message["To"] = to
    message["Subject"] = "Re: Facture F-2025-014"
    message["Message-ID"] = "<reply-1@boulangerie-martin.test>"
    message["In-Reply-To"] = "<f-2025-014@atelier-dupont.test>"
    message.set_content("Bonjour, le virement part demain. Cordialement.")
    return message


def submit(
    servers: DemoServers, message: EmailMessage, account: DemoAccount | None = CLIENT
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    """Send like the daemon does: aiosmtplib, plain TCP, AUTH when an account is given."""
    credentials = {}
    if account is not None:
        credentials = {"username": account.address, "password": account.password}
    return asyncio.run(
        aiosmtplib.send(
            message,
            hostname=servers.smtp_host,
            port=servers.smtp_port,
            use_tls=False,
            start_tls=False,
            timeout=10,
            **credentials,
        )
    )


def wait_for_exists(client: IMAPClient, timeout: float = 5.0) -> int | None:
    """The message count from the first EXISTS an IDLE session hears, or None at timeout.

    Updates may come in several reads (EXISTS, then RECENT, then FETCH), so keep reading.
    """
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for response in client.idle_check(timeout=left):
            if len(response) >= 2 and response[1] == b"EXISTS":
                return int(response[0])
    return None


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_firm_logs_in_over_plain_tcp(connect: IMAPConnect) -> None:
    client = connect(FIRM)
    assert client.has_capability("IDLE")
    assert client.has_capability("UIDPLUS")


def test_wrong_imap_password_is_refused(servers: DemoServers) -> None:
    client = IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=10)
    try:
        with pytest.raises(LoginError):
            client.login(FIRM.address, "not-the-password")
        with pytest.raises(LoginError):
            client.login("stranger@atelier-dupont.test", FIRM.password)
    finally:
        client.shutdown()


def test_list_marks_sent_drafts_and_trash_by_special_use(connect: IMAPConnect) -> None:
    client = connect(FIRM)
    attributes = {name: flags for flags, _, name in client.list_folders()}
    assert set(attributes) == {"INBOX", "Sent", "Drafts", "Trash"}
    assert SENT in attributes["Sent"]
    assert DRAFTS in attributes["Drafts"]
    assert TRASH in attributes["Trash"]
    assert client.find_special_folder(SENT) == "Sent"


def test_sent_is_found_by_attribute_whatever_its_localized_name() -> None:
    folders = {"Éléments envoyés": "\\Sent", "Brouillons": "\\Drafts", "Corbeille": "\\Trash"}
    with DemoServers([FIRM], special_folders=folders) as servers:
        client = IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=10)
        try:
            client.login(FIRM.address, FIRM.password)
            assert client.find_special_folder(SENT) == "Éléments envoyés"
            client.select_folder("Éléments envoyés")
        finally:
            client.logout()
        servers.append(FIRM.address, "Éléments envoyés", INVOICE)
        assert servers.messages(FIRM.address, "Éléments envoyés") == [INVOICE]


def test_seeded_invoice_is_searched_and_fetched_by_uid(
    servers: DemoServers, connect: IMAPConnect
) -> None:
    sent_at = datetime(2025, 3, 3, 9, 12, tzinfo=PARIS)
    servers.append(FIRM.address, "Sent", INVOICE, flags=["\\Seen"], when=sent_at)

    client = connect(FIRM)
    client.normalise_times = False
    client.select_folder("Sent", readonly=True)
    uids = client.search(["HEADER", "Message-ID", "<f-2025-014@atelier-dupont.test>"])
    assert len(uids) == 1
    fetched = client.fetch(
        uids,
        [
            "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT)]",
            "BODY.PEEK[]",
            "FLAGS",
            "INTERNALDATE",
        ],
    )[uids[0]]
    assert fetched[b"BODY[HEADER.FIELDS (MESSAGE-ID SUBJECT)]"] == (
        b"Subject: Facture F-2025-014\r\nMessage-ID: <f-2025-014@atelier-dupont.test>\r\n\r\n"
    )
    assert fetched[b"BODY[]"] == INVOICE
    assert b"\\Seen" in fetched[b"FLAGS"]
    assert fetched[b"INTERNALDATE"] == sent_at


def test_client_append_is_what_the_mailbox_holds(
    servers: DemoServers, connect: IMAPConnect
) -> None:
    client = connect(FIRM)
    response = client.append(
        "Sent",
        INVOICE,
        flags=[b"\\Seen"],
        msg_time=datetime(2025, 3, 3, 9, 12, tzinfo=PARIS),
    )
    assert b"APPENDUID" in response
    assert servers.messages(FIRM.address, "Sent") == [INVOICE]
    assert servers.messages(OWNER.address, "Sent") == []


def test_archive_folder_is_created_under_relance(connect: IMAPConnect) -> None:
    client = connect(FIRM)
    client.create_folder("Relance/Archive")
    names = [name for _, _, name in client.list_folders()]
    assert "Relance/Archive" in names
    client.select_folder("INBOX")
    client.append("INBOX", INVOICE)
    (uid,) = client.search(["ALL"])
    client.move([uid], "Relance/Archive")
    assert client.search(["ALL"]) == []
    assert client.folder_status("Relance/Archive", [b"MESSAGES"])[b"MESSAGES"] == 1


def test_smtp_with_auth_delivers_into_the_recipient_inbox(
    servers: DemoServers, connect: IMAPConnect
) -> None:
    refused, reply = submit(servers, reply_from_client())
    assert refused == {}
    assert reply.startswith("2.0.0 Ok: queued as ")

    (delivered,) = servers.messages(FIRM.address)
    assert delivered.startswith(b"Return-Path: <" + CLIENT.address.encode() + b">\r\n")
    assert b"Message-ID: <reply-1@boulangerie-martin.test>" in delivered
    assert servers.messages(OWNER.address) == []

    client = connect(FIRM)
    client.select_folder("INBOX", readonly=True)
    assert client.search(["HEADER", "In-Reply-To", "<f-2025-014@atelier-dupont.test>"])


def test_delivery_is_dated_by_the_demo_clock() -> None:
    simulated = datetime(2025, 4, 2, 9, 30, tzinfo=PARIS)
    with DemoServers(ACCOUNTS, clock=lambda: simulated) as servers:
        submit(servers, reply_from_client())
        client = IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=10)
        try:
            client.normalise_times = False
            client.login(FIRM.address, FIRM.password)
            client.select_folder("INBOX", readonly=True)
            (uid,) = client.search(["ALL"])
            internal_date = client.fetch([uid], ["INTERNALDATE"])[uid][b"INTERNALDATE"]
        finally:
            client.logout()
    assert internal_date == simulated


def test_unknown_recipient_is_refused_alone(servers: DemoServers) -> None:
    message = reply_from_client(to=f"{FIRM.address}, nobody@atelier-dupont.test")
    refused, _ = submit(servers, message)
    assert list(refused) == ["nobody@atelier-dupont.test"]
    assert refused["nobody@atelier-dupont.test"].code == 550
    assert len(servers.messages(FIRM.address)) == 1


def test_smtp_refuses_bad_password_and_no_auth(servers: DemoServers) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as bad_password:
        submit(servers, reply_from_client(), DemoAccount(CLIENT.address, "guess"))
    assert bad_password.value.code == 535
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as no_auth:
        submit(servers, reply_from_client(), account=None)
    assert f"{no_auth.value.code} {no_auth.value.message}" == SMTP_AUTH_REQUIRED
    assert servers.messages(FIRM.address) == []


def test_idle_notices_an_append_from_another_connection(connect: IMAPConnect) -> None:
    watcher = connect(FIRM)
    watcher.select_folder("INBOX")
    watcher.idle()
    try:
        connect(FIRM).append("INBOX", INVOICE)
        assert wait_for_exists(watcher) == 1
    finally:
        watcher.idle_done()


def test_idle_notices_an_smtp_delivery(servers: DemoServers, connect: IMAPConnect) -> None:
    watcher = connect(FIRM)
    watcher.select_folder("INBOX")
    watcher.idle()
    try:
        submit(servers, reply_from_client())
        assert wait_for_exists(watcher) == 1
    finally:
        watcher.idle_done()


def test_seeding_an_unknown_account_or_folder_is_an_error(servers: DemoServers) -> None:
    with pytest.raises(ValueError, match="no demo account"):
        servers.append("stranger@example.test", "INBOX", INVOICE)
    with pytest.raises(ValueError, match="no folder"):
        servers.messages(FIRM.address, "Envoyés")


def test_starts_fast_and_stop_leaves_nothing_running() -> None:
    threads_before = threading.active_count()
    started = time.perf_counter()
    servers = DemoServers(ACCOUNTS)
    servers.start()
    assert time.perf_counter() - started < 2.0

    client = IMAPClient(servers.imap_host, servers.imap_port, ssl=False, timeout=10)
    client.login(FIRM.address, FIRM.password)
    client.select_folder("INBOX")
    submit(servers, reply_from_client())

    stopping = time.perf_counter()
    servers.stop()
    assert time.perf_counter() - stopping < 2.0
    servers.stop()  # a second stop is harmless

    assert threading.active_count() == threads_before
    assert refuses_connections(servers.imap_port)
    assert refuses_connections(servers.smtp_port)
    with pytest.raises((IMAPClientAbortError, OSError)):
        client.noop()  # the open session was hung up, not left dangling
    client.shutdown()
    with pytest.raises(RuntimeError, match="not running"):
        servers.messages(FIRM.address)


def test_servers_can_be_started_again_after_stop() -> None:
    servers = DemoServers([FIRM])
    for _ in range(2):
        with servers:
            servers.append(FIRM.address, "INBOX", INVOICE, when=datetime.now(UTC))
            assert servers.messages(FIRM.address) == [INVOICE]
