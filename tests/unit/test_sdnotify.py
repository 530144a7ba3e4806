"""The sd_notify protocol as systemd reads it: datagrams of KEY=VALUE lines on a unix socket."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relance.sdnotify import Notifier, Watchdog, watchdog_interval


class Listener:
    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        sock.settimeout(2.0)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        self.sock.setblocking(False)
        found = []
        try:
            while True:
                found.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return found
        finally:
            self.sock.settimeout(2.0)


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    # A short directory: a unix socket path is limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = directory / "notify"
    sock.bind(str(path))
    yield Listener(sock, str(path))
    sock.close()
    path.unlink(missing_ok=True)
    directory.rmdir()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"relance-sdn-{os.getpid()}-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    yield Listener(sock, "@" + name)
    sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready("starting") is False
    assert notifier.watchdog() is False


def test_ready_with_status_in_one_datagram(path_listener: Listener) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path_listener.name})
    assert notifier.ready("12 open cases, next send Tue 08:30")
    assert path_listener.receive() == "READY=1\nSTATUS=12 open cases, next send Tue 08:30"


def test_abstract_socket_named_with_at_sign(abstract_listener: Listener) -> None:
    notifier = Notifier(abstract_listener.name)
    assert notifier.watchdog()
    assert notifier.stopping()
    assert abstract_listener.receive() == "WATCHDOG=1"
    assert abstract_listener.receive() == "STOPPING=1"


def test_status_text_stays_on_its_line(path_listener: Listener) -> None:
    Notifier(path_listener.name).status("line one\nREADY=1")
    assert path_listener.receive() == "STATUS=line one READY=1"


def test_reloading_carries_the_monotonic_clock(path_listener: Listener) -> None:
    Notifier(path_listener.name).reloading()
    fields = dict(line.split("=", 1) for line in path_listener.receive().splitlines())
    assert fields["RELOADING"] == "1"
    assert int(fields["MONOTONIC_USEC"]) > 0


def test_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="relance"):
        assert notifier.status("one") is False
        assert notifier.status("two") is False
    assert [r.getMessage().split()[0] for r in caplog.records] == ["event=notify-failed"]


def test_unsupported_address_disables_notifications(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="relance"):
        notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert "event=notify-unsupported" in caplog.text


@pytest.mark.parametrize(("environ", "seconds"), [
    ({}, None),
    ({"WATCHDOG_USEC": "2000000"}, 2.0),
    ({"WATCHDOG_USEC": "180000000", "WATCHDOG_PID": "4242"}, 180.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_interval(environ: dict[str, str], seconds: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == seconds


def test_watchdog_pings_every_quarter_interval(path_listener: Listener) -> None:
    now = [100.0]
    watchdog = Watchdog(Notifier(path_listener.name), 2.0, clock=lambda: now[0])
    assert watchdog.tick == 0.25
    sent = []
    for at in (100.0, 100.2, 100.49, 100.5, 100.9, 101.0, 103.0):
        now[0] = at
        watchdog.kick()
        sent.append(len(path_listener.pending()))
    assert sent == [1, 0, 0, 1, 0, 1, 1]


def test_watchdog_off_without_interval_or_socket(path_listener: Listener) -> None:
    Watchdog(Notifier(path_listener.name), None).kick()
    off = Watchdog(Notifier(None), 2.0)
    off.kick()
    assert off.interval is None and off.tick == 1.0
    assert path_listener.pending() == []
