"""Actors are woken a bounded number at a time, so a mass event never stalls the loop.

Trio runs, in one pass of its loop, every task that was ready when the pass began, and only
between passes does it look at sockets. Waking 100,000 actors at once (every agent lost in
the same instant, a mass expiry) made one pass of ~2 s here: for that long no HTTP request,
heartbeat or webhook was served. The :class:`Pacer` is a run queue in front of the parked
actors: waking an actor queues it, and one pump task reschedules at most ``batch`` queued
actors per pass, so each pass does a bounded amount of session work and sockets are served in
between. One wake costs a deque append and a pass of latency (a few microseconds).

Actors whose deadline has passed go first: when the engine has more to do than it can, news
(a lost transport, a message) waits and deadlines are kept. A million transport losses at
once took ~56 s of transitions here; with one queue, the grace expiries of the first sessions
waited behind the losses of the last and ended up to 21 s late.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

#: Actors woken per pass: a transition costs ~10-25 µs, so a pass stays within ~25 ms.
DEFAULT_BATCH = 1000


class Wakeable(Protocol):
    def resume(self) -> None:
        """Reschedule the parked task now (called by the pump)."""


class Pacer:
    """Two FIFOs of actors to wake (deadlines first), drained ``batch`` per pass of the run
    loop by :meth:`run`."""

    def __init__(self, batch: int = DEFAULT_BATCH,
                 on_work: Callable[[int], None] | None = None) -> None:
        self.batch = batch
        # Told how many actors each pass resumed (the engine's gc guard): counted when they run,
        # not when they are queued, so a backlog being drained counts as work.
        self._on_work = on_work
        self._ready: deque[Wakeable] = deque()
        self._due: deque[Wakeable] = deque()  # woken by a deadline: served before _ready
        self._pump: trio.lowlevel.Task | None = None
        self._closed = False

    def close(self) -> None:
        """Stop pacing: wake everything queued now, and every later wake at once (the engine
        is closing, and its last actors must not wait for a pump that is going away)."""
        self._closed = True
        for queue in (self._due, self._ready):
            while queue:
                queue.popleft().resume()

    def __len__(self) -> int:
        return len(self._due) + len(self._ready)

    def wake(self, actor: Wakeable, *, deadline: bool = False) -> None:
        """Queue ``actor`` to be resumed (the caller makes sure it is queued once); one whose
        ``deadline`` has passed goes before every other."""
        if self._closed:
            actor.resume()
            return
        (self._due if deadline else self._ready).append(actor)
        pump = self._pump
        if pump is not None:
            self._pump = None
            trio.lowlevel.reschedule(pump)

    async def run(self) -> None:
        due, ready = self._due, self._ready
        abort: Callable[[Any], trio.lowlevel.Abort] = self._abort
        while True:
            if not due and not ready:
                self._pump = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(abort)
            first = min(len(due), self.batch)
            for _ in range(first):
                due.popleft().resume()
            rest = min(len(ready), self.batch - first)
            for _ in range(rest):
                ready.popleft().resume()
            if self._on_work is not None:
                self._on_work(first + rest)
            # The woken actors run in the next pass, with this task; sockets are polled first.
            await trio.lowlevel.checkpoint()

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._pump = None
        return trio.lowlevel.Abort.SUCCEEDED
