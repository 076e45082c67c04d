"""Group commit: many writers mark what changed; one task writes it all in one batch; each
writer waits until a batch that includes its change is durable.

The mechanism behind the engine's journal (sessions and events) and the webhooks' store
(endpoints and deliveries). What a batch is, how it is taken from the marked state and how
it is written belongs to the user; this class holds the marks, the writer loop, retries, and
the store's availability:

- a failed write is retried with the same batch (50 ms, doubling to 1 s), so nothing marked
  is ever dropped;
- a store bounds each of its round trips itself (a big batch takes many, so no bound on the
  whole would hold); a failed attempt (an error, or a round trip that timed out) starts an *outage*
  (:attr:`GroupCommit.outage_since`), which ends with the next successful write. During one,
  :meth:`check_available` refuses new writes up front, and a :meth:`commit` that waits longer
  than ``commit_timeout`` raises :class:`StoreUnavailable` (the change is still written once
  the store answers);
- an idle writer writes anyway every ``idle_interval`` (whatever ``take`` returns, maybe an
  empty batch), so a store that went away is noticed without a write.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from ._errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("tether.engine")

B = TypeVar("B")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class GroupCommit(Generic[B]):
    """Marks, and the writer task (:meth:`run`) that makes them durable."""

    def __init__(
        self,
        take: Callable[[], B],
        write: Callable[[B], Awaitable[None]],
        *,
        what: str = "store",
        idle_interval: float = 1.0,
        commit_timeout: float = 5.0,
    ) -> None:
        self._take = take  # everything marked so far, as one batch (synchronous)
        self._write = write
        self.what = what
        self.idle_interval = idle_interval
        self.commit_timeout = commit_timeout
        #: trio time of the first failed write of the current outage (``None``: no outage)
        self.outage_since: float | None = None
        self.last_error: str | None = None
        self._marks = 0  # every mark so far
        self._durable = 0  # marks written
        self._work = trio.lowlevel.ParkingLot()  # the writer waits here for a mark
        self._written = trio.lowlevel.ParkingLot()  # commits wait here for the writer

    def mark(self) -> None:
        """Something changed: the next batch includes it."""
        self._marks += 1
        if self._work:
            self._work.unpark_all()

    async def commit(self) -> None:
        """Return once everything marked until now is durable; :class:`StoreUnavailable`
        after ``commit_timeout`` without that (it is still written once the store answers)."""
        with trio.move_on_after(self.commit_timeout):
            await self.settle()
            return
        raise StoreUnavailable(self.last_error)

    async def flush(self) -> None:
        """Write a batch now (whatever ``take`` finds) and return once all is durable, however
        long that takes (the caller bounds it: a shutdown's drain deadline)."""
        self.mark()
        await self.settle()

    async def settle(self) -> None:
        """Return once everything marked until now is durable, without a timeout."""
        target = self._marks
        while self._durable < target:
            await self._written.park()

    def check_available(self) -> None:
        """Raise :class:`StoreUnavailable` during an outage: a write would not be durable."""
        if self.outage_since is not None:
            raise StoreUnavailable(self.last_error)

    async def run(self) -> None:
        while True:
            if self._marks == self._durable:
                with trio.move_on_after(self.idle_interval):
                    await self._work.park()
            marks = self._marks
            batch = self._take()
            await self._write_until_done(batch)
            self._durable = marks
            self._written.unpark_all()

    async def _write_until_done(self, batch: B) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            try:
                await self._write(batch)
            except Exception as exc:  # the store is away: keep the batch, try again
                first = self.outage_since is None
                if first:
                    self.outage_since = trio.current_time()
                self.last_error = f"{type(exc).__name__}: {exc}"
                # Once per outage at warning level; its retries at debug.
                log.log(logging.WARNING if first else logging.DEBUG,
                        "%s write failed (%s); retrying every %.2f-%g s until it answers",
                        self.what, self.last_error, backoff, _MAX_BACKOFF)
                await trio.sleep(backoff)
                backoff = min(_MAX_BACKOFF, backoff * 2)
            else:
                if self.outage_since is not None:
                    log.warning("%s answers again after %.1f s", self.what,
                                trio.current_time() - self.outage_since)
                self.outage_since = None
                self.last_error = None
                return
