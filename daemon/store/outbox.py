"""The outbox: messages the daemon owes, kept on disk until they are done with.

One spool directory holds one file per message: the raw RFC 5322 bytes, named
`NNNNNNNNNN-HASH.eml` where NNNNNNNNNN orders the files by creation and HASH is a digest
of the Message-ID (so the same message is spooled once, and found again by its id). A file
is written the way Mailman's switchboard writes its queue files: a temp file in the same
directory, fsync, `os.replace`, fsync of the directory. A kill leaves the old state or the
new one, never half a message; a temp file a kill left behind is swept by `sweep`.

This is a file adapter only: what a spooled message is for, and when it is done, is the
caller's business (see `relance.app` for the owner's notices and `relance.acting` for the
copies of reminders waiting to be filed in Sent).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from relance.store.state import fsync_dir

_NAME = re.compile(r"^(?P<seq>\d{10})-(?P<hash>[0-9a-f]{24})\.eml$")
_TEMP_PREFIX = ".spool."
FAILED_DIR = "failed"


def id_hash(message_id: str) -> str:
    """The part of a spool file's name that names its message."""
    return hashlib.sha256(message_id.strip().encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class Spooled:
    """One message waiting in the outbox."""

    path: Path
    message_id: str
    raw: bytes

    def header(self, name: str) -> str | None:
        """One header of the spooled message (e.g. `X-Relance-Notice`), or None."""
        return _header(self.raw, name)


@dataclass(frozen=True)
class Damaged:
    """A spool file that cannot be read back as the message its name says."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class Outbox:
    """One spool directory (created when missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _ensure(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)

    def _files(self) -> list[tuple[int, str, Path]]:
        """(sequence, hash, path) of each spool file, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _NAME.match(name)
            if match is not None:
                found.append((int(match["seq"]), match["hash"], self.directory / name))
        found.sort()
        return found

    def path_of(self, message_id: str) -> Path | None:
        """The spool file of `message_id`, or None when it is not spooled."""
        wanted = id_hash(message_id)
        return next((p for _seq, h, p in self._files() if h == wanted), None)

    def __contains__(self, message_id: object) -> bool:
        return isinstance(message_id, str) and self.path_of(message_id) is not None

    def __len__(self) -> int:
        return len(self._files())

    def put(self, message_id: str, raw: bytes) -> Path:
        """Spool `raw` durably under `message_id`; a message already spooled under that id
        is replaced in place (it keeps its turn). Returns the file's path."""
        if not message_id.strip():
            raise ValueError("a spooled message needs a Message-ID")
        self._ensure()
        target = self.path_of(message_id)
        if target is None:
            files = self._files()
            seq = files[-1][0] + 1 if files else 1
            target = self.directory / f"{seq:010d}-{id_hash(message_id)}.eml"
        fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(raw)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        fsync_dir(self.directory)
        return target

    def items(self) -> tuple[list[Spooled], list[Damaged]]:
        """Every spooled message, oldest first, and the files that could not be read back
        (unreadable, or whose Message-ID is not the one their name says): those are
        reported, never raised, so one bad file does not stop the others."""
        spooled: list[Spooled] = []
        damaged: list[Damaged] = []
        for _seq, hashed, path in self._files():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue  # removed meanwhile: done with
            except OSError as exc:
                damaged.append(Damaged(path, f"cannot be read ({exc.strerror or exc})"))
                continue
            message_id = _header(raw, "Message-ID") or ""
            if not message_id:
                damaged.append(Damaged(path, "no Message-ID header: not a whole message"))
            elif id_hash(message_id) != hashed:
                damaged.append(Damaged(path, f"holds {message_id}, not the message its "
                                             "name says"))
            else:
                spooled.append(Spooled(path, message_id, raw))
        return spooled, damaged

    def remove(self, message_id: str) -> bool:
        """Forget a message once it is done with; whether it was there."""
        path = self.path_of(message_id)
        if path is None:
            return False
        return self._unlink(path)

    def _unlink(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.directory)
        return True

    def set_aside(self, path: Path) -> Path:
        """Move a spool file into `failed/` (a refused or damaged message), out of the way
        of later passes but kept for the owner to look at."""
        failed = self.directory / FAILED_DIR
        if not failed.is_dir():
            failed.mkdir(exist_ok=True)
            fsync_dir(self.directory)
        target = failed / path.name
        os.replace(path, target)
        fsync_dir(failed)
        fsync_dir(self.directory)
        return target

    def sweep(self) -> list[Path]:
        """Remove the temp files a killed writer left; call it with the daemon lock held,
        when no other writer can be half-way. The paths removed."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.directory):
                if name.startswith(_TEMP_PREFIX) and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        (self.directory / name).unlink()
                        removed.append(self.directory / name)
        return removed


def _header(raw: bytes, name: str) -> str | None:
    """The first value of one header of `raw` (the header block only, leniently)."""
    value = BytesHeaderParser(policy=compat32).parsebytes(raw).get(name)
    return None if value is None else str(value).strip()
