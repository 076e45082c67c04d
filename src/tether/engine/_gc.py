"""Keeps Python's full garbage collections small while sessions pile up.

A full (generation 2) collection walks every object in that generation: with 100,000 live
sessions it froze the loop for ~0.35 s here, and a million would take seconds. Python 3.11 has
no incremental collector, so the engine keeps long-lived objects out of its way. While the
engine is busy, the :class:`GcGuard` looks every ``interval`` seconds at how many objects the
old generation holds; past ``limit`` (~25 ms of collecting) it collects the young generations
(cheap) and calls ``gc.freeze()``, which moves everything tracked into the permanent
generation in O(1). Full collections then walk only what was promoted since. This matters
beyond session creation: during a mass transport loss, paced actors' queued messages and
re-parked tasks reach the old generation too (seen here: 565,000 objects and 139 ms
collections, until frozen), and so do the objects of every transition while the pacer drains
such a backlog: counting only wake-ups, the guard took the drain for idleness and full
collections walked 636,000 objects (203 ms) at a million sessions; it now counts actors as
they run. An idle engine's guard sleeps until the engine pokes it; a busy
one looks every ``interval`` seconds, or sooner after ``look_every`` pokes: creating 40,000
sessions a second grows the old generation by ~130,000 objects in one interval, and the
longest full collection while 100,000 sessions were created went from 42-56 ms to 11-13 ms
when the guard looked every 2,000 pokes (for ~2% of the creation rate).

The price: cyclic garbage made of objects that were alive at a freeze is not collected while
they stay frozen. The engine's own objects are acyclic (records, actors and links are freed by
reference counting when a session ends: tested), so what can be held back is other code's
cyclic garbage in flight at the instant of a freeze. When the engine has shrunk to
``thaw_below`` retained sessions (live or ended, not yet purged: a thaw's collection walks
them all) after freezing with at least four times as many, the guard calls
``gc.unfreeze()``, so the next full collection (bounded by that many sessions) reclaims it.
"""

from __future__ import annotations

import gc
import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("tether.engine")


class GcGuard:
    """Freezes the heap when the old generation outgrows ``limit`` objects; thaws it once
    the engine has shrunk to ``thaw_below`` retained sessions."""

    def __init__(self, sessions: Callable[[], int], *, limit: int = 100_000,
                 thaw_below: int = 10_000, interval: float = 0.25,
                 look_every: int = 2_000) -> None:
        self._sessions = sessions  # retained sessions: what a thaw's collection would walk
        self.limit = limit
        self.thaw_below = thaw_below
        self.interval = interval
        self.look_every = look_every
        self._pokes = 0  # since the last look
        self._frozen_at = 0  # the most sessions at one of our freezes since the last thaw
        self.freezes = 0
        self.thaws = 0
        self._busy = False  # the engine did something since the last look
        self._lot = trio.lowlevel.ParkingLot()  # the idle guard waits here
        self._burst = trio.lowlevel.ParkingLot()  # the busy guard waits here, for the interval

    def poke(self, work: int = 1) -> None:
        """The engine is at work (a session started, ``work`` actors ran): look again soon."""
        self._pokes += work
        if not self._busy:
            self._busy = True
            if self._lot:
                self._lot.unpark_all()
        elif self._pokes >= self.look_every and self._burst:
            self._burst.unpark_all()

    def check(self) -> None:
        sessions = self._sessions()
        if len(gc.get_objects(generation=2)) > self.limit:
            gc.collect(1)  # young garbage is reclaimed, not frozen (cheap: young generations)
            gc.freeze()
            self._frozen_at = max(self._frozen_at, sessions)
            self.freezes += 1
        elif self._frozen_at >= 4 * max(sessions, 1) and sessions <= self.thaw_below:
            gc.unfreeze()
            log.debug("gc: unfrozen at %d retained sessions (%d at a freeze)", sessions,
                      self._frozen_at)
            self._frozen_at = 0
            self.thaws += 1

    async def run(self) -> None:
        while True:
            if not self._busy:
                await self._lot.park()
            self._busy = False
            self._pokes = 0
            with trio.move_on_after(self.interval):
                await self._burst.park()
            self.check()
