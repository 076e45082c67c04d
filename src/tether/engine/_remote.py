"""Attach streams of sessions another node runs (with a shared store), fed from the store.

The node that runs a session serves its streams from memory (``_io.py``). A stream opened on
any other node attaches its client on the owner (a forwarded call), replays what the store
holds and then follows the session's output in the store from the replay's end
(:meth:`SessionStore.follow_outputs`: for Redis, ``XREAD BLOCK`` on the session's stream, whose
entry ids are offsets), so replay and live output join on an offset, without a seam. One tail
reads for every stream of the node: a blocking read per stream held one of the store's
connections each, and a node serving a few dozen streams starved its own writes.

Its session's transitions, detached clients and operators' command results come from the
event log (a subscription from the moment the stream opens), which every node reads back from
the store. The owner writes a batch's output and its events in one atomic script, so before
telling a stream of an event, its follower reads what the store holds up to it: a stream sees
a command's output before its result, and the last output before the session's end, as a
local stream does.

The streams of one session on this node hang off a *hub* on its record: an
:class:`~tether.engine._output.OutputBuffer` that holds no bytes (``limit`` 0) and only keeps
their watchers. If the session comes to this node (its agent resumes here, or this node adopts
it), the hub is dropped like any buffer that ends elsewhere: its streams are told ``moved``
and re-attach from their offsets, now to a local buffer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._errors import StoreUnavailable
from ._events import EventsMissed
from ._lifecycle import SESSION_ENDED
from ._models import Status
from ._output import OutputBuffer

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._events import EventLog, Subscription
    from ._models import Event
    from ._output import OutputChunk, OutputWatcher
    from ._persist import SessionStore, StoredOutput
    from ._record import SessionRecord

log = logging.getLogger("tether.engine")

#: How long one wait for new output in the store lasts before it is asked again (with the
#: streams opened meanwhile).
FOLLOW_WAIT = 0.25
#: After a failed read of the store, the follower tries again this much later.
RETRY = 0.5
#: The events of a transition: each is a ``status`` frame.
_STATUS_EVENTS = frozenset({"session.connected", "session.background", "session.grace_period",
                            "session.disconnected", "session.error"})


def is_hub(buffer: OutputBuffer | None) -> bool:
    """Whether ``buffer`` is a remote session's hub (its streams' watchers, no bytes)."""
    return buffer is not None and buffer.limit == 0


class RemoteStream:
    """One stream this node serves from the store: where its follower has read to."""

    __slots__ = ("offset", "scope", "session_id", "since", "watcher", "workspace_id")

    def __init__(self, workspace_id: str, session_id: str, watcher: OutputWatcher,
                 offset: int, since: int) -> None:
        self.workspace_id = workspace_id
        self.session_id = session_id
        self.watcher = watcher
        self.offset = offset  # the next byte to read from the store
        #: The watcher is told nothing before this (it asked for an offset past the end).
        self.since = since
        self.scope = trio.CancelScope()


class RemoteStreams:
    """The attach streams of this node whose sessions run on another node."""

    def __init__(self, store: SessionStore, events: EventLog, spawn: Callable[..., object],
                 replay_bytes: int) -> None:
        self.store = store
        self.events = events
        self._spawn = spawn  # starts a task in the engine's nursery
        self.replay_bytes = replay_bytes
        self._streams: dict[OutputWatcher, RemoteStream] = {}
        self._tailing = False  # the tail runs (from the first stream on)
        self._opened = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._streams)

    async def open(self, rec: SessionRecord, watcher: OutputWatcher, offset: int | None
                   ) -> tuple[int, int, list[OutputChunk], tuple[int, int] | None]:
        """Open ``watcher``'s stream on ``rec`` (its client attached on the owner already):
        the replay from ``offset`` (default: the last ``replay_bytes``) as (start, first
        offset, chunks, gap); the follower then tells ``watcher`` what comes next."""
        hub = rec.output
        if hub is None:
            hub = rec.output = OutputBuffer(0)
        hub.watch(watcher)
        ws, sid = rec.workspace_id, rec.session_id
        # Events from now on: the follower tells them after the replay.
        subscription = self.events.subscribe(ws)
        try:
            end = await self._read(ws, sid, None, 1)
            start = end.next_offset - self.replay_bytes if offset is None else offset
            gap = None
            if start < end.first_offset:
                gap = (start, end.first_offset) if offset is not None else None
                start = end.first_offset
            # Past the end (the agent has yet to resend what the store lacks after a
            # failover): the stream starts there, and is told nothing before it.
            since = start
            start = min(start, end.next_offset)
            stored = await self._read(ws, sid, start, max(1, end.next_offset - start))
        except BaseException:
            hub.unwatch(watcher)
            raise
        replay = [chunk.since(start) for chunk in stored.chunks if chunk.end > start]
        if replay and replay[0].offset > start:  # the store lacks bytes: they are a gap
            gap, start = (start, replay[0].offset), replay[0].offset
        begins = max(since, start)
        stream = RemoteStream(ws, sid, watcher, replay[-1].end if replay else start, begins)
        self._streams[watcher] = stream
        self._spawn(self._follow, stream, subscription)
        if not self._tailing:
            self._tailing = True
            self._spawn(self._tail)
        self._opened.unpark_all()
        return begins, stored.first_offset, replay, gap

    def close(self, rec: SessionRecord | None, watcher: OutputWatcher) -> None:
        stream = self._streams.pop(watcher, None)
        if stream is not None:
            stream.scope.cancel()
        if rec is not None and rec.output is not None:
            rec.output.unwatch(watcher)

    # -- the follower ------------------------------------------------------------------------

    async def _read(self, workspace_id: str, session_id: str, offset: int | None,
                    limit: int) -> StoredOutput:
        try:
            return await self.store.read_output(workspace_id, session_id, offset, limit)
        except Exception as exc:
            raise StoreUnavailable(f"reading output: {exc}") from exc

    async def _follow(self, stream: RemoteStream, events: Subscription) -> None:
        """Tell the stream's watcher each of its session's events, after the output written
        before it (the tail tells it the rest of the output)."""
        try:
            with stream.scope:
                async for event in events:
                    if event.session_id == stream.session_id:
                        await self._catch_up(stream)
                        _tell(stream.watcher, event)
        except EventsMissed:  # it fell behind the retained log: it re-attaches
            stream.watcher.moved()
        except Exception:  # a bug here must not take the engine down: the stream ends
            log.exception("following session %s's output failed", stream.session_id)
            stream.watcher.moved()

    async def _tail(self) -> None:
        """Every stream's output as the store gets it: one blocking read (for Redis, one
        ``XREAD BLOCK`` over every followed session's stream) at a time, however many
        streams this node serves, so the followers never hold the store's connections that
        the writes need. A stream opened meanwhile joins the next read, within
        ``FOLLOW_WAIT`` (its replay covers what was written up to its opening)."""
        while True:
            if not self._streams:
                await self._opened.park()
                continue
            positions: dict[tuple[str, str], int] = {}
            for stream in self._streams.values():
                if stream.scope.cancel_called:
                    continue  # it has ended, and is about to be closed
                key = (stream.workspace_id, stream.session_id)
                at = positions.get(key)
                if at is None or stream.offset < at:
                    positions[key] = stream.offset  # the stream furthest behind
            if not positions:
                await trio.sleep(FOLLOW_WAIT)
                continue
            try:
                found = await self.store.follow_outputs(positions, FOLLOW_WAIT)
            except Exception as exc:  # the store is away: the streams wait for it
                log.debug("following output failed: %s", exc)
                await trio.sleep(RETRY)
                continue
            for stream in tuple(self._streams.values()):
                chunks = found.get((stream.workspace_id, stream.session_id))
                if chunks:
                    self._deliver(stream, chunks)

    async def _catch_up(self, stream: RemoteStream) -> None:
        """What the store holds past the stream's offset, to its watcher now; a failed read
        is retried until it succeeds."""
        while True:
            try:
                stored = await self.store.read_output(
                    stream.workspace_id, stream.session_id, stream.offset, 1 << 30)
            except Exception as exc:  # the store is away: the stream waits for it
                log.debug("following session %s's output failed: %s", stream.session_id, exc)
                await trio.sleep(RETRY)
                continue
            self._deliver(stream, stored.chunks)
            return

    @staticmethod
    def _deliver(stream: RemoteStream, chunks: list[OutputChunk]) -> None:
        """Tell the watcher what of ``chunks`` (stored, in order) it has yet to be told (the
        tail and the catch-up before an event may both have read some)."""
        if stream.scope.cancel_called:
            return  # it has ended
        for chunk in chunks:
            if chunk.offset > stream.offset:
                # The store trimmed bytes this stream had not read (it was away that long):
                # it ends, and its client re-attaches from its offset (a gap).
                stream.watcher.moved()
                stream.scope.cancel()
                return
            if chunk.end > stream.offset:
                if chunk.end > stream.since:
                    piece = chunk.since_char(max(stream.offset, stream.since))
                    if piece.data:
                        stream.watcher.output(piece)
                stream.offset = chunk.end


def _tell(watcher: OutputWatcher, event: Event) -> None:
    """An event of a remote session, as the watcher calls a local session's change makes."""
    data = event.data
    if event.type in _STATUS_EVENTS:
        watcher.status(data.status, data.reason)
    elif event.type == "session.client_detached" and data.client is not None:
        # The event carries the status the session had; a local watcher is told the final
        # one when the session's end detached the client (the end's own event follows).
        ending = data.reason == SESSION_ENDED
        watcher.client_detached(data.client.client_id,
                                Status.DISCONNECTED if ending else data.status)
    elif data.command is not None and data.command.duration_ms is not None:
        # an operator's command (the agent's own commands have no duration)
        watcher.command_result(data.command.command_id, data.command.exit_code)
