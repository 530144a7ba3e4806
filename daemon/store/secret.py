"""The state directory's secret: signs the Message-IDs of notices to the owner.

A reply to a notice carries the notice's Message-ID; only someone who received the
notice can know it, so it proves a command comes from the owner (a forged `From:` does
not). Made once, kept with the state, readable by the daemon's user only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from relance.store.state import StateCorrupt

SECRET_FILE = "notice.key"


def load_or_create_secret(state_dir: Path) -> bytes:
    """The secret, created atomically on first use (two processes agree on one)."""
    path = Path(state_dir) / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # fails if another process made it first: theirs wins
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    try:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError):
        secret = b""
    if len(secret) < 16:
        raise StateCorrupt(path, "the notice key is damaged; delete it and relance makes a "
                                 "new one (replies to earlier notices then count as unverified)")
    return secret
