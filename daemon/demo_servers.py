"""Embedded IMAP and SMTP servers on loopback, for `relance demo` and integration tests.

`relance demo` promises to need no config and to leave nothing running, so the servers live
in this process: one background thread runs one asyncio loop that hosts both pymap (IMAP,
in-memory ``dict`` backend) and aiosmtpd (SMTP submission with AUTH). One loop means pymap's
asyncio locks and IDLE wake-ups are only ever touched from their own loop, and one thread is
all there is to stop. Both listen on 127.0.0.1 ports chosen by the kernel (port 0), so two
demos or a demo and a test run never collide.

pymap is used as a library rather than through its CLI because the CLI only knows one demo
user; here each account gets its own password and mailbox, created before the first login.
pymap has no SPECIAL-USE support of its own, so the mailbox set below adds the RFC 6154
attributes (``\\Sent``, ``\\Drafts``, ``\\Trash``) to plain LIST replies, which is what
imapclient's ``find_special_folder`` reads. The SPECIAL-USE capability is not advertised:
pymap cannot parse the LIST-EXTENDED forms a client would then be entitled to use.

Mail submitted over SMTP is put straight into each recipient's INBOX through pymap's backend,
the same call pymap's own APPEND command ends in, so IMAP IDLE sessions see it at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
import weakref
from argparse import Namespace
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.sock import SocketInfo
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Identity, Login
from pymap.backend.dict.filter import FilterSet
from pymap.backend.dict.mailbox import MailboxData, MailboxSet
from pymap.concurrent import Subsystem
from pymap.imap import IMAPServer
from pymap.listtree import ListEntry, ListTree
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials import FetchRequirement
from pymap.parsing.specials.flag import Flag, Recent
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import Cleartext

__all__ = [
    "DEFAULT_SPECIAL_FOLDERS",
    "SMTP_AUTH_REQUIRED",
    "SMTP_QUEUED",
    "SMTP_UNKNOWN_RECIPIENT",
    "DemoAccount",
    "DemoServers",
]

LOOPBACK = "127.0.0.1"

#: Folders every demo mailbox has besides INBOX, with their RFC 6154 special-use attribute.
#: Keys are the folder names; a caller may pass localized names ("Envoyés") to show that the
#: daemon finds Sent by its attribute, not its name.
DEFAULT_SPECIAL_FOLDERS: Mapping[str, str] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
}

#: SMTP replies, shared with the tests so both sides spell them the same way.
SMTP_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
SMTP_UNKNOWN_RECIPIENT = "550 5.1.1 <{address}>: Recipient address rejected: User unknown"
SMTP_AUTH_REQUIRED = "530 5.7.0 Authentication required"

# How long a caller waits on the servers' loop before deciding something is stuck.
_CALL_TIMEOUT = 10.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class DemoAccount:
    """A mailbox on the demo servers: the IMAP login, the SMTP AUTH user and a recipient."""

    address: str
    password: str


class _QuietLoginDataWarning(logging.Filter):
    """Drop aiosmtpd's "Session.login_data is deprecated" line.

    aiosmtpd 1.4 logs it at WARNING from its own AUTH code on every successful login, not
    because of anything a caller did; in the demo it would interleave with the narration.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_AIOSMTPD_LOGGER = logging.getLogger("mail.log")


def _local_now() -> datetime:
    """The real clock with the local offset, the default for delivery timestamps."""
    return datetime.now().astimezone()


# --- IMAP: pymap with SPECIAL-USE attributes --------------------------------------------


@dataclass(frozen=True)
class _SpecialUseEntry(ListEntry):
    """A LIST entry that also carries its RFC 6154 attribute, since pymap's has none."""

    special_use: bytes | None = None

    @property
    def attributes(self) -> Sequence[bytes]:
        """pymap's attributes (without the backslash, pymap adds it) plus the special use."""
        base = list(super().attributes)
        if self.special_use is not None:
            base.append(self.special_use)
        return base


class _SpecialUseTree(ListTree):
    """A ListTree whose entries name their special use; everything else is pymap's."""

    __slots__ = ["_special_use"]

    def __init__(self, delimiter: str, special_use: Mapping[str, bytes]) -> None:
        super().__init__(delimiter)
        self._special_use = special_use

    def list(self) -> Iterable[ListEntry]:
        """Decorate pymap's entries; LIST and LSUB both go through here."""
        for entry in super().list():
            yield _SpecialUseEntry(
                entry.name,
                entry.exists,
                entry.marked,
                entry.has_children,
                special_use=self._special_use.get(entry.name),
            )


