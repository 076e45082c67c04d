"""Sessions another node owns, on a store that nodes share: listed here, run there.

With a shared store (Redis), each live session has one owner: the node that runs its actor and
holds its agent's socket. Every node follows what the others write (the store's change feed,
:class:`Changes`): a session another node created, changed, took over or purged is created,
refreshed, handed over or forgotten here, so every node's reads answer what the owner's do. A
session this node runs and another node took over (its agent resumed there, or a hello there
replaced it, or it adopted the session while this node was paused past its lease) is let go
of here: its agent's socket closed and its actor stopped. The socket is closed with
``session_moved`` (the agent is told to resume, 1012) unless the session has ended by then
(then with its end's reason): this node cannot tell an agent that already resumed on another
node (this socket is stale; the close changes nothing for it) from one whose session was
adopted under it, which must resume to keep its session.

When this engine opens, a session whose owner is still alive stays that node's; this engine
lists and reads it but runs nothing for it. It takes one over when the session's agent comes
here (a resume, or a hello that replaces it), and adopts every one whose owner has gone (for
Redis: the owner's node lease lapsed), asking the store every ``adopt_interval``. Either way
the session's state is re-read from the store at that moment, and a session that was
CONNECTED or BACKGROUND enters GRACE_PERIOD (``node_lost``): its socket was on the other node.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._apply import close_transport
from ._errors import StoreUnavailable
from ._persist import LoadedSession, restore

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._clock import WallClock
    from ._models import Event
    from ._persist import Changes, Heartbeat, HistoryAppend, SessionSnapshot, SessionStore
    from ._record import SessionRecord
    from ._table import SessionTable

log = logging.getLogger("tether.engine")


class ForeignSessions:
    """The live sessions other nodes own, until this engine takes them over."""

    def __init__(self, store: SessionStore, table: SessionTable, clock: WallClock,
                 history_cap: int, adopt: Callable[[SessionRecord, int], None],
                 place: Callable[[list[tuple[int, Event]]], None],
                 moved_away: Callable[[SessionRecord], None]) -> None:
        self.store = store
        self.table = table
        self.clock = clock
        self.history_cap = history_cap
        self._adopt = adopt  # give the record an actor here (the engine's), and its output
        self._moved_away = moved_away  # its output here goes (the streams re-attach)
        self._place = place  # events the store numbered, into the engine's log
        self._records: dict[str, SessionRecord] = {}
        #: The same sessions by owner (session id -> (workspace, session id)): an adoption
        #: look asks about owners, and reads only the sessions of those gone.
        self._by_owner: dict[str, dict[str, tuple[str, str]]] = {}
        self._taking: dict[str, trio.Event] = {}
        self._added = trio.lowlevel.ParkingLot()
        self._started = trio.Event()

    def start(self) -> None:
        """The engine holds what the store loaded: follow what is written from then on."""
        self._started.set()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, rec: SessionRecord, owner: str) -> None:
        session_id = rec.session_id
        self._drop(session_id)  # a session another node took from its owner: filed anew
        rec.owner = owner
        self._records[session_id] = rec
        self._by_owner.setdefault(owner, {})[session_id] = (rec.workspace_id, session_id)
        self._added.unpark_all()

    def _drop(self, session_id: str) -> None:
        """Not foreign any more (taken over, adopted, ended, purged). Its ``owner`` is still
        the one it was filed under: only :meth:`add` sets it, and clears it after this."""
        rec = self._records.pop(session_id, None)
        if rec is None:
            return
        assert rec.owner is not None
        owner = rec.owner
        sessions = self._by_owner[owner]
        del sessions[session_id]
        if not sessions:
            del self._by_owner[owner]

    async def own(self, rec: SessionRecord) -> None:
        """Take ``rec`` over from its owner (its agent is here now): afterwards it runs here,
        or has ended. Raises :class:`StoreUnavailable` if the store cannot be asked."""
        session_id = rec.session_id
        while rec.owner is not None:
            taking = self._taking.get(session_id)
            if taking is not None:  # another caller is taking it over: wait for that
                await taking.wait()
                continue
            self._taking[session_id] = done = trio.Event()
            try:
                try:
                    stored = await self.store.take_over(rec.workspace_id, session_id)
                except Exception as exc:
                    raise StoreUnavailable(f"taking the session over: {exc}") from exc
                self._install(rec, stored)
            finally:
                del self._taking[session_id]
                done.set()

    async def run(self) -> None:
        """Follow the other nodes' writes, and adopt the sessions whose owner has gone (once
        the engine has taken in what the store held: :meth:`start`)."""
        await self._started.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.store.follow, self.apply, self._place)
            await self._adopt_orphans()

    async def _adopt_orphans(self) -> None:
        while True:
            if not self._records:
                await self._added.park()
                continue
            await trio.sleep(self.store.adopt_interval)
            try:
                found = await self.store.adopt(self._by_owner)
            except Exception as exc:  # the store is away: ask again next time
                log.debug("adopting orphaned sessions failed: %s", exc)
                continue
            for stored in found:
                session_id = stored.snapshot.session_id
                rec = self._records.get(session_id)
                if rec is not None and session_id not in self._taking:
                    self._install(rec, stored)
            if found:
                log.info("adopted %d sessions whose node is gone", len(found))

    def _install(self, rec: SessionRecord, stored: LoadedSession | None) -> None:
        # The owner may have ended it meanwhile (the feed then dropped it from the foreign).
        self._drop(rec.session_id)
        rec.owner = None
        if stored is None:
            log.warning("session %s is no longer in the store; not taken over", rec.session_id)
            return
        now = trio.current_time()
        self.table.refresh(rec, restore(stored, self.clock, self.history_cap), now)
        if not rec.status.final:
            self._adopt(rec, stored.output_next)

    # -- what other nodes wrote --------------------------------------------------------------

    def apply(self, changes: Changes) -> None:
        """Make this node's copy of the sessions say what ``changes`` wrote."""
        node, now = changes.node_id, trio.current_time()
        for workspace_id, session_id in changes.owners:
            rec = self.table.records.get(session_id)
            if rec is not None and rec.workspace_id == workspace_id:
                self._moved(rec, node)
        history = {h.session_id: h for h in changes.history}
        for snap in changes.sessions:
            self._snapshot(snap, node, history.get(snap.session_id), now)
        for beat in changes.heartbeats:
            self._heartbeat(beat)
        for _, session_id in changes.purged:
            self._drop(session_id)
            self.table.forget(session_id)
        if changes.complete:
            kept = {snap.session_id for snap in changes.sessions}
            gone = [sid for sid, rec in self.table.records.items()
                    if sid not in kept and rec.actor is None]  # not one this node runs
            for session_id in gone:
                self._drop(session_id)
                self.table.forget(session_id)

    def _moved(self, rec: SessionRecord, node: str) -> None:
        """``node`` took ``rec`` over."""
        if rec.owner is None and rec.actor is not None:
            actor = rec.actor
            actor.post(self._let_go, rec)
            actor.stop()
            self._moved_away(rec)
            # This node's copy counted heartbeats it never wrote: the new owner's versions go
            # on from the stored one, so whatever it writes next is newer than this copy.
            rec.version = -1
        if not rec.status.final:
            self.add(rec, node)

    @staticmethod
    def _let_go(rec: SessionRecord) -> None:
        """In the session's actor, which then returns: another node runs the session now."""
        link, rec.link = rec.link, None
        if link is not None:
            reason = rec.reason if rec.status.final and rec.reason else "session_moved"
            close_transport(link.transport, reason)

    def _snapshot(self, snap: SessionSnapshot, node: str, appended: HistoryAppend | None,
                  now: float) -> None:
        rec = self.table.records.get(snap.session_id)
        if rec is None:
            entries = [] if appended is None else appended.entries
            rec = restore(LoadedSession(snap, entries), self.clock, self.history_cap)
            self.table.add_stored(rec, now)
            if not rec.status.final:
                self.add(rec, node)
            return
        if snap.version <= rec.version or rec.workspace_id != snap.workspace_id:
            return  # old news: this node has it already (or wrote it itself)
        if rec.owner is None and rec.actor is not None:
            self._moved(rec, node)  # a newer write than this node's: it was taken over
        self.table.refresh(rec, restore(LoadedSession(snap, []), self.clock, self.history_cap),
                           now, history=False)
        if appended is not None:
            for i, entry in enumerate(appended.entries):
                if appended.first + i >= rec.history_total:
                    rec.record_command(entry, self.history_cap)
            rec.history_saved = rec.history_total
        if rec.status.final:
            self._drop(rec.session_id)
            rec.owner = None
        else:
            self.add(rec, node)

    def _heartbeat(self, beat: Heartbeat) -> None:
        rec = self.table.records.get(beat.session_id)
        if rec is None or rec.owner is None or beat.version <= rec.version:
            return
        clock = self.clock
        rec.last_heartbeat = None if beat.last_heartbeat is None else clock.trio_time(
            beat.last_heartbeat)
        rec.telemetry = beat.telemetry
        rec.telemetry_at = None if beat.telemetry_at is None else clock.trio_time(
            beat.telemetry_at)
        rec.version = beat.version
