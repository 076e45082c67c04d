"""The event log and its subscribers.

Every event goes into one retained log (bounded by count and age). A subscriber is a cursor
into that log, not a copy of it: publishing costs the same whatever the number of subscribers,
and an actor never waits for one. The log is the subscribers' shared bounded buffer; a
subscriber that falls so far behind that events it has not read leave the log gets
:class:`EventsMissed`, which says how many it missed and where it resumes (the oldest retained
event), so it can resynchronise from the current state and carry on. Nothing is skipped
silently.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import TYPE_CHECKING

import msgspec
import trio

from ._errors import EventsGone, InvalidParameter
from ._ids import EventIds, parse_event_id
from ._models import Event, EventData

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from ._clock import WallClock


class EventsMissed(Exception):
    """A subscriber fell behind the retained log and ``missed`` events are gone for it.

    The subscription continues from ``resume_from`` (the oldest event still retained); the
    subscriber should re-read the state it keeps (e.g. the sessions it tracks) before it goes on.
    """

    def __init__(self, missed: int, resume_from: str | None) -> None:
        super().__init__(f"{missed} events were missed; resuming from {resume_from}")
        self.missed = missed
        self.resume_from = resume_from


class EventLog:
    """An append-only log of events with absolute offsets, trimmed from the front."""

    def __init__(self, clock: WallClock, run_id: int, max_events: int, retention: float) -> None:
        self._clock = clock
        self._run_id = run_id
        self._event_id = EventIds(run_id)
        self._max = max_events
        self._retention = retention
        #: ``None`` marks a gap: an event a store lost with a crash in the middle of a write
        #: (see :meth:`restore`); readers skip it.
        self._events: list[Event | None] = []
        self._times = array("d")  # each event's trio time (unboxed, as are offsets below)
        self._start = 0  # index in _events of the oldest retained event
        self._first_offset = 0  # absolute offset of _events[_start]
        self._next_offset = 0  # absolute offset of the next event appended
        #: With a store, the log is the store's: an event appended here waits (unnumbered, out
        #: of readers' sight) until the journal has written it, and enters the log when it is
        #: read back from the store with the offset the store gave it (:meth:`place`), in the
        #: order of the store, where other nodes' events are too.
        self.durable = False
        self._pending: list[Event] = []
        #: Each workspace's event offsets, ascending: a workspace's page never scans others'.
        self._by_workspace: dict[str, array[int]] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        type: str,
        at: float,
        workspace_id: str,
        session_id: str,
        sequence: int,
        data: EventData,
    ) -> Event:
        if self.durable:
            event = Event(id="", type=type, timestamp=self._clock.rfc3339(at),
                          workspace_id=workspace_id, session_id=session_id, sequence=sequence,
                          data=data)
            self._pending.append(event)
            return event
        offset = self._next_offset
        self._next_offset = offset + 1
        event = Event(
            id=self._event_id(offset),
            type=type,
            timestamp=self._clock.rfc3339(at),
            workspace_id=workspace_id,
            session_id=session_id,
            sequence=sequence,
            data=data,
        )
        offsets = self._by_workspace.get(workspace_id)
        if offsets is None:
            offsets = self._by_workspace[workspace_id] = array("q")
        offsets.append(offset)
        self._events.append(event)
        self._times.append(at)
        start = self._start
        if len(self._events) - start > self._max or self._times[start] < at - self._retention:
            self._trim(at)  # only when something is due to go
        if self._lot:
            self._lot.unpark_all()
        return event

    # -- with a store: the store's log, in its order -----------------------------------------

    @property
    def run_id(self) -> int:
        return self._run_id

    def take_pending(self) -> list[Event]:
        """The events appended since the last call, for the journal to write (unnumbered:
        the store numbers them)."""
        pending, self._pending = self._pending, []
        return pending

    def restore(self, events: list[tuple[int, Event]], run_id: int, next_offset: int) -> None:
        """Continue a log a store kept: its retained events with their offsets, its run id and
        the offset of its next event. Nothing may have been placed yet."""
        assert self._next_offset == 0, "restore() an empty log"
        self._run_id = run_id
        self._event_id = EventIds(run_id)
        first = min((offset for offset, _ in events), default=next_offset)
        self._first_offset = self._next_offset = first
        self._events = []
        self._times = array("d")
        self.place(events)
        self._skip_to(next_offset, self._times[-1] if self._times else 0.0)

    def place_new(self, events: list[tuple[int, Event]]) -> None:
        """Events just written (by any node): :meth:`place`, retained from now."""
        self.place(events, trio.current_time())

    def place(self, events: list[tuple[int, Event]], now: float | None = None) -> None:
        """Events the store holds, with the offsets it gave them (from any node, this one's
        included; those already here are skipped), retained from their timestamps (or from
        ``now``). Offsets may have gaps (events the store trimmed): readers skip them, and
        event ids keep their offsets, so consumers' cursors stay valid."""
        clock = self._clock
        placed = False
        at = 0.0 if now is None else now
        for offset, stored in sorted(events, key=lambda item: item[0]):
            if offset < self._next_offset:
                continue
            if now is None:
                at = clock.trio_time(clock.parse(stored.timestamp))
            self._skip_to(offset, at)
            event = msgspec.structs.replace(stored, id=self._event_id(offset))
            self._by_workspace.setdefault(event.workspace_id, array("q")).append(offset)
            self._events.append(event)
            self._times.append(at)
            self._next_offset += 1
            placed = True
        if placed:
            start = self._start
            if len(self._events) - start > self._max or self._times[start] < at - self._retention:
                self._trim(at)  # as of the newest event placed
            if self._lot:
                self._lot.unpark_all()

    def _skip_to(self, offset: int, at: float) -> None:
        """A gap up to ``offset``: placeholders, as old as ``at``."""
        gap = offset - self._next_offset
        if gap > 0:
            self._events += [None] * gap
            self._times.extend([at] * gap)
            self._next_offset = offset

    def close(self) -> None:
        """No more events: subscribers finish once they have read what is retained."""
        self._closed = True
        self._lot.unpark_all()

    def _trim(self, now: float) -> None:
        retained = len(self._events) - self._start
        horizon = now - self._retention
        drop = 0
        while retained - drop > self._max or (
            retained - drop > 0 and self._times[self._start + drop] < horizon
        ):
            drop += 1
        if drop:
            self._start += drop
            self._first_offset += drop
        if self._start > 4096 and self._start * 2 > len(self._events):
            del self._events[: self._start]
            del self._times[: self._start]
            self._start = 0
            first = self._first_offset
            for workspace_id, offsets in list(self._by_workspace.items()):
                del offsets[: bisect_left(offsets, first)]
                if not offsets:
                    del self._by_workspace[workspace_id]

    # -- reading ---------------------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        return self._first_offset

    @property
    def next_offset(self) -> int:
        """The end of what readers see: the offset after the last event."""
        return self._next_offset

    def at(self, offset: int) -> Event | None:
        """The event at ``offset`` (``None`` for a gap)."""
        return self._events[self._start + offset - self._first_offset]

    def _present(self, offsets: Iterable[int]) -> list[Event]:
        return [event for offset in offsets if (event := self.at(offset)) is not None]

    def oldest_id(self) -> str | None:
        for offset in range(self._first_offset, self.next_offset):
            event = self.at(offset)
            if event is not None:  # gaps are rare and short: this returns at once
                return event.id
        return None

    def offset_after(self, after: str | None, now: float) -> int:
        """The offset of the first event after the event ``after`` (from the oldest if ``None``).

        Raises :class:`EventsGone` when events right after ``after`` are no longer retained (or
        ``after`` is from another run of the engine), and :class:`InvalidParameter` when
        ``after`` is not an event id at all.
        """
        self._trim(now)
        if after is None:
            return self._first_offset
        parsed = parse_event_id(after)
        if parsed is None:
            raise InvalidParameter("after", "not an event id")
        run_id, offset = parsed
        if run_id != self._run_id or offset + 1 < self._first_offset:
            raise EventsGone(after, self.oldest_id())
        if offset >= self.next_offset:
            raise InvalidParameter("after", "no such event")
        return offset + 1

    def read(self, workspace_id: str | None, start: int, limit: int) -> tuple[list[Event], int]:
        """Up to ``limit`` events of ``workspace_id`` (all if ``None``) from offset ``start``.

        Returns the events and the offset to read from next.
        """
        start = max(start, self._first_offset)
        end = self.next_offset
        if workspace_id is None:
            stop = min(end, start + limit)
            return self._present(range(start, stop)), stop
        # One workspace's events through its own offsets: no scan over other workspaces'.
        offsets = self._by_workspace.get(workspace_id, ())
        i = bisect_left(offsets, start)
        chosen = offsets[i : min(i + limit, bisect_left(offsets, end))]
        found = self._present(chosen)
        if len(chosen) < limit:
            return found, end  # read everything up to the end of the log
        return found, chosen[-1] + 1

    def subscribe(
        self, workspace_id: str | None = None, after: str | None = None, now: float | None = None,
        *, from_oldest: bool = False,
    ) -> Subscription:
        """A live stream of events: from now, from the event after ``after``, or (with
        ``from_oldest``) from the oldest retained event."""
        if from_oldest:
            start = self.first_offset
        elif after is None:
            start = self.next_offset
        else:
            start = self.offset_after(after, trio.current_time() if now is None else now)
        return Subscription(self, workspace_id, start)

    async def wait_for_more(self, offset: int) -> bool:
        """Wait until an event at ``offset`` exists; ``False`` if the log closed first."""
        while offset >= self.next_offset:
            if self._closed:
                return False
            await self._lot.park()
        return True


