"""Where actor tasks run: a chain of nurseries of a bounded number of tasks each.

A trio nursery keeps its children in a set, and trio's run loop keeps every task in another;
both grow by one per session and resize together. At a million sessions each resize is ~100 ms
(fresh memory, touched page by page), and the two landed in the same pass of the loop. Trio's
own set cannot be avoided; the nursery's can: actors are started in the current nursery until
it has taken :data:`NURSERY_TASKS`, then in a fresh one that was opened ahead of time, so
no nursery's set ever grows large. A nursery that is no longer current is retired: it closes
once its last actor has returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: Actors started per nursery. Its set of children resizes in well under a millisecond.
NURSERY_TASKS = 16_384


class _Host:
    __slots__ = ("nursery", "retired", "started")

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.retired = trio.Event()
        self.started = 0


class ActorNurseries:
    """Starts actor tasks; lives in (and is opened by) the engine's own nursery."""

    def __init__(self, parent: trio.Nursery, per_nursery: int = NURSERY_TASKS) -> None:
        self._parent = parent
        self._per_nursery = per_nursery
        self._hosts: list[_Host] = []  # every open nursery, current and spare included
        self._current: _Host | None = None
        self._spare: _Host | None = None
        self._closed = False
        self._all_closed = trio.Event()

    async def open(self) -> None:
        """Open the first nursery (at once) and a spare (soon)."""
        self._current = await self._parent.start(self._host)
        self._parent.start_soon(self._host)

    def start_soon(self, fn: Callable[[], Awaitable[Any]]) -> None:
        host = self._current
        assert host is not None, "ActorNurseries.open() first"
        if host.started >= self._per_nursery and self._spare is not None:
            host.retired.set()
            host = self._current = self._spare
            self._spare = None
            self._parent.start_soon(self._host)  # the next spare, ready long before it is due
        host.started += 1
        host.nursery.start_soon(fn)

    def close(self) -> None:
        """Start no more actors: every nursery closes once its actors have returned."""
        self._closed = True
        for host in self._hosts:
            host.retired.set()
        if not self._hosts:
            self._all_closed.set()

    async def wait_closed(self) -> None:
        """Return once closed and every actor has returned."""
        await self._all_closed.wait()

    def running(self) -> int:
        """Actor tasks running now."""
        return sum(len(host.nursery.child_tasks) for host in self._hosts)

    async def _host(self, task_status: trio.TaskStatus[_Host] = trio.TASK_STATUS_IGNORED) -> None:
        host: _Host | None = None
        try:
            async with trio.open_nursery() as nursery:
                host = _Host(nursery)
                self._hosts.append(host)
                if self._closed:
                    return
                if self._current is None:
                    task_status.started(host)
                else:
                    self._spare = host
                await host.retired.wait()
        finally:
            if host is not None:  # its nursery has closed: no actor of it is running
                self._hosts.remove(host)
                if self._closed and not self._hosts:
                    self._all_closed.set()
