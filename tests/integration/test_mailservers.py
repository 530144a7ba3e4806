"""The test mail servers behave like the real ones the daemon will meet.

If these fail, every integration test would fail for reasons unrelated to relance, so they
pin down the fixtures first: folders and their SPECIAL-USE flags, APPEND/FETCH, LMTP and
SMTP delivery, AUTH, scripted SMTP failures, IDLE notices and heartbeats.
"""

from __future__ import annotations

import asyncio
import re
import time
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
import imapclient
import pytest
from imapclient.exceptions import LoginError

from tests.mailservers import (
    SMTP_PASSWORD,
    SMTP_USERNAME,
    Dovecot,
    MailUser,
    MakeUser,
    SmtpServer,
)

pytestmark = pytest.mark.dovecot


def make_message(sender: str, to: str, subject: str = "Facture F-2024-001") -> EmailMessage:
    """A small message with its own Message-ID, so a test can find exactly it again."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="example.test")
    message.set_content("Bonjour,\nveuillez trouver ci-joint la facture.\n")
    return message


def uids_with_message_id(client: imapclient.IMAPClient, folder: str, message_id: str) -> list[int]:
    client.select_folder(folder, readonly=True)
    return list(client.search(["HEADER", "Message-ID", message_id]))


def folders_by_flag(client: imapclient.IMAPClient) -> dict[bytes, str]:
    """SPECIAL-USE flag -> folder name, from LIST."""
    found: dict[bytes, str] = {}
    for flags, _delimiter, name in client.list_folders():
        for flag in flags:
            found[flag] = name
    return found


def send(smtp: SmtpServer, message: EmailMessage, *, password: str = SMTP_PASSWORD) -> str:
    """Submit through the test SMTP server as the daemon would; returns the final reply."""
    _refused, reply = asyncio.run(
        aiosmtplib.send(
            message,
            hostname=smtp.host,
            port=smtp.port,
            username=SMTP_USERNAME,
            password=password,
            start_tls=False,
            timeout=10,
        )
    )
    return reply


def test_login_lists_folders_with_special_use(dovecot: Dovecot, mail_user: MailUser) -> None:
    with dovecot.imap_client(mail_user) as client:
        assert b"SPECIAL-USE" in client.capabilities()
        flags = folders_by_flag(client)
        subscribed = {name for _flags, _delimiter, name in client.list_sub_folders()}
    assert flags[rb"\Sent"] == "Sent"
    assert flags[rb"\Drafts"] == "Drafts"
    assert flags[rb"\Trash"] == "Trash"
    assert flags[rb"\Junk"] == "Junk"
    assert {"Sent", "Drafts", "Trash", "Junk"} <= subscribed


def test_append_then_fetch_returns_same_bytes(dovecot: Dovecot, mail_user: MailUser) -> None:
    raw = make_message(mail_user.address, "client@example.test").as_bytes(policy=policy.SMTP)
    with dovecot.imap_client(mail_user) as client:
        reply = client.append("Sent", raw, flags=[imapclient.SEEN])
        match = re.search(rb"\[APPENDUID (\d+) (\d+)\]", reply)
        assert match, reply
        uid = int(match.group(2))
        client.select_folder("Sent", readonly=True)
        fetched = client.fetch([uid], ["BODY.PEEK[]", "FLAGS"])[uid]
    assert fetched[b"BODY[]"] == raw
    assert imapclient.SEEN in fetched[b"FLAGS"]


def test_lmtp_delivery_lands_in_inbox(dovecot: Dovecot, mail_user: MailUser) -> None:
    message = make_message("client@example.test", mail_user.address)
    dovecot.deliver_lmtp(mail_user.address, message.as_bytes())
    with dovecot.imap_client(mail_user) as client:
        assert len(uids_with_message_id(client, "INBOX", message["Message-ID"])) == 1


def test_wrong_imap_password_is_refused(dovecot: Dovecot, mail_user: MailUser) -> None:
    wrong = MailUser(mail_user.address, "not-the-password", mail_user.home)
    with pytest.raises(LoginError):
        dovecot.imap_client(wrong)


def test_mail_sent_through_smtp_reaches_recipient_inbox(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser
) -> None:
    firm, client = make_user("firm"), make_user("client")
    message = make_message(firm.address, client.address)

    reply = send(smtp_server, message)

    assert re.fullmatch(r"2\.0\.0 Ok: queued as [0-9A-F]+", reply), reply
    [received] = smtp_server.received_by(client.address)
    assert received.login == SMTP_USERNAME
    assert received.queue_id in reply
    with dovecot.imap_client(client) as imap:
        assert len(uids_with_message_id(imap, "INBOX", message["Message-ID"])) == 1


def test_wrong_smtp_password_is_refused(smtp_server: SmtpServer, make_user: MakeUser) -> None:
    client = make_user("client")
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        send(smtp_server, make_message("firm@example.test", client.address), password="wrong")
    assert refused.value.code == 535
    assert smtp_server.received_by(client.address) == []


def test_smtp_without_auth_is_refused(smtp_server: SmtpServer) -> None:
    async def send_anonymously() -> None:
        async with aiosmtplib.SMTP(
            hostname=smtp_server.host, port=smtp_server.port, start_tls=False, timeout=10
        ) as smtp:
            await smtp.sendmail("firm@example.test", ["x@example.test"], b"Subject: x\r\n\r\nx")

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        asyncio.run(send_anonymously())
    assert refused.value.code == 530


def test_fail_next_answers_the_scripted_error_once(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser
) -> None:
    client = make_user("client")
    smtp_server.fail_next(451, "4.3.0 Try again later")

    with pytest.raises(aiosmtplib.SMTPDataError) as failed:
        send(smtp_server, make_message("firm@example.test", client.address))
    assert failed.value.code == 451
    assert smtp_server.received_by(client.address) == []

    send(smtp_server, make_message("firm@example.test", client.address))
    assert len(smtp_server.received_by(client.address)) == 1


def test_fail_next_can_deliver_yet_report_failure(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser
) -> None:
    """The ambiguous outcome: the sender sees an error, the message did arrive."""
    client = make_user("client")
    message = make_message("firm@example.test", client.address)
    smtp_server.fail_next(421, "4.4.2 Connection timed out", deliver=True)

    with pytest.raises(aiosmtplib.SMTPResponseException):
        send(smtp_server, message)

    with dovecot.imap_client(client) as imap:
        assert len(uids_with_message_id(imap, "INBOX", message["Message-ID"])) == 1


def test_fail_next_at_rcpt_gives_partial_acceptance(
    smtp_server: SmtpServer, make_user: MakeUser
) -> None:
    first, second = make_user("client"), make_user("client")
    message = make_message("firm@example.test", f"{first.address}, {second.address}")
    smtp_server.fail_next(550, "5.1.1 No such user", stage="RCPT")

    refused, _reply = asyncio.run(
        aiosmtplib.send(
            message,
            hostname=smtp_server.host,
            port=smtp_server.port,
            username=SMTP_USERNAME,
            password=SMTP_PASSWORD,
            start_tls=False,
            timeout=10,
        )
    )

    assert list(refused) == [first.address]  # aiosmtplib lists only the refused ones
    assert refused[first.address].code == 550
    assert smtp_server.received_by(first.address) == []
    assert len(smtp_server.received_by(second.address)) == 1


def test_idle_sees_append_from_another_connection(dovecot: Dovecot, mail_user: MailUser) -> None:
    raw = make_message("client@example.test", mail_user.address).as_bytes()
    with dovecot.imap_client(mail_user) as watcher, dovecot.imap_client(mail_user) as writer:
        watcher.select_folder("INBOX")
        watcher.idle()
        try:
            started = time.monotonic()
            writer.append("INBOX", raw)
            responses: list[tuple[int | bytes, bytes]] = []
            while not any(r[1] == b"EXISTS" for r in responses):
                assert time.monotonic() - started < 3, responses
                responses += watcher.idle_check(timeout=0.5)
            assert time.monotonic() - started < 2
        finally:
            watcher.idle_done()


def test_idle_heartbeat_arrives_within_seconds(dovecot: Dovecot, mail_user: MailUser) -> None:
    """imap_idle_notify_interval is a few seconds, so tests can watch for a dead link."""
    with dovecot.imap_client(mail_user) as client:
        client.select_folder("INBOX")
        client.idle()
        try:
            responses = client.idle_check(timeout=4)
        finally:
            client.idle_done()
    assert (b"OK", b"Still here") in responses


def test_localized_sent_folder_has_sent_flag(dovecot_localized: Dovecot) -> None:
    firm = dovecot_localized.new_user("firm")
    with dovecot_localized.imap_client(firm) as client:
        flags = folders_by_flag(client)
        names = {name for _flags, _delimiter, name in client.list_folders()}
        client.append(flags[rb"\Sent"], make_message(firm.address, "c@example.test").as_bytes())
        assert client.folder_status(flags[rb"\Sent"], [b"MESSAGES"])[b"MESSAGES"] == 1
    assert flags[rb"\Sent"] == "Éléments envoyés"
    assert "Sent" not in names


def test_restart_keeps_mailboxes_and_users() -> None:
    with Dovecot() as server:
        user = server.new_user("firm")
        message = make_message("client@example.test", user.address)
        server.deliver_lmtp(user.address, message.as_bytes())
        server.restart()
        with server.imap_client(user) as client:
            assert len(uids_with_message_id(client, "INBOX", message["Message-ID"])) == 1
