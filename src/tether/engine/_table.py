"""Where sessions are kept: every retained record, the read index (which also answers which
session is a machine's active one), and the queue of ended sessions waiting out their retention.

One :class:`SessionTable` per engine. It answers "which record" questions (scoped to a
workspace: another workspace's session is "not found"), and the purger task drops ended
sessions once their retention has passed, oldest first.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from ._errors import (
    EngineClosed,
    NoActiveSession,
    OwnerUnreachable,
    SessionNotActive,
    SessionNotFound,
)
from ._ids import MonotonicIds
from ._index import ReadIndex
from ._models import Status, check_text
from ._record import SessionRecord
from ._shards import ShardedDict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._clock import WallClock
    from ._ports import SessionInbox


class SessionTable:
    """Records by session id, and the read index over them."""

    def __init__(self, clock: WallClock, retention: float) -> None:
        self.clock = clock
        self.retention = retention
        # Sharded: at a million sessions one resize of a plain dict stalls the loop ~100 ms.
        self.records: ShardedDict[str, SessionRecord] = ShardedDict()
        self.index = ReadIndex(self.records)
        self.live_count = 0  # sessions not yet in a final status
        self._ended: deque[tuple[float, str]] = deque()  # (ended_at, session_id), in end order
        self._purge_lot = trio.lowlevel.ParkingLot()
        self._session_ids = MonotonicIds("sess_")
        self.on_purge: Callable[[SessionRecord], None] | None = None  # a store forgets it too

    # -- adding and ending ---------------------------------------------------------------------

    def add(self, workspace_id: str, machine_id: str, machine_hostname: str,
            now: float) -> SessionRecord:
        """A new PENDING record, the machine's active session from now on.

        The caller has checked ``machine_id`` and ``machine_hostname`` (a hello does before it
        changes anything) and that the machine has no live session; the workspace is checked
        here.
        """
        check_text("workspace_id", workspace_id)
        rec = SessionRecord(
            self._session_ids.next(self.clock.wall_ms(now)),
            workspace_id,
            machine_id,
            machine_hostname,
            now,
        )
        rec.reason = "created"
        self.records[rec.session_id] = rec
        self.index.add(rec)
        self.live_count += 1
        return rec

    def finish(self, rec: SessionRecord, now: float, *, live: bool = True) -> None:
        """``rec`` has ended (its machine is free): its retention starts now."""
        if live:
            self.live_count -= 1
        was_empty = not self._ended
        self._ended.append((now, rec.session_id))
        if was_empty:
            self._purge_lot.unpark_all()

    async def run_purger(self) -> None:
        """Drop ended sessions once their retention has passed (later entries end later)."""
        ended = self._ended
        while True:
            if not ended:
                await self._purge_lot.park()
                continue
            at, session_id = ended[0]
            due = at + self.retention
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            ended.popleft()
            self._purge(session_id)

    def _purge(self, session_id: str) -> None:
        # Its own frame: a local of ``run_purger`` would keep the last purged record alive.
        rec = self.records.pop(session_id, None)
        if rec is not None:
            self.index.remove(rec)
            if rec.output is not None:  # its output leaves the process's budget
                rec.output.release()
                rec.output = None
            if self.on_purge is not None:
                self.on_purge(rec)

    def restore(self, records: list[SessionRecord]) -> None:
        """Take records a store kept, into an empty table (ended ones wait out their retention
        from when they ended)."""
        records.sort(key=lambda rec: rec.session_id)  # creation order, as the index needs
        ended = []
        for rec in records:
            self.records[rec.session_id] = rec
            self.index.add(rec)
            if rec.status.final:
                ended.append((rec.ended_at if rec.ended_at is not None else rec.status_since,
                              rec.session_id))
            else:
                self.live_count += 1
        ended.sort()
        self._ended.extend(ended)
        if ended:
            self._purge_lot.unpark_all()

    def add_stored(self, rec: SessionRecord, now: float) -> None:
        """A session another node created (restored from what it wrote)."""
        self.records[rec.session_id] = rec
        self.index.add(rec)
        if rec.status.final:
            self.finish(rec, now, live=False)
        else:
            self.live_count += 1

    def forget(self, session_id: str) -> None:
        """Drop a session another node purged (the store has forgotten it already)."""
        rec = self.records.pop(session_id, None)
        if rec is not None:
            self.index.remove(rec)
            if rec.output is not None:  # its output leaves the process's budget
                rec.output.release()
                rec.output = None
            if not rec.status.final:
                self.live_count -= 1

    def refresh(self, rec: SessionRecord, stored: SessionRecord, now: float, *,
                history: bool = True) -> None:
        """Bring ``rec`` to the state another node wrote of it (``stored``, restored from
        the store; its history too unless ``history`` is false), re-filed in the index and,
        if it has ended meanwhile, retained from now."""
        before = rec.status
        rec.assume(stored, history=history)
        if rec.status is not before:
            self.index.move(rec, before)
            if rec.status.final and not before.final:
                self.finish(rec, now)

    # -- lookups -------------------------------------------------------------------------------

    def get(self, workspace_id: str, session_id: str) -> SessionRecord:
        rec = self.records.get(session_id)
        if rec is None or rec.workspace_id != workspace_id:
            raise SessionNotFound(session_id)
        return rec

    def live(
        self, workspace_id: str, session_id: str, required: str = "an active"
    ) -> tuple[SessionRecord, SessionInbox]:
        """A live session and its actor (``required="CONNECTED"``: a CONNECTED one)."""
        rec = self.get(workspace_id, session_id)
        actor = rec.actor
        if rec.owner is not None and not rec.status.final:
            raise OwnerUnreachable(session_id, rec.owner)
        if actor is None and not rec.status.final:
            # Live, but this node no longer runs it: it is handing it over as it stops (a
            # drain). Not "not active" (409): the next node will run it; retry there.
            raise EngineClosed()
        if actor is None or (required == "CONNECTED" and rec.status is not Status.CONNECTED):
            raise SessionNotActive(rec.status.value, required)
        return rec, actor

    def active(self, workspace_id: str, machine_id: str) -> SessionRecord | None:
        """The machine's live session, if it has one."""
        return self.index.live_of(workspace_id, machine_id)

    def live_records(self) -> Iterator[SessionRecord]:
        """Every live session (one pass over the machines)."""
        return self.index.live_of_each_machine()

    def active_session(self, workspace_id: str, machine_id: str) -> SessionRecord:
        rec = self.active(workspace_id, machine_id)
        if rec is None:
            raise NoActiveSession(machine_id)
        return rec