#: Events a subscriber takes per pass of the loop: as many as the pacer lets actors make
#: transitions per pass (``_pacer.DEFAULT_BATCH``), so a subscriber that does little per event
#: keeps up with a mass event instead of falling ~4x behind it.
READ_BATCH = 1024


class Subscription:
    """An async iterator over the events of one workspace (or all), in log order."""

    def __init__(self, log: EventLog, workspace_id: str | None, start: int) -> None:
        self._log = log
        self._workspace_id = workspace_id
        self._next = start
        self._batch: list[Event] = []
        self._batch_pos = 0

    @property
    def lag(self) -> int:
        """Events published but not yet read by this subscriber (all workspaces)."""
        return self._log.next_offset - self._next + len(self._batch) - self._batch_pos

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._batch_pos < len(self._batch):
                event = self._batch[self._batch_pos]
                self._batch_pos += 1
                return event
            log = self._log
            if self._next < log.first_offset:
                missed = log.first_offset - self._next
                self._next = log.first_offset
                raise EventsMissed(missed, log.oldest_id())
            if self._next >= log.next_offset:
                if not await log.wait_for_more(self._next):
                    raise StopAsyncIteration
                continue
            self._batch, self._next = log.read(self._workspace_id, self._next, READ_BATCH)
            self._batch_pos = 0
            await trio.lowlevel.checkpoint()
