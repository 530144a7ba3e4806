"""The SMTP adapter: hands one message to the firm's server and says what became of it.

The outcome is one of three, because sending is at most once: "sent" (the server took it,
with its reply), "failed" (the server certainly did not take it: safe to retry if
transient), "unknown" (the link died after DATA began: it may have been taken, so the
caller must not resend blindly; see RFC 1047).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses

import aiosmtplib

from relance.config import ServerConfig

SENT, FAILED, UNKNOWN = "sent", "failed", "unknown"


@dataclass(frozen=True)
class SendOutcome:
    status: str  # SENT | FAILED | UNKNOWN
    reply: str  # the server's last words, e.g. "250 2.0.0 Ok: queued as 4F2A1"
    transient: bool = False  # for FAILED: a 4xx or a connection problem, worth retrying
    refused: dict[str, str] = field(default_factory=dict)  # recipient → server reply


def envelope_recipients(message: EmailMessage) -> list[str]:
    pairs = getaddresses(message.get_all("To", []) + message.get_all("Cc", []))
    return list(dict.fromkeys(addr for _, addr in pairs if "@" in addr))


def envelope_sender(message: EmailMessage) -> str:
    pairs = getaddresses(message.get_all("From", []))
    return pairs[0][1] if pairs else ""


def _client(server: ServerConfig) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        use_tls=server.security == "tls",
        start_tls=server.security == "starttls",
        tls_context=ssl.create_default_context() if server.security != "none" else None,
        timeout=server.timeout,
    )


async def send_async(
    server: ServerConfig, message: EmailMessage, recipients: Sequence[str] | None = None
) -> SendOutcome:
    rcpts = list(recipients) if recipients is not None else envelope_recipients(message)
    sender = envelope_sender(message)
    smtp = _client(server)
    try:
        await smtp.connect()
        if server.username:
            await smtp.login(server.username, server.secret())
        await smtp.mail(sender)
        refused: dict[str, str] = {}
        accepted = []
        for rcpt in rcpts:
            try:
                await smtp.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[rcpt] = f"{exc.code} {exc.message}"
        if not accepted:
            transient = all(reply.startswith("4") for reply in refused.values())
            await smtp.rset()
            return SendOutcome(FAILED, "every recipient refused", transient, refused)
    except aiosmtplib.SMTPResponseException as exc:
        return SendOutcome(FAILED, f"{exc.code} {exc.message}", 400 <= exc.code < 500)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return SendOutcome(FAILED, f"{type(exc).__name__}: {exc}", transient=True)
    # From here on the server may have the message: only a clear refusal is a failure.
    try:
        response = await smtp.data(message.as_bytes())
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code == 421:
            # "Closing the channel": said after the final dot, the message may be taken.
            return SendOutcome(UNKNOWN, f"{exc.code} {exc.message}", refused=refused)
        return SendOutcome(FAILED, f"{exc.code} {exc.message}", 400 <= exc.code < 500, refused)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return SendOutcome(UNKNOWN, f"{type(exc).__name__}: {exc}", refused=refused)
    finally:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()
    return SendOutcome(SENT, f"{response.code} {response.message}", refused=refused)


def send(
    server: ServerConfig, message: EmailMessage, recipients: Sequence[str] | None = None
) -> SendOutcome:
    """Send one message; never raises for a server or network problem."""
    return asyncio.run(send_async(server, message, recipients))


async def _probe(server: ServerConfig) -> str:
    smtp = _client(server)
    await smtp.connect()
    try:
        if server.username:
            await smtp.login(server.username, server.secret())
        return ", ".join(sorted(smtp.esmtp_extensions)) or "(none)"
    finally:
        await smtp.quit()


def probe(server: ServerConfig) -> str:
    """Connect and log in, as `relance check` does; the server's ESMTP extensions."""
    return asyncio.run(_probe(server))
