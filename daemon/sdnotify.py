"""The sd_notify protocol: tell systemd we are ready, what we are doing, that we are alive.

A few lines instead of a dependency: each message is one datagram of `KEY=VALUE` lines
sent to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a leading `@` names a socket in the
abstract namespace). Without `$NOTIFY_SOCKET` (run by hand, from cron, in most tests)
every call does nothing, so the daemon never needs to know whether systemd runs it.
A notification that cannot be delivered is logged once and never stops the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from relance.logs import quote

log = logging.getLogger("relance")

SEND_TIMEOUT_S = 2.0  # a full socket buffer must not hang the daemon


def _socket_address(value: str) -> str | bytes | None:
    """The address to `sendto`, or None for what this module does not speak (vsock)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: a leading NUL byte instead of the '@', no terminating NUL.
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends sd_notify messages to one socket; a no-op when `address` is None."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._target = None if self.address is None else _socket_address(self.address)
        self._sock: socket.socket | None = None
        self._warned = False
        if self.address is not None and self._target is None:
            log.warning("event=notify-unsupported socket=%s", quote(self.address))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through `$NOTIFY_SOCKET` (none: a no-op)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments in one datagram; True when it left."""
        if self._target is None:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto(payload, self._target)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("event=notify-failed socket=%s reason=%s", quote(self.address),
                            quote(f"{type(exc).__name__}: {exc}"))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup is finished: `systemctl start` returns, dependent units may start."""
        return self.send("READY=1", *(() if status is None else (f"STATUS={status}",)))

    def status(self, text: str) -> bool:
        """The one line `systemctl status` shows under the unit."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Still alive: resets the `WatchdogSec=` timer."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload has begun; `ready()` ends it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds of `WatchdogSec=` when systemd watches this process, else None.

    `WATCHDOG_PID`, when set, names the process the watchdog is meant for: a child that
    inherited the environment must not think it is watched.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    wanted_pid = env.get("WATCHDOG_PID", "").strip()
    if wanted_pid:
        try:
            if int(wanted_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Watchdog:
    """Keeps `WATCHDOG=1` coming while the loop makes progress.

    The loop calls `kick()` wherever it passes (each idle slice, each journal event,
    each backoff step); a ping leaves when a quarter of the interval has gone by. Idle
    slices last at most an eighth of the interval (`tick`), so while idle the gap between
    pings stays under half the interval, as sd_watchdog_enabled(3) advises. A loop that
    hangs stops kicking, and systemd restarts the service.
    """

    def __init__(
        self, notifier: Notifier, interval: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.interval = interval if notifier.enabled else None
        self._clock = clock
        self._last: float | None = None

    @property
    def tick(self) -> float:
        """How long one idle slice may last, so pings stay frequent enough."""
        if self.interval is None:
            return 1.0
        return max(0.05, min(1.0, self.interval / 8))

    def kick(self) -> None:
        if self.interval is None:
            return
        now = self._clock()
        if self._last is None or now - self._last >= self.interval / 4:
            self._last = now
            self.notifier.watchdog()
