"""Actors are woken a bounded number at a time, so a mass event never stalls the loop.

Trio runs, in one pass of its loop, every task that was ready when the pass began, and only
between passes does it look at sockets. Waking 100,000 actors at once (every agent lost in
the same instant, a mass expiry) made one pass of ~2 s here: for that long no HTTP request,
heartbeat or webhook was served. The :class:`Pacer` is a run queue in front of the parked
actors: waking an actor queues it, and one pump task reschedules at most ``batch`` queued
actors per pass, so each pass does a bounded amount of session work and sockets are served in
between. Actors are woken in the order they were queued. One wake costs a deque append and a
pass of latency (a few microseconds).
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
    """A FIFO of actors to wake, drained ``batch`` per pass of the run loop by :meth:`run`."""

    def __init__(self, batch: int = DEFAULT_BATCH,
                 on_wake: Callable[[], None] | None = None) -> None:
        self.batch = batch
        self._on_wake = on_wake  # told of every wake-up (the engine's gc guard)
        self._ready: deque[Wakeable] = deque()
        self._pump: trio.lowlevel.Task | None = None
        self._closed = False

    def close(self) -> None:
        """Stop pacing: wake everything queued now, and every later wake at once (the engine
        is closing, and its last actors must not wait for a pump that is going away)."""
        self._closed = True
        ready = self._ready
        while ready:
            ready.popleft().resume()

    def __len__(self) -> int:
        return len(self._ready)

    def wake(self, actor: Wakeable) -> None:
        """Queue ``actor`` to be resumed (the caller makes sure it is queued once)."""
        if self._closed:
            actor.resume()
            return
        if self._on_wake is not None:
            self._on_wake()
        self._ready.append(actor)
        pump = self._pump
        if pump is not None:
            self._pump = None
            trio.lowlevel.reschedule(pump)

    async def run(self) -> None:
        ready = self._ready
        abort: Callable[[Any], trio.lowlevel.Abort] = self._abort
        while True:
            if not ready:
                self._pump = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(abort)
            for _ in range(min(len(ready), self.batch)):
                ready.popleft().resume()
            # The woken actors run in the next pass, with this task; sockets are polled first.
            await trio.lowlevel.checkpoint()

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._pump = None
        return trio.lowlevel.Abort.SUCCEEDED
