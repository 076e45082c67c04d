"""Group commit to a session store: what changed since the last write, and the one writer.

With a store (``Engine(config, store=...)``), every change a session's actor makes (a
transition, an attach or detach, a command, an event) marks the session changed; before the
actor answers anyone, it waits for :meth:`Journal.commit`. One writer task takes everything
marked so far as one :class:`~tether.engine._persist.WriteBatch` (snapshots taken at that
moment, so a session that changed ten times is written once) and writes it; every commit
waiting for a mark in it returns when it is durable. Events become visible to subscribers
(the feed, SSE, webhooks) only once written: the log's published offset follows the writes.

Heartbeats and telemetry only mark the session "beaten"; those are written at most once a
``flush_interval``, so the hot path never waits on the store. If a write fails (the store is
away), the same batch is retried, with backoff, until it succeeds: what was marked is never
dropped, and commits keep waiting (a caller may give up on one; the change is still written).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._persist import HistoryAppend, LogPosition, WriteBatch, heartbeat, snapshot

if TYPE_CHECKING:
    from ._clock import WallClock
    from ._events import EventLog
    from ._persist import SessionStore
    from ._record import SessionRecord

log = logging.getLogger("tether.engine")

#: Retry a failed write after this, doubling up to ``_MAX_BACKOFF``.
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class Journal:
    """Marks of what changed, and the task that writes them (:meth:`run`)."""

    def __init__(self, store: SessionStore, clock: WallClock, events: EventLog,
                 history_cap: int, flush_interval: float = 1.0) -> None:
        self.store = store
        self.clock = clock
        self.events = events
        self.history_cap = history_cap
        self.flush_interval = flush_interval
        self._changed: dict[str, SessionRecord] = {}
        self._beaten: dict[str, SessionRecord] = {}
        self._purged: list[tuple[str, str]] = []
        self._marks = 0  # every mark so far
        self._durable = 0  # marks written
        self._work = trio.lowlevel.ParkingLot()  # the writer waits here for a mark
        self._written = trio.lowlevel.ParkingLot()  # commits wait here for the writer
        self.failures = 0  # writes that failed (each is retried)
        self.last_error: str | None = None

    # -- marks (synchronous: the actor's turn continues) -----------------------------------

    def changed(self, rec: SessionRecord) -> None:
        self._changed[rec.session_id] = rec
        self._mark()

    def beaten(self, rec: SessionRecord) -> None:
        """A heartbeat or telemetry: written within ``flush_interval``, nobody waits."""
        self._beaten[rec.session_id] = rec

    def purged(self, rec: SessionRecord) -> None:
        self._changed.pop(rec.session_id, None)
        self._beaten.pop(rec.session_id, None)
        self._purged.append((rec.workspace_id, rec.session_id))
        self._mark()

    def _mark(self) -> None:
        self._marks += 1
        if self._work:
            self._work.unpark_all()

    async def flush(self) -> None:
        """Write everything now, heartbeats included, and return once it is durable."""
        self._mark()
        await self.commit()

    async def commit(self) -> None:
        """Return once everything marked until now is durable."""
        target = self._marks
        while self._durable < target:
            await self._written.park()

    # -- the writer ------------------------------------------------------------------------

    def _take(self) -> tuple[WriteBatch, int, int]:
        """Everything marked, as one batch; with the mark count and log offset it covers."""
        clock = self.clock
        changed, self._changed = self._changed, {}
        beaten, self._beaten = self._beaten, {}
        purged, self._purged = self._purged, []
        sessions = []
        history = []
        for rec in changed.values():
            beaten.pop(rec.session_id, None)  # the snapshot has its heartbeat
            sessions.append(snapshot(rec, clock))
            total = rec.history_total
            if total > rec.history_saved and rec.history is not None:
                first = max(rec.history_saved, rec.history_first)
                entries = list(rec.history)[first - rec.history_first :]
                history.append(HistoryAppend(rec.workspace_id, rec.session_id, first, entries,
                                             self.history_cap))
                rec.history_saved = total
        events_log = self.events
        start, end = events_log.published_offset, events_log.appended_offset
        batch = WriteBatch(
            sessions=sessions,
            history=history,
            heartbeats=[heartbeat(rec, clock) for rec in beaten.values()],
            events=events_log.unpublished(),
            purged=purged,
            log=LogPosition(events_log.run_id, end) if end > start or sessions else None,
        )
        return batch, self._marks, end

    async def run(self) -> None:
        while True:
            if self._marks == self._durable:
                if self._beaten:
                    with trio.move_on_after(self.flush_interval):
                        await self._work.park()
                else:
                    await self._work.park()
            batch, marks, offset = self._take()
            await self._write(batch)
            self._durable = marks
            self.events.publish(offset)
            self._written.unpark_all()

    async def _write(self, batch: WriteBatch) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            try:
                await self.store.write(batch)
            except Exception as exc:  # the store is away: keep the batch, try again
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("session store write failed (%s); retrying in %.2f s",
                            self.last_error, backoff)
                await trio.sleep(backoff)
                backoff = min(_MAX_BACKOFF, backoff * 2)
            else:
                self.last_error = None
                return
