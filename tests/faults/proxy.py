"""A small TCP proxy on loopback that misbehaves on command, between relance and a server.

relance is pointed at the proxy instead of Dovecot or the SMTP relay; the test then tells
the proxy what the network does next:

- `refuse()` / `accept()`: new connections are reset at once (a server that is down),
  or pass again.
- `stall()` / `unstall()`: every byte is held, in both directions (a link gone silent:
  no FIN, no RST, nothing).
- `delay(seconds)`: each chunk waits before it is forwarded (a slow link).
- `reset_all()`: every open connection is reset (RST) at once (a NAT or a server restart).
- `on_client(pattern, action, after=...)`: when the client sends `pattern` (searched
  across chunk boundaries, per connection; with `after`, only on a connection that sent
  `after` first), do `action` to that connection:
  `"stall"` holds everything from that chunk on (the chunk is not forwarded);
  `"stall_reply"` forwards the chunk, then holds everything the server answers;
  `"cut_reply"` forwards the chunk, resets the client at once, and lets the server finish
  (its reply is thrown away): the RFC 1047 window, where the server has the message and
  the client never hears so;
  a callable is called (in the proxy's thread, before the chunk is forwarded) and may
  do anything, such as deliver a mail or kill the client, while the client waits; if it
  returns False the chunk is dropped.
- `on_server(pattern, callable)`: the same for what the server sends (a reply the client
  has not seen yet).
  A trigger fires `times` times (default once), then is dropped.

Threads, not asyncio: each connection has two small pump threads; tests run a handful of
connections at a time. Everything is on 127.0.0.1 and closes with `close()`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

LOOPBACK = "127.0.0.1"
Action = Literal["stall", "stall_reply", "cut_reply"] | Callable[[], None]


@dataclass
class Trigger:
    pattern: bytes
    action: Action
    times: int = 1
    after: bytes | None = None
    from_client: bool = True
    fired: int = 0


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    held: bool = False  # forward nothing, either way
    hold_replies: bool = False  # forward nothing from the server
    discard_replies: bool = False  # server replies are read and thrown away
    tail: bytes = b""  # last bytes seen from the client, to match across chunks
    server_tail: bytes = b""
    seen: set[bytes] = field(default_factory=set)  # `after` patterns the client sent
    closed: threading.Event = field(default_factory=threading.Event)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), the way a dead peer or a firewall ends a connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """One listening port forwarding to (`host`, `port`), with faults on command."""

    def __init__(self, host: str, port: int, name: str = "proxy") -> None:
        self.target = (host, port)
        self.name = name
        self.host = LOOPBACK
        self.port = 0
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # accepted and reset while refusing
        self._listener: socket.socket | None = None
        self._conns: list[_Conn] = []
        self._triggers: list[Trigger] = []
        self._lock = threading.Lock()
        self._refusing = False
        self._stalled = False
        self._delay = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(64)
        listener.settimeout(0.1)  # so the accept loop sees close() at once
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        self.reset_all()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- commands ------------------------------------------------------------------------
    def refuse(self) -> None:
        """New connections are reset as soon as they are accepted."""
        self._refusing = True

    def accept(self) -> None:
        self._refusing = False

    def stall(self) -> None:
        """Hold every byte of every connection, open or new, until `unstall`."""
        self._stalled = True

    def unstall(self) -> None:
        self._stalled = False

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def reset_all(self) -> int:
        """Reset every open connection; how many there were."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            self._close(conn, rst=True)
        return len(conns)

    def on_client(self, pattern: bytes, action: Action, times: int = 1,
                  after: bytes | None = None) -> Trigger:
        trigger = Trigger(pattern, action, times, after)
        with self._lock:
            self._triggers.append(trigger)
        return trigger

    def on_server(self, pattern: bytes, action: Callable[[], object], times: int = 1,
                  after: bytes | None = None) -> Trigger:
        trigger = Trigger(pattern, action, times, after, from_client=False)
        with self._lock:
            self._triggers.append(trigger)
        return trigger

    def clear_triggers(self) -> None:
        with self._lock:
            self._triggers.clear()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(not c.closed.is_set() for c in self._conns)

    # -- the work ------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._refusing:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.append(conn)
                self.connections += 1
            for source, sink, from_client in ((client, upstream, True),
                                              (upstream, client, False)):
                threading.Thread(target=self._pump, args=(conn, source, sink, from_client),
                                 name=f"{self.name}-pump", daemon=True).start()

    def _pump(self, conn: _Conn, source: socket.socket, sink: socket.socket,
              from_client: bool) -> None:
        try:
            while not conn.closed.is_set():
                ready, _, _ = select.select([source], [], [], 0.1)
                if not ready:
                    continue
                data = source.recv(65536)
                if not data:
                    break
                if from_client:
                    data = self._client_chunk(conn, data)
                    if data is None:
                        continue
                elif conn.discard_replies:
                    self._close(conn, rst=False)
                    return
                else:
                    hit = self._match(conn, data, from_client=False)
                    if hit is not None and callable(hit.action) and hit.action() is False:
                        continue
                while (conn.held or self._stalled or (conn.hold_replies and not from_client)
                       ) and not conn.closed.is_set():
                    time.sleep(0.05)  # silence: the bytes wait here, nobody hears a thing
                if conn.closed.is_set():
                    return
                if self._delay:
                    time.sleep(self._delay)
                sink.sendall(data)
        except (OSError, ValueError):  # ValueError: select on a socket reset meanwhile
            pass
        if from_client and conn.discard_replies:
            return  # the server still finishes; its pump closes when the reply comes
        self._close(conn, rst=False)

    def _match(self, conn: _Conn, data: bytes, *, from_client: bool) -> Trigger | None:
        """The first trigger this chunk fires (and count it), or None."""
        if from_client:
            window = conn.tail + data
            conn.tail = window[-256:]
        else:
            window = conn.server_tail + data
            conn.server_tail = window[-256:]
        with self._lock:
            for trigger in self._triggers:
                if from_client and trigger.after is not None and trigger.after in window:
                    conn.seen.add(trigger.after)
            hit = next((t for t in self._triggers
                        if t.from_client == from_client and t.pattern in window
                        and (t.after is None or t.after in conn.seen)), None)
            if hit is not None:
                hit.fired += 1
                if hit.fired >= hit.times:
                    self._triggers.remove(hit)
        return hit

    def _client_chunk(self, conn: _Conn, data: bytes) -> bytes | None:
        """Apply the triggers to a chunk from the client; None when it must not go on."""
        hit = self._match(conn, data, from_client=True)
        if hit is None:
            return data
        action = hit.action
        if callable(action):
            return None if action() is False else data
        if action == "stall":
            conn.held = True
            return data  # held in _pump until the connection ends
        conn.upstream.sendall(data)
        if action == "stall_reply":
            conn.hold_replies = True
        elif action == "cut_reply":
            conn.discard_replies = True
            _reset(conn.client)  # the client hears nothing more, ever
        return None

    def _close(self, conn: _Conn, *, rst: bool) -> None:
        if conn.closed.is_set():
            return
        conn.closed.set()
        for sock in (conn.client, conn.upstream):
            if rst:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
