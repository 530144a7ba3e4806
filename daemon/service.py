"""`relance run`: the long-running daemon around the pass.

Pass, IDLE until a change or the next due step, pass again; signals and reconnection
live here, the deciding lives in `app`.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

from relance.app import REIDLE_SECONDS, Clock, Daemon, Runtime, _logfmt
from relance.mailbox.imap import IMAP_ERRORS, Mailbox

log = logging.getLogger("relance")


def run_forever(
    daemon: Daemon, clock: Clock, reload: Callable[[], Runtime | None],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """`relance run`: pass, IDLE until a change or the next due step, pass again.

    SIGTERM ends it between two steps; SIGHUP reloads rules and templates (a broken edit
    is reported by `reload` and the old ones stay). A dead link reconnects with backoff.
    """
    flags = {"stop": False, "reload": False}

    def on_term(signum: int, frame: object) -> None:
        flags["stop"] = True

    def on_hup(signum: int, frame: object) -> None:
        flags["reload"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    backoff = 1.0
    with daemon.store.lock_daemon():
        log.info("event=started mode=%s", daemon.config.mode.value)
        while not flags["stop"]:
            try:
                with Mailbox(daemon.config.imap) as mailbox:
                    backoff = 1.0
                    while not flags["stop"]:
                        if flags["reload"]:
                            flags["reload"] = False
                            fresh = reload()
                            if fresh is not None:
                                daemon.rt = fresh
                                log.info("event=reloaded")
                        now = clock.now()
                        daemon.run_pass(mailbox, now)
                        wake = daemon.next_wake(now)
                        seconds = min((wake - now).total_seconds(), REIDLE_SECONDS)
                        outcome = mailbox.idle_until(
                            time.monotonic() + max(seconds, 1.0),
                            stop=lambda: flags["stop"] or flags["reload"],
                        )
                        if outcome == "dead":
                            log.warning("event=imap-silent action=reconnect")
                            break
            except IMAP_ERRORS as exc:
                log.warning("event=imap-error reason=%s retry_in=%.0fs",
                            _logfmt(f"{type(exc).__name__}: {exc}"), backoff)
                waited = 0.0
                while waited < backoff and not flags["stop"]:
                    sleep(0.5)
                    waited += 0.5
                backoff = min(backoff * 2, 300.0)
        log.info("event=stopped")
