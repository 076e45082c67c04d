"""Sessions another node owns, on a store that nodes share: listed here, run there.

With a shared store (Redis), each live session has one owner: the node that runs its actor and
holds its agent's socket. When this engine opens, a session whose owner is still alive stays
that node's; this engine lists and reads it but runs nothing for it. It takes one over when
the session's agent comes here (a resume, or a hello that replaces it), and adopts every one
whose owner has gone (for Redis: the owner's node lease lapsed), asking the store every
``adopt_interval``. Either way the session's state is re-read from the store at that moment,
and a session that was CONNECTED or BACKGROUND enters GRACE_PERIOD (``node_lost``): its socket
was on the other node.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._errors import StoreUnavailable
from ._persist import restore

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._clock import WallClock
    from ._persist import LoadedSession, SessionStore
    from ._record import SessionRecord
    from ._table import SessionTable

log = logging.getLogger("tether.engine")


class ForeignSessions:
    """The live sessions other nodes own, until this engine takes them over."""

    def __init__(self, store: SessionStore, table: SessionTable, clock: WallClock,
                 history_cap: int, adopt: Callable[[SessionRecord], None]) -> None:
        self.store = store
        self.table = table
        self.clock = clock
        self.history_cap = history_cap
        self._adopt = adopt  # give the record an actor here (the engine's)
        self._records: dict[str, SessionRecord] = {}
        self._taking: dict[str, trio.Event] = {}
        self._added = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, rec: SessionRecord, owner: str) -> None:
        rec.owner = owner
        self._records[rec.session_id] = rec
        self._added.unpark_all()

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
        """Adopt the sessions whose owner has gone, as the store finds them."""
        while True:
            if not self._records:
                await self._added.park()
                continue
            await trio.sleep(self.store.adopt_interval)
            asked = [(rec.workspace_id, sid) for sid, rec in self._records.items()
                     if sid not in self._taking]
            try:
                found = await self.store.adopt(asked)
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
        del self._records[rec.session_id]
        rec.owner = None
        if stored is None:
            log.warning("session %s is no longer in the store; not taken over", rec.session_id)
            return
        now = trio.current_time()
        self.table.refresh(rec, restore(stored, self.clock, self.history_cap), now)
        if not rec.status.final:
            self._adopt(rec)
