"""A session and webhook store held in this process, for the fault simulation.

It keeps what ``tether.store.RedisStore`` keeps, as values (snapshots, histories, events, the
log position, sessions' output, endpoints, deliveries and the dispatcher's cursor), and
applies each batch whole after one checkpoint, as one round trip to Redis would; setting
:attr:`InProcessStore.down` makes every write and load fail the way an unreachable Redis
does. The simulation restarts
engines on it and takes it away mid-run, deterministically and without sockets; Redis itself
is tested against a real ``redis-server`` (``tests/store``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from tether.engine import (
    Loaded,
    LoadedSession,
    LogPosition,
    OutputChunk,
    StoredOutput,
    with_heartbeat,
)
from tether.webhooks import LoadedWebhooks

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from tether.engine import (
        Changes,
        CommandEntry,
        Displaced,
        Event,
        Heartbeat,
        SessionSnapshot,
        WriteBatch,
    )
    from tether.webhooks import DeliverySnapshot, EndpointSnapshot, WebhookBatch


class StoreDown(ConnectionError):
    """The simulated store does not answer."""


class InProcessStore:
    """``SessionStore`` and ``WebhookStore`` in memory: one engine at a time uses it, and it
    owns every session (no other node exists to own one)."""

    adopt_interval = 1.0
    node_id = "sim"
    live_nodes = ["sim"]

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.down = False
        self._sessions: dict[str, SessionSnapshot] = {}
        self._beats: dict[str, Heartbeat] = {}
        self._history: dict[str, list[CommandEntry]] = {}
        self._events: list[tuple[int, Event]] = []  # with their offsets
        self._next_offset = 0
        self._read_offset = 0  # the engine has read the events before this one
        self._run_id = 7
        self._endpoints: dict[str, EndpointSnapshot] = {}
        self._deliveries: dict[str, dict[str, DeliverySnapshot]] = {}
        self._cursor: str | None = None
        # session id -> its output's chunks (as Redis keeps them: trimmed by offset) and end
        self._output: dict[str, list[OutputChunk]] = {}
        self._output_next: dict[str, int] = {}
        self._output_first: dict[str, int] = {}
        self._output_written = trio.lowlevel.ParkingLot()

    async def _round_trip(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise StoreDown("the store does not answer (simulated outage)")

    # -- sessions --------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> list[Displaced]:
        await self._round_trip()
        for snap in batch.sessions:
            self._sessions[snap.session_id] = snap
            self._beats.pop(snap.session_id, None)
        for append in batch.history:
            kept = self._history.setdefault(append.session_id, [])
            kept += append.entries
            del kept[: max(0, len(kept) - append.cap)]
        for beat in batch.heartbeats:
            if beat.session_id in self._sessions:
                self._beats[beat.session_id] = beat
        for written in batch.output:
            chunks = self._output.setdefault(written.session_id, [])
            end = self._output_next.get(written.session_id, 0)
            for chunk in written.chunks:
                if chunk.offset >= end:  # what a retried batch has written already is skipped
                    chunks.append(chunk)
                    end = chunk.end
            self._output_next[written.session_id] = end
            # as Redis keeps it: from the chunk holding the cut (``_first``: where it is)
            cut = end - written.keep
            if cut > self._output_first.get(written.session_id, 0):
                chunks[:] = [chunk for chunk in chunks if chunk.end > cut]
                if chunks and chunks[0].offset < cut:  # on to a character boundary
                    data, i = chunks[0].data, cut - chunks[0].offset
                    while i < len(data) and data[i] & 0xC0 == 0x80:
                        i += 1
                    cut = chunks[0].offset + i
                self._output_first[written.session_id] = cut
        if batch.output:
            self._output_written.unpark_all()
        for _, session_id in batch.purged:
            self._sessions.pop(session_id, None)
            self._beats.pop(session_id, None)
            self._history.pop(session_id, None)
            self._output.pop(session_id, None)
            self._output_next.pop(session_id, None)
            self._output_first.pop(session_id, None)
        for event in batch.events:  # numbered here, as Redis numbers them
            self._events.append((self._next_offset, event))
            self._next_offset += 1
        del self._events[: max(0, len(self._events) - self.max_events)]
        return []  # one node: its hellos never race another's

    async def load(self) -> Loaded:
        await self._round_trip()
        sessions = [self._loaded(sid, snap) for sid, snap in self._sessions.items()]
        self._read_offset = self._next_offset
        return Loaded(sessions=sessions, events=list(self._events),
                      log=LogPosition(self._run_id, self._next_offset))

    async def new_events(self) -> list[tuple[int, Event]]:
        await self._round_trip()
        events = self._events
        first = events[0][0] if events else self._next_offset  # offsets are consecutive
        found = events[max(0, self._read_offset - first):]
        self._read_offset = self._next_offset
        return found

    async def run(self) -> None:
        await trio.sleep_forever()  # no lease to renew

    async def follow(self, apply: Callable[[Changes], None],
                     place: Callable[[list[tuple[int, Event]]], None]) -> None:
        await trio.sleep_forever()  # no other node writes

    async def send(self, node_id: str, message: bytes) -> None:
        raise StoreDown(f"no node {node_id} shares this store")

    async def receive(self) -> bytes | None:
        await trio.sleep_forever()  # no other node sends anything
        return None

    async def adopt(self, by_owner: Mapping[str, Mapping[str, tuple[str, str]]]
                    ) -> list[LoadedSession]:
        await self._round_trip()
        return []  # the one engine owns every session already

    def lost(self, session_id: str) -> bool:
        return False  # no other node to take a session over

    async def alive(self, nodes: list[str]) -> set[str]:
        await self._round_trip()
        return {node for node in nodes if node == self.node_id}  # the one engine there is

    async def take_over(self, workspace_id: str, session_id: str) -> LoadedSession | None:
        await self._round_trip()
        snap = self._sessions.get(session_id)
        return None if snap is None else self._loaded(session_id, snap)

    async def read(self, workspace_id: str, session_id: str) -> LoadedSession | None:
        await self._round_trip()
        snap = self._sessions.get(session_id)
        return None if snap is None else self._loaded(session_id, snap)

    def _loaded(self, session_id: str, snap: SessionSnapshot) -> LoadedSession:
        return LoadedSession(with_heartbeat(snap, self._beats.get(session_id)),
                             list(self._history.get(session_id, ())),
                             output_next=self._output_next.get(session_id, 0))

    # -- output ----------------------------------------------------------------------------

    async def read_output(self, workspace_id: str, session_id: str, offset: int | None,
                          limit: int) -> StoredOutput:
        await self._round_trip()
        chunks = self._output.get(session_id, [])
        end = self._output_next.get(session_id, 0)
        first = max(self._output_first.get(session_id, 0), chunks[0].offset if chunks else end)
        start = first if offset is None or offset < first else offset
        until = start + limit
        found = [c for c in chunks if c.end > start and c.offset < until]
        return StoredOutput(first, end, found)

    async def follow_outputs(self, positions: Mapping[tuple[str, str], int], wait: float
                             ) -> dict[tuple[str, str], list[OutputChunk]]:
        await self._round_trip()

        def found() -> dict[tuple[str, str], list[OutputChunk]]:
            return {(ws, sid): [c for c in self._output[sid] if c.offset >= offset]
                    for (ws, sid), offset in positions.items()
                    if self._output_next.get(sid, 0) > offset}

        chunks = found()
        with trio.move_on_after(wait):
            while not chunks:
                await self._output_written.park()
                chunks = found()
        return chunks

    # -- webhooks --------------------------------------------------------------------------

    async def desk(self) -> str:
        await self._round_trip()
        return self.node_id  # the only node: it always holds the desk

    async def write_webhooks(self, batch: WebhookBatch) -> None:
        await self._round_trip()
        for ep in batch.endpoints:
            self._endpoints[ep.id] = ep
        for _, webhook_id in batch.deleted:
            self._endpoints.pop(webhook_id, None)
            self._deliveries.pop(webhook_id, None)
        for d in batch.deliveries:
            self._deliveries.setdefault(d.webhook_id, {})[d.id] = d
        for _, webhook_id, delivery_id in batch.evicted:
            self._deliveries.get(webhook_id, {}).pop(delivery_id, None)
        if batch.cursor is not None:
            self._cursor = batch.cursor

    async def load_webhooks(self) -> LoadedWebhooks:
        await self._round_trip()
        deliveries = [d for log in self._deliveries.values() for d in log.values()]
        return LoadedWebhooks(list(self._endpoints.values()), deliveries, self._cursor)