class _DemoMailboxSet(MailboxSet):
    """pymap's in-memory mailbox set, reporting special-use attributes in LIST replies."""

    def __init__(self, special_use: Mapping[str, bytes]) -> None:
        super().__init__()
        self._special_use = special_use

    async def list_mailboxes(self) -> ListTree:
        """Rebuild pymap's tree as a special-use tree (pymap offers no hook to pass one in)."""
        return self._decorate(await super().list_mailboxes())

    async def list_subscribed(self) -> ListTree:
        """Same as LIST, so a client using LSUB also sees which folder is Sent."""
        return self._decorate(await super().list_subscribed())

    def _decorate(self, tree: ListTree) -> ListTree:
        names = [entry.name for entry in tree.list() if entry.exists]
        return _SpecialUseTree(self.delimiter, self._special_use).update(*names)


class _DemoConfig(DictConfig):
    """pymap's dict-backend config, with a greeting that needs no DNS lookup."""

    @property
    def greeting(self) -> bytes:
        """pymap's default calls socket.getfqdn(), which can stall on a box without DNS."""
        return b"relance demo IMAP ready"


class _WholeResponseWriter:
    """Holds pymap's many small writes until drain(), so each response leaves in one send.

    pymap writes a FETCH response piece by piece; on the wire a line can then arrive in
    two segments, and imapclient's idle_check (non-blocking readline) takes the first
    half for a whole line and breaks the session (imapclient issue #519). Real servers
    mostly send whole lines, so the demo does too; the daemon must still survive it.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def _flush(self) -> None:
        if self._pending and not self._writer.is_closing():
            self._writer.write(bytes(self._pending))
        self._pending.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class _DemoIMAPServer(IMAPServer):
    """pymap's connection handler, writing through _WholeResponseWriter."""

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock_info: SocketInfo
    ) -> None:
        whole = cast(asyncio.StreamWriter, _WholeResponseWriter(writer))
        await super().__call__(reader, whole, sock_info)


def _imap_config() -> _DemoConfig:
    """A pymap config for plain-text loopback: no TLS, cleartext passwords, no worker threads.

    Why each setting: TLS would need a certificate and the demo talks to 127.0.0.1 only;
    cleartext hashing makes startup instant (pymap would otherwise hash with pbkdf2 in a
    thread pool); the asyncio CPU subsystem keeps pymap from starting threads we would
    have to stop; no DNSBL check and no delay after a bad password keep tests fast.
    """
    args = Namespace(passlib_cfg=None, proxy_protocol=None, inherited_sockets=None)
    return _DemoConfig(
        args,
        host=LOOPBACK,
        port=0,
        demo_data=False,
        demo_user="",
        demo_password="",
        tls_enabled=False,
        hash_context=Cleartext(),
        cpu_subsystem=Subsystem.for_asyncio(),
        invalid_user_sleep=0.0,
        reject_dnsbl=False,
    )


# --- SMTP: aiosmtpd submission that delivers into pymap --------------------------------


