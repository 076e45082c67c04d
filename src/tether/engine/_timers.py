"""One timekeeper task for every session deadline.

Waking a sleeping trio task through its own cancel scope costs about 40 µs; a heap checked by
one task, which reschedules an actor only when its deadline is really due, costs a few. With
100,000 sessions timing out at once that is the difference between seconds late and on time.
Entries are lazy: a heartbeat that moves a deadline later does not touch the heap; when the
old entry comes due, the session's owner re-checks and re-arms (see ``SessionActor.on_timer``).
"""

from __future__ import annotations

import heapq
import math
from itertools import count
from typing import Protocol

import trio


class TimerOwner(Protocol):
    def on_timer(self, when: float, now: float) -> None: ...


class Timekeeper:
    """A heap of (when, order, owner), served by :meth:`run`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerOwner]] = []
        self._order = count()
        self._sleeping_until = -math.inf
        self._lot = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, when: float, owner: TimerOwner) -> None:
        """Call ``owner.on_timer(when, now)`` at trio time ``when`` (or just after)."""
        heapq.heappush(self._heap, (when, next(self._order), owner))
        if when < self._sleeping_until:
            self._sleeping_until = -math.inf
            self._lot.unpark_all()

    async def run(self) -> None:
        heap = self._heap
        while True:
            self._fire_due(trio.current_time())
            self._sleeping_until = heap[0][0] if heap else math.inf
            with trio.move_on_at(self._sleeping_until):
                await self._lot.park()

    def _fire_due(self, now: float) -> None:
        # Its own frame: a local of ``run`` would keep the last actor it woke (and that
        # actor's session) alive for as long as the timekeeper sleeps.
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, owner = heapq.heappop(heap)
            owner.on_timer(when, now)
