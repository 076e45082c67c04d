"""Clients attached by an attach stream that a node which has gone was serving.

A stream that names no ``client_id`` attaches its own client and detaches it when it closes.
With a store that nodes share, the stream may be served by a node other than the session's
owner, and the session may change owners while it is open; a node that dies (``kill -9``) or
pauses past its lease cannot detach the clients of its streams, and nothing else would. So
each such client carries the node serving its stream (``SessionRecord.stream_holders``, kept
in the store with the session), and the session's owner detaches it (reason ``stream_lost``)
once that node's lease has lapsed. The owner looks every ``adopt_interval`` while it runs a
session with such a client on another node: one round trip to the store, asking about those
nodes only.

A node that was only paused keeps its streams open; when it wakes it reads the detach in the
event log and closes them (``client_detached``), as for any detached client.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._lifecycle import Detach

if TYPE_CHECKING:
    from ._apply import Applier
    from ._persist import SessionStore
    from ._record import SessionRecord

log = logging.getLogger("tether.engine")

#: The reason of ``session.client_detached`` for such a client.
STREAM_LOST = "stream_lost"


class StreamHolders:
    """The sessions this node runs whose clients are held by streams, and the look for those
    whose node has gone."""

    def __init__(self, store: SessionStore, applier: Applier) -> None:
        self.store = store
        self.applier = applier
        #: Sessions that had such a client when last seen (some may have none by now).
        self._sessions: dict[str, SessionRecord] = {}
        self._added = trio.lowlevel.ParkingLot()

    def watch(self, rec: SessionRecord) -> None:
        """``rec`` runs here and may have clients attached by streams: look after them."""
        if rec.stream_holders:
            self._sessions[rec.session_id] = rec
            self._added.unpark_all()

    async def run(self) -> None:
        while True:
            if not self._sessions:
                await self._added.park()
                continue
            await trio.sleep(self.store.adopt_interval)
            held = self._held_elsewhere()
            if not held:
                continue
            try:
                alive = await self.store.alive(sorted({node for _, _, node in held}))
            except Exception as exc:  # the store is away: look again next time
                log.debug("looking for the nodes of attach streams failed: %s", exc)
                continue
            for rec, client_id, node in held:
                if node not in alive and rec.actor is not None:
                    rec.actor.post(self._detach, rec, client_id, node)

    def _held_elsewhere(self) -> list[tuple[SessionRecord, str, str]]:
        """(session, client, node) for each client whose stream another node serves, of the
        sessions this node runs; the others are forgotten."""
        me = self.store.node_id
        held = []
        for session_id, rec in list(self._sessions.items()):
            if not rec.stream_holders or rec.actor is None or rec.status.final:
                del self._sessions[session_id]  # watched again if it runs here again
                continue
            held += [(rec, client_id, node) for client_id, node in rec.stream_holders.items()
                     if node != me]
        return held

    def _detach(self, rec: SessionRecord, client_id: str, node: str) -> None:
        """In the session's actor: detach the client if its stream is still ``node``'s."""
        holders = rec.stream_holders
        if rec.status.final or not holders or holders.get(client_id) != node:
            return
        self.applier.apply(rec, Detach(client_id, STREAM_LOST), trio.current_time())
        log.info("session %s: detached client %s, whose attach stream was on node %s, "
                 "which has gone", rec.session_id, client_id, node)