class _SubmissionHandler:
    """aiosmtpd handler: authenticated submission, local delivery, per-recipient refusal."""

    def __init__(self, servers: DemoServers) -> None:
        self._servers = servers

    def authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        """Accept the demo accounts' own address and password, as a real provider would."""
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if self._servers.check_password(login, password):
                return AuthResult(success=True, auth_data=auth_data)
        # handled=False makes aiosmtpd answer its standard "535 5.7.8".
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(  # aiosmtpd finds hooks by this exact name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Refuse unauthenticated mail ourselves, instead of aiosmtpd's auth_required.

        aiosmtpd warns loudly when auth_required is set without TLS; on loopback that
        warning is noise in the demo's narration, so the check lives here.
        """
        if not session.authenticated:
            return SMTP_AUTH_REQUIRED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Refuse only the unknown recipient, so the rest of the message still goes out."""
        if self._servers.login_name(address) is None:
            return SMTP_UNKNOWN_RECIPIENT.format(address=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Deliver to every accepted recipient, then answer like Postfix with a queue id."""
        queue_id = uuid.uuid4().hex[:10].upper()
        content = envelope.original_content or b""
        when = self._servers.now()
        for recipient in envelope.rcpt_tos:
            trace = _trace_headers(
                mail_from=envelope.mail_from or "",
                recipient=recipient,
                helo=session.host_name or "unknown",
                queue_id=queue_id,
                when=when,
            )
            await self._servers.deliver(recipient, trace + content, when)
        return SMTP_QUEUED.format(queue_id=queue_id)


def _trace_headers(
    *, mail_from: str, recipient: str, helo: str, queue_id: str, when: datetime
) -> bytes:
    """The Return-Path and Received lines a real delivery adds (bounce handling reads them)."""
    lines = [
        f"Return-Path: <{mail_from}>",
        f"Received: from {helo} (localhost [{LOOPBACK}])",
        f"\tby localhost (relance demo) with ESMTPSA id {queue_id}",
        f"\tfor <{recipient}>; {format_datetime(when)}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


# --- The servers together ----------------------------------------------------------------


class DemoServers:
    """An IMAP and an SMTP server on loopback with one mailbox per account.

    Use as a context manager, or call start() and stop(). After stop() the ports refuse
    connections and no thread of ours is left.
    """

    imap_host: str
    imap_port: int
    smtp_host: str
    smtp_port: int

    def __init__(
        self,
        accounts: Sequence[DemoAccount],
        *,
        special_folders: Mapping[str, str] = DEFAULT_SPECIAL_FOLDERS,
        clock: Callable[[], datetime] = _local_now,
    ) -> None:
        """Remember the accounts; nothing listens until start().

        ``clock`` dates SMTP deliveries (INTERNALDATE and the Received line), so a demo
        running on a simulated calendar gets replies that arrived "then", not today.
        """
        self._accounts: dict[str, DemoAccount] = {}
        for account in accounts:
            key = account.address.lower()
            if key in self._accounts:
                raise ValueError(f"demo account listed twice: {account.address}")
            self._accounts[key] = account
        self._special_use = {
            name: attribute.lstrip("\\").encode("ascii")
            for name, attribute in special_folders.items()
        }
        self._clock = clock
        self.imap_host = self.smtp_host = LOOPBACK
        self.imap_port = self.smtp_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._smtp_protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._mailbox_sets: dict[str, _DemoMailboxSet] = {}
        self._log_filter = _QuietLoginDataWarning()

    # -- lifecycle

    def start(self) -> None:
        """Start the loop thread and both servers; return once both ports accept connections."""
        if self._thread is not None:
            raise RuntimeError("demo servers already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="relance-demo-servers", daemon=True
        )
        self._loop, self._thread = loop, thread
        _AIOSMTPD_LOGGER.addFilter(self._log_filter)
        thread.start()
        try:
            self._call(self._open())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close both servers and every open connection, then end the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                self._call(self._close())
        finally:
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_CALL_TIMEOUT)
            self._loop = self._thread = None
            self._mailbox_sets.clear()
            _AIOSMTPD_LOGGER.removeFilter(self._log_filter)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- seeding and inspecting mailboxes (from any thread but the servers' own)

    def append(
        self,
        address: str,
        folder: str,
        raw: bytes,
        flags: Sequence[str] = (),
        when: datetime | None = None,
    ) -> None:
        """Put a message into a mailbox, as a mail client's APPEND would.

        ``when`` is the INTERNALDATE (naive means local time; default: the clock).
        ``\\Recent`` in ``flags`` marks the message recent instead of storing a flag.
        """
        flag_set = {Flag(flag.encode("utf-8")) for flag in flags}
        recent = Recent in flag_set
        flag_set.discard(Recent)
        moment = (when or self._clock()).astimezone()
        self._call(self._append(address, folder, raw, frozenset(flag_set), moment, recent))

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """The raw messages a mailbox holds now, in UID order, for tests and narration."""
        return self._call(self._messages(address, folder))

    # -- used by the SMTP handler, on the servers' loop

    def login_name(self, address: str) -> str | None:
        """The IMAP login for an address (case-insensitive, as mail addresses are in practice)."""
        account = self._accounts.get(address.strip().lower())
        return account.address if account else None

    def check_password(self, login: str, password: str) -> bool:
        """True when the login is a demo account and the password is its own."""
        account = self._accounts.get(login.strip().lower())
        return account is not None and account.password == password

    def now(self) -> datetime:
        """The delivery clock, aware of its offset."""
        return self._clock().astimezone()

    async def deliver(self, address: str, raw: bytes, when: datetime) -> None:
        """File an SMTP delivery in the recipient's INBOX, marked recent like new mail."""
        await self._append(address, "INBOX", raw, frozenset(), when, recent=True)

    # -- internals

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread body: run until stop(), then finish every task so nothing outlives us."""
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the servers' loop and wait for it, from a caller's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            coro.close()
            raise RuntimeError("demo servers are not running; call start() first")
        if threading.current_thread() is thread:
            coro.close()
            raise RuntimeError("call DemoServers from another thread than its own loop")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(_CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _open(self) -> None:
        """Create the users and their folders, then listen; ports are known only after."""
        config = _imap_config()
        config.apply_context()
        login = Login(config)
        passwords = Passwords(config)
        for account in self._accounts.values():
            hashed = await passwords.hash_password(account.password)
            identity = Identity(account.address, login, None, frozenset())
            await identity.set(UserMetadata(config, account.address, password=hashed))
            mailbox_set = _DemoMailboxSet(self._special_use)
            for folder in self._special_use:
                await mailbox_set.add_mailbox(folder)
                # Mail clients and providers subscribe the default folders; so do we.
                await mailbox_set.set_subscribed(folder, True)
            # pymap looks the session's mailboxes up here before making empty ones.
            config.set_cache[account.address] = (mailbox_set, FilterSet())
            self._mailbox_sets[account.address] = mailbox_set

        imap_callback = ProxyProtocolReader(config.proxy_protocol).get_callback(
            _DemoIMAPServer(login, config)
        )
        imap_server = await asyncio.start_server(imap_callback, LOOPBACK, 0)
        self._servers.append(imap_server)
        self.imap_port = imap_server.sockets[0].getsockname()[1]

        handler = _SubmissionHandler(self)
        loop = asyncio.get_running_loop()
        smtp_server = await loop.create_server(lambda: self._new_smtp(handler, loop), LOOPBACK, 0)
        self._servers.append(smtp_server)
        self.smtp_port = smtp_server.sockets[0].getsockname()[1]

    def _new_smtp(self, handler: _SubmissionHandler, loop: asyncio.AbstractEventLoop) -> SMTP:
        """One aiosmtpd protocol per connection, remembered so stop() can hang it up."""
        protocol = SMTP(
            handler,
            hostname="localhost",
            ident="relance demo ESMTP",
            authenticator=handler.authenticate,
            auth_require_tls=False,
            enable_SMTPUTF8=True,
            loop=loop,
        )
        self._smtp_protocols.add(protocol)
        return protocol

    async def _close(self) -> None:
        """Stop listening, then hang up on clients: IMAP tasks are cancelled by _run_loop."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for protocol in list(self._smtp_protocols):
            if protocol.transport is not None:
                protocol.transport.close()

    def _mailbox_set(self, address: str) -> _DemoMailboxSet:
        name = self.login_name(address)
        if name is None:
            raise ValueError(f"no demo account for {address!r}")
        return self._mailbox_sets[name]

    async def _mailbox(self, address: str, folder: str) -> MailboxData:
        try:
            return await self._mailbox_set(address).get_mailbox(folder)
        except KeyError:
            raise ValueError(f"{address} has no folder {folder!r}") from None

    async def _append(
        self,
        address: str,
        folder: str,
        raw: bytes,
        flag_set: frozenset[Flag],
        when: datetime,
        recent: bool,
    ) -> None:
        mailbox = await self._mailbox(address, folder)
        await mailbox.append(AppendMessage(raw, when, flag_set), recent=recent)

    async def _messages(self, address: str, folder: str) -> list[bytes]:
        mailbox = await self._mailbox(address, folder)
        found = [message async for message in mailbox.messages()]
        found.sort(key=lambda message: message.uid)
        loaded = [await message.load_content(FetchRequirement.CONTENT) for message in found]
        return [bytes(message) for message in loaded]
