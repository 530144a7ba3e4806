"""Real mail servers on loopback for integration tests and benchmarks.

`Dovecot` runs the real IMAP server (and its LMTP listener, so messages land in real
mailboxes); `SmtpServer` is an aiosmtpd submission server that requires AUTH, records what
it accepts and hands each message to Dovecot over LMTP. Both pick free ports on 127.0.0.1
and keep everything in a temp directory, so they never touch the machine's own mail setup.

Import as `from tests.mailservers import Dovecot, SmtpServer` with the repository root on
`sys.path` (tests/conftest.py arranges it under pytest; bench scripts run from the root
with `python -m bench.NAME`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import imapclient
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

LOOPBACK = "127.0.0.1"
TEST_DOMAIN = "example.test"
INSTALL_HINT = (
    "Dovecot is not installed (needs the Debian packages dovecot-imapd and dovecot-lmtpd). "
    "The test command `.ci/run` installs them; or run: "
    "apt-get update && apt-get install -y dovecot-imapd dovecot-lmtpd"
)
SMTP_USERNAME = f"relance@{TEST_DOMAIN}"
SMTP_PASSWORD = "smtp-secret"
ADDRESS_PATTERN = re.compile(r"[a-z0-9_+-][a-z0-9._+-]*@[a-z0-9-]+(\.[a-z0-9-]+)*")
START_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 10.0

# aiosmtpd warns on every connection that AUTH without TLS is unsafe; on loopback in tests
# that is the point, and the noise would bury real warnings.
warnings.filterwarnings(
    "ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning
)


class MailServerError(RuntimeError):
    """A test mail server could not be started or used; the message says why."""


@dataclass(frozen=True)
class MailUser:
    """A mailbox account on the test Dovecot: log in with `address` and `password`."""

    address: str
    password: str
    home: Path


MakeUser = Callable[[str], MailUser]
"""What the `make_user` fixture returns: prefix in, fresh unique user out."""


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now, all distinct.

    Held open together while choosing so the same port is not returned twice; another
    process may still grab one before the server binds it, which callers retry.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def find_dovecot() -> str:
    """Path of the dovecot binary; it lives in /usr/sbin, which a non-login PATH may lack."""
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise MailServerError(INSTALL_HINT)
    return found


def _die_with_parent() -> None:
    """Make the child get SIGTERM when its parent dies (Linux), so a killed pytest run
    leaves no Dovecot behind. Caveat: the kernel ties this to the *thread* that forked,
    so start servers from a thread that lives as long as they should."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _quote_conf(value: str) -> str:
    """A double-quoted Dovecot config string (mailbox names may hold spaces or accents)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Dovecot:
    """A real Dovecot (IMAP + LMTP) as root on 127.0.0.1, in its own temp directory.

    Why real: the daemon's behaviour depends on server details (SPECIAL-USE, IDLE
    batching, UIDPLUS replies) that an in-process fake would only imitate. Users can be
    added while it runs (`add_user`, `new_user`) and can log in at once.

    `sent_name` names the folder flagged \\Sent, so a test can meet a localized server
    ("Éléments envoyés") and prove the daemon finds Sent by its flag, not its name.
    Folder hierarchy separator is Dovecot's Maildir default, ".".
    """

    def __init__(self, *, sent_name: str = "Sent", domain: str = TEST_DOMAIN) -> None:
        self.sent_name = sent_name
        self.domain = domain
        self.host = LOOPBACK
        self.imap_port = 0
        self.lmtp_port = 0
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._users: dict[str, MailUser] = {}
        self._users_lock = threading.Lock()
        self._counter = itertools.count(1)
        account = pwd.getpwnam("dovecot") if _user_exists("dovecot") else None
        self._uid = account.pw_uid if account else -1
        self._gid = account.pw_gid if account else -1

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Start Dovecot and return once both IMAP and LMTP accept connections."""
        binary = find_dovecot()
        if os.geteuid() != 0:
            raise MailServerError("the test Dovecot runs as root (it switches to `dovecot`)")
        if self._uid < 0 or not _user_exists("dovenull"):
            raise MailServerError("system users dovecot/dovenull missing: " + INSTALL_HINT)
        self.directory = Path(tempfile.mkdtemp(prefix="relance-dovecot-"))
        try:
            # mkdtemp makes 0700; Dovecot's auth and mail processes run as `dovecot` and
            # must read the config and passwd-files, or logins fail with "Temporary
            # authentication failure". Homes are created by Dovecot, as `dovecot`.
            self.directory.chmod(0o755)
            home_root = self.directory / "home"
            home_root.mkdir()
            os.chown(home_root, self._uid, self._gid)
            self._users_dir.mkdir()
            for attempt in range(3):  # a port chosen free can be taken before Dovecot binds
                self.imap_port, self.lmtp_port = free_ports(2)
                self._config_path.write_text(self._config())
                try:
                    self._spawn(binary)
                    return self
                except MailServerError as error:
                    if attempt == 2 or "Address already in use" not in str(error):
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop Dovecot and delete its files (mailboxes included)."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def restart(self) -> None:
        """Stop and start again on the same ports, keeping users and mailboxes.

        Lets a test change files while the server is down (delete `dovecot-uidlist` and
        `dovecot.index*` in a Maildir to force a new UIDVALIDITY) or check a reconnect.
        """
        if self._process is None:
            raise MailServerError("restart() needs a running server")
        _terminate(self._process)
        self._process = None
        self._spawn(find_dovecot())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, binary: str) -> None:
        """Run `dovecot -F` and wait for its ports; on failure stop it and show its log."""
        assert self.directory is not None
        stderr = (self.directory / "dovecot.stderr").open("ab")
        with stderr:
            self._process = subprocess.Popen(
                [binary, "-F", "-c", str(self._config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # its own process group, so stop() reaches all
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if _imap_greets(self.host, self.imap_port) and _accepts(self.host, self.lmtp_port):
                return
            time.sleep(0.02)
        why = (
            f"exited with status {self._process.returncode}"
            if self._process.poll() is not None
            else f"not answering on ports {self.imap_port}/{self.lmtp_port}"
            f" after {START_TIMEOUT_S:.0f} s"
        )
        _terminate(self._process)
        self._process = None
        raise MailServerError(f"Dovecot {why}. Log tail:\n{self.log_tail()}")

    # -- users -----------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> MailUser:
        """Create a mailbox account now; its Maildir appears on first login or delivery."""
        address = address.lower()  # auth_username_format = %Lu lowercases logins
        # The address names the user's passwd-file; the password sits in a ':' line.
        if not ADDRESS_PATTERN.fullmatch(address):
            raise ValueError(f"test addresses are plain local@domain, not {address!r}")
        if not password or any(char in password for char in ":\n\r"):
            raise ValueError(f"not usable in a passwd-file: {password!r}")
        assert self.directory is not None, "start() the server first"
        home = self.directory / "home" / address
        user = MailUser(address=address, password=password, home=home)
        with self._users_lock:
            if address in self._users:
                raise ValueError(f"user exists: {address}")
            # One passwd-file per user: Dovecot stats a passwd-file at most once a second,
            # so a line appended to a shared file stays unknown for up to a second, while
            # a new file is read on its first lookup. Write-then-rename: never half-read.
            line = f"{address}:{{PLAIN}}{password}:{self._uid}:{self._gid}::{home}::\n"
            scratch = self._users_dir / f".{address}.new"
            scratch.write_text(line)
            scratch.chmod(0o644)
            scratch.replace(self._users_dir / address)
            self._users[address] = user
        return user

    def new_user(self, prefix: str = "u", password: str | None = None) -> MailUser:
        """A user with a name unique on this server (`<prefix><n>@<domain>`)."""
        address = f"{prefix}{next(self._counter)}@{self.domain}"
        return self.add_user(address, password or "pw-" + secrets.token_hex(6))

    def has_user(self, address: str) -> bool:
        """Whether `address` has a mailbox here (the SMTP server delivers only to these)."""
        with self._users_lock:
            return address.lower() in self._users

    # -- clients ---------------------------------------------------------------------

    def imap_client(
        self, user: MailUser, *, timeout: float = CLIENT_TIMEOUT_S
    ) -> imapclient.IMAPClient:
        """A logged-in IMAPClient; use it as a context manager so it logs out.

        Always with a timeout: without one a dead link blocks IDLE forever."""
        client = imapclient.IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
        try:
            client.login(user.address, user.password)
        except BaseException:
            client.shutdown()
            raise
        return client

    def deliver_lmtp(
        self, rcpt: str, raw: bytes, *, mail_from: str = f"sender@{TEST_DOMAIN}"
    ) -> None:
        """Put a message into `rcpt`'s INBOX the way a mail server would."""
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=CLIENT_TIMEOUT_S) as lmtp:
            # One recipient per transaction: smtplib reads a single reply after DATA,
            # while LMTP sends one per recipient.
            lmtp.sendmail(mail_from, [rcpt], raw)

    # -- diagnostics -----------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The end of Dovecot's log and stderr, for error messages."""
        if self.directory is None:
            return "(no log: server directory is gone)"
        parts = []
        for name in ("dovecot.stderr", "dovecot.log"):
            path = self.directory / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(parts) or "(Dovecot wrote no log)"

    @property
    def _config_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "dovecot.conf"

    @property
    def _users_dir(self) -> Path:
        assert self.directory is not None
        return self.directory / "users"

    def _config(self) -> str:
        assert self.directory is not None
        base = self.directory
        folders = [
            ("Drafts", r"\Drafts"),
            (self.sent_name, r"\Sent"),
            ("Trash", r"\Trash"),
            ("Junk", r"\Junk"),
        ]
        mailboxes = "".join(
            f"  mailbox {_quote_conf(name)} {{\n"
            f"    special_use = {flag}\n"
            f"    auto = subscribe\n"
            f"  }}\n"
            for name, flag in folders
        )
        return f"""\
# Written by tests/mailservers.py for one test run; deleted when the server stops.
protocols = imap lmtp
listen = {LOOPBACK}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
auth_verbose = yes
# Default 2 s after a failed login; tests of refused passwords need not wait.
auth_failure_delay = 0
default_login_user = dovenull
default_internal_user = dovecot
# Mail processes run as `dovecot` (uid ~100), below the default first_valid_uid of 500.
first_valid_uid = {self._uid}
first_valid_gid = {self._gid}
mail_location = maildir:~/Maildir

# A passwd-file per user (see add_user), found by the lowercased login.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {self._users_dir}/%Lu
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {self._users_dir}/%Lu
}}

service imap-login {{
  inet_listener imap {{
    address = {LOOPBACK}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# No growing delay after failed logins: all tests share 127.0.0.1, so one test's wrong
# password would otherwise slow every later login by 2-15 s (anvil's auth penalty).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {LOOPBACK}
    port = {self.lmtp_port}
  }}
}}

protocol imap {{
  mail_max_userip_connections = 50
  # Default 2 min; a few seconds lets tests see the "* OK Still here" heartbeat.
  imap_idle_notify_interval = 2 secs
}}

namespace inbox {{
  inbox = yes
{mailboxes}}}
"""


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop a Dovecot started in its own process group.

    SIGTERM to the whole group: every process exits at once (~2 ms), where signalling
    the master alone makes it wait about a second for its children.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _imap_greets(host: str, port: int) -> bool:
    """Whether the IMAP port answers with a greeting: proof the login process runs."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


# -- SMTP ------------------------------------------------------------------------------

Stage = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the SMTP server accepted, as the outside world would see it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    queue_id: str
    login: str


@dataclass
class _Failure:
    code: int
    message: str
    stage: Stage
    times: int
    deliver: bool

    def reply(self) -> str:
        return f"{self.code} {self.message}"


@dataclass
class _Handler:
    """aiosmtpd handler: optional scripted failures, then LMTP delivery and a record."""

    dovecot: Dovecot
    received: list[ReceivedMessage] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _take_failure(self, stage: Stage) -> _Failure | None:
        with self.lock:
            for failure in self.failures:
                if failure.stage == stage:
                    failure.times -= 1
                    if failure.times <= 0:
                        self.failures.remove(failure)
                    return failure
        return None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        failure = self._take_failure("MAIL")
        if failure is not None:
            return failure.reply()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        failure = self._take_failure("RCPT")
        if failure is not None:
            return failure.reply()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self._take_failure("DATA")
        if failure is not None and not failure.deliver:
            return failure.reply()
        raw = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        local = [rcpt for rcpt in envelope.rcpt_tos if self.dovecot.has_user(rcpt)]
        try:
            await asyncio.to_thread(self._deliver, mail_from, local, raw)
        except (OSError, smtplib.SMTPException) as error:
            return f"451 4.3.0 Local delivery failed: {error}"
        queue_id = secrets.token_hex(5).upper()
        login = session.auth_data.login.decode() if session.auth_data else ""
        with self.lock:
            self.received.append(
                ReceivedMessage(mail_from, tuple(envelope.rcpt_tos), raw, queue_id, login)
            )
        if failure is not None:  # delivered, yet the client is told it failed
            return failure.reply()
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _deliver(self, mail_from: str, rcpts: list[str], raw: bytes) -> None:
        for rcpt in rcpts:
            self.dovecot.deliver_lmtp(rcpt, raw, mail_from=mail_from)


class SmtpServer:
    """An authenticated SMTP submission server on loopback that delivers into Dovecot.

    Every recipient is accepted (like a provider's relay); those with a mailbox on the
    Dovecot get the message in their INBOX, and every accepted message is kept in
    `received` so tests can see what "left" for the outside world too.
    """

    def __init__(
        self, dovecot: Dovecot, *, username: str = SMTP_USERNAME, password: str = SMTP_PASSWORD
    ) -> None:
        self.dovecot = dovecot
        self.username = username
        self.password = password
        self.host = LOOPBACK
        self.port = 0
        self._handler = _Handler(dovecot)
        self._controller: Controller | None = None

    @property
    def received(self) -> list[ReceivedMessage]:
        """Accepted messages, oldest first (a copy: the server appends from its thread)."""
        with self._handler.lock:
            return list(self._handler.received)

    def received_by(self, address: str) -> list[ReceivedMessage]:
        """Accepted messages with `address` among the envelope recipients."""
        wanted = address.lower()
        return [m for m in self.received if wanted in (r.lower() for r in m.rcpt_tos)]

    def fail_next(
        self,
        code: int,
        message: str,
        *,
        stage: Stage = "DATA",
        times: int = 1,
        deliver: bool = False,
    ) -> None:
        """Answer `code message` at `stage` for the next `times` commands of that stage.

        `stage="RCPT"` with several recipients gives a partial acceptance;
        `deliver=True` (DATA only) delivers and records the message and still answers the
        error: the ambiguous outcome a sender must not resend blindly.
        """
        if deliver and stage != "DATA":
            raise ValueError("deliver=True only makes sense at DATA")
        with self._handler.lock:
            self._handler.failures.append(_Failure(code, message, stage, times, deliver))

    def start(self) -> Self:
        """Start listening; returns once the server answers."""
        last_error: OSError | None = None
        for _ in range(3):  # the free port may be taken before aiosmtpd binds it
            self.port = free_ports(1)[0]
            controller = Controller(
                self._handler,
                hostname=self.host,
                port=self.port,
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=False,  # loopback only; the product itself demands TLS
                ready_timeout=START_TIMEOUT_S,
            )
            try:
                controller.start()
            except OSError as error:
                last_error = error
                continue
            self._controller = controller
            return self
        raise MailServerError(f"SMTP test server could not bind: {last_error}")

    def stop(self) -> None:
        """Stop listening (messages already delivered stay in Dovecot)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@contextlib.contextmanager
def mail_servers(
    *, smtp_username: str = SMTP_USERNAME, smtp_password: str = SMTP_PASSWORD
) -> Iterator[tuple[Dovecot, SmtpServer]]:
    """Both servers together, for bench scripts that want a mailbox and an SMTP relay."""
    with (
        Dovecot() as dovecot,
        SmtpServer(dovecot, username=smtp_username, password=smtp_password) as smtp,
    ):
        yield dovecot, smtp
