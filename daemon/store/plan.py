"""`plan.json`: the daemon's last plan, kept across a restart.

Planning every open case is most of what a restart costs before it can idle: at 10k
open cases, decoding them and planning each took 0.25 to 0.45 s on this project's 2-core
machines, for an answer that cannot have changed when nothing did. So the daemon writes
the plan it holds when it stops, with what it was made from, and the next start reuses
it when all of that still holds:

- the state files are the very ones it was planned from (inode, size, times and the
  last commit's number: any commit, compaction or `relance rebuild` changes them);
- the rules, the time zone, the holiday tables and the planning code are the same
  (one digest over them);
- the clock is inside the plan's span (`core.schedule.plan_span`: the same local day,
  and no pause ending in between).

Anything else, including a damaged or missing file, plans again. The file is never a
source of truth: the worst a wrong one could do is wake the daemon early or late for a
step, and the daemon wakes at least every 10 minutes and decides what is due from the
cases themselves, never from this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from relance.model import Channel, PlannedStep
from relance.rules.model import Rules
from relance.store.state import AtomicJSONStorage

log = logging.getLogger("relance")

PLAN_FILE = "plan.json"
_FORMAT = 2  # 1 (72e0d67, 7faaf35) kept each case's step in full

Planned = list[tuple[str, PlannedStep]]
"""Each open case that has a next step, by number, with it."""


@dataclass(frozen=True)
class SavedPlan:
    """A plan, what it was made from (`key`), and the span of instants it holds for."""

    key: str
    start: datetime
    end: datetime
    planned: tuple[tuple[str, PlannedStep], ...]

    def answers(self, key: str, now: datetime) -> bool:
        """Whether this plan is the one planning would give now."""
        return self.key == key and self.start <= now < self.end


def plan_inputs(rules: Rules, tz: ZoneInfo) -> str:
    """A digest of everything besides the state and the clock that a plan reads: the
    rules, the time zone, the holiday tables' version and the planning code itself (an
    upgrade of relance that plans differently must not reuse an older plan)."""
    import holidays  # the calendar has imported it already

    from relance.core import schedule

    digest = hashlib.sha256()
    for part in (rules.model_dump_json(), str(tz), holidays.__version__,
                 Path(schedule.__file__).read_bytes().hex()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def plan_key(state_identity: str, inputs: str) -> str:
    return hashlib.sha256(f"{state_identity}\0{inputs}".encode()).hexdigest()


def read_plan(path: Path, tz: ZoneInfo) -> SavedPlan | None:
    """The saved plan, its instants in `tz` as planning gives them, or None when there is
    none or it cannot be read (then logged: the daemon plans again, nothing is lost)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("event=plan-unreadable file=%s reason=%s action=plan-again", path, exc)
        return None
    try:
        doc = json.loads(raw)
        if doc.get("format") != _FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, this relance reads {_FORMAT}")
        # Each distinct step once: 10k open cases share a few hundred (step, instant)
        # pairs, and building 10k steps and instants was a fifth of a restart.
        steps = [PlannedStep(step_index=int(index), step_name=str(name),
                             channel=Channel(channel), at=_instant(at).astimezone(tz))
                 for index, name, channel, at in doc["steps"]]
        return SavedPlan(
            key=str(doc["key"]),
            start=_instant(doc["start"]),
            end=_instant(doc["end"]),
            planned=tuple((str(number), steps[which]) for number, which in doc["planned"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        log.warning("event=plan-unreadable file=%s reason=%s action=plan-again", path,
                    json.dumps(str(exc)))
        return None


def write_plan(path: Path, plan: SavedPlan) -> None:
    """Replace `plan.json` atomically (a temp file, fsync, rename, the directory
    fsynced); temp files a killed writer left are removed first."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    numbered: dict[PlannedStep, int] = {}
    planned = [[number, numbered.setdefault(step, len(numbered))]
               for number, step in plan.planned]
    doc: dict[str, Any] = {
        "format": _FORMAT,
        "key": plan.key,
        "start": plan.start.isoformat(),
        "end": plan.end.isoformat(),
        "steps": [[p.step_index, p.step_name, p.channel.value, p.at.isoformat()]
                  for p in numbered],
        "planned": planned,
    }
    AtomicJSONStorage(path).write_bytes(
        json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())


def _instant(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return at
