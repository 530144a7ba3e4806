"""What the start-up state costs the cyclic garbage collector, and how it is spared.

A restart reads `state.json` and decodes every open case: at 10k open cases that is some
400k small containers (dicts, lists, tuples, Cases), made at once and kept. CPython's
cyclic collector runs a full collection each time the objects that survived grow by a
quarter, so while they are made it scans the growing heap again and again; pausing it
alone only moves those scans to just after (measured in session 5 and again here).

None of these objects is in a reference cycle (JSON documents, frozen dataclasses of
strings, dates and Decimals): reference counting frees each one as soon as nothing holds
it, and the cyclic collector has nothing to find among them. `gc.freeze()` moves every
object tracked at that moment out of the collector's generations, so no later
collection scans them again. Objects that are garbage in a cycle at that moment, or
become so later while frozen, are not collected until `thaw()`: start-up makes a few
dozen such objects (23 measured after the imports, config, rules and templates of a
bench office), and the only start-up object the daemon later drops while it may hold
cycles is its Runtime (the Jinja templates), replaced on a reload, which thaws.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived() -> Iterator[None]:
    """Make the objects of a start-up (the state, its open cases) with the cyclic
    collector paused, then freeze everything tracked so no collection scans it again.
    When the body raises, nothing is frozen: its traceback is garbage in a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def thaw() -> None:
    """Give the frozen objects back to the collector (after a reload: the Runtime it
    replaced may be garbage in a cycle); the next full collection scans them once."""
    gc.unfreeze()
