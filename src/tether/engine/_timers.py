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


#: Due entries handled per pass of the run loop (each costs a few µs), so that 100,000
#: deadlines falling due together are spread over passes instead of stalling one.
DUE_PER_PASS = 5000


class Timekeeper:
    """A heap of (when, order, owner), served by :meth:`run`."""

    def __init__(self, due_per_pass: int = DUE_PER_PASS) -> None:
        self.due_per_pass = due_per_pass
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
            if self._fire_due(trio.current_time()):
                await trio.lowlevel.checkpoint()  # more are due: after the next pass
                continue
            self._sleeping_until = heap[0][0] if heap else math.inf
            with trio.move_on_at(self._sleeping_until):
                await self._lot.park()

    def _fire_due(self, now: float) -> bool:
        """Fire up to ``due_per_pass`` due entries; ``True`` if more are due."""
        # Its own frame: a local of ``run`` would keep the last actor it woke (and that
        # actor's session) alive for as long as the timekeeper sleeps.
        heap = self._heap
        for _ in range(self.due_per_pass):
            if not heap or heap[0][0] > now:
                return False
            when, _, owner = heapq.heappop(heap)
            owner.on_timer(when, now)
        return bool(heap) and heap[0][0] <= now
