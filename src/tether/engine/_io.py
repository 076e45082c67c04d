"""Live session I/O: the agent's output into its session's buffer, reads of it, and attach
streams (an operator's input, resize and signal go their own way: ``_operators.py``).

Output is the hot path beside heartbeats: a link appends in place (no actor wake-up), the
buffer hands the new chunk to the session's watching streams, and a chunk written for an
operator's command is also kept with that command (its first 64 KiB per stream). An attach
stream opens inside the session's actor: the client is attached (or found), the watcher added
and the replay taken in one step, so nothing is appended between the replay's end and the
watcher's first chunk.

With a store (Redis), the store keeps each session's retained output too (the journal writes
what is appended, in batches): the node that runs a session serves its streams from memory and
what memory no longer holds (older bytes, or bytes written before it took the session over)
from the store; a read of a session another node runs is the store's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ._errors import (
    ClientNotFound,
    EngineClosed,
    InvalidParameter,
    OutputGone,
    OwnerUnreachable,
    SessionMoved,
    SessionNotActive,
    StoreUnavailable,
    TetherError,
)
from ._ids import random_id
from ._lifecycle import Attach, Detach
from ._models import (
    CLIENT_MODES,
    MAX_EMAIL,
    AttachedClient,
    OutputPage,
    Status,
    check_text,
)
from ._output import OUTPUT_STREAMS, OutputBuffer, OutputChunk, OutputMemory, OutputRead
from ._remote import is_hub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._apply import Applier
    from ._clock import WallClock
    from ._config import EngineConfig
    from ._holders import StreamHolders
    from ._journal import Journal
    from ._models import ClientMode
    from ._output import OutputStream, OutputWatcher
    from ._persist import SessionStore, StoredOutput
    from ._record import SessionRecord
    from ._remote import RemoteStreams
    from ._table import SessionTable

log = logging.getLogger("tether.engine")

#: A stream that names no offset replays this much of the latest output.
DEFAULT_REPLAY = 64 * 1024
#: A closed stream's client is detached on its owner within this many tries, a second apart.
DETACH_TRIES = 30
#: The most bytes one read of the output API returns, and its default.
MAX_OUTPUT_READ = 1024 * 1024
DEFAULT_OUTPUT_READ = 64 * 1024

_STREAMABLE = (Status.CONNECTED, Status.BACKGROUND)


class StreamStart(msgspec.Struct, frozen=True, gc=False):
    """An attach stream, as it opens: its client, what to replay and from where."""

    client: AttachedClient
    status: Status
    offset: int  # where the replay starts
    first_offset: int
    replay: list[OutputChunk]
    #: Bytes asked for that are no longer retained (``from``, ``to``), if any.
    gap: tuple[int, int] | None
    #: Whether the stream attached its client (and detaches it when it closes).
    attached_here: bool


class IoDesk:
    """Output, attach streams and operator input, for the engine's public calls of those
    names and for every link's ``output``."""

    def __init__(self, table: SessionTable, applier: Applier, clock: WallClock,
                 config: EngineConfig) -> None:
        self.table = table
        self.applier = applier
        self.clock = clock
        self.config = config
        self.memory = OutputMemory(config.output_memory_bytes)
        #: With a store: where output goes (the journal) and where what memory lacks is read.
        self.journal: Journal | None = None
        self.store: SessionStore | None = None
        #: With a store: streams of sessions other nodes run, and how to ask their owner
        #: (``call_owner(op, workspace, session, *args)``) and start a task.
        self.remote: RemoteStreams | None = None
        #: With a store: the clients attached by streams, detached if their node goes.
        self.holders: StreamHolders | None = None
        self.call_owner: Callable[..., Awaitable[Any]] | None = None
        self.spawn: Callable[..., object] | None = None

    def buffer(self, rec: SessionRecord) -> OutputBuffer:
        """The session's output buffer, made on first use."""
        buffer = rec.output
        if buffer is None:
            buffer = rec.output = OutputBuffer(self.config.output_buffer_bytes, self.memory)
        return buffer

    # -- the agent's output (a link's hot path) ----------------------------------------------

    def write(self, rec: SessionRecord, offset: int, data: str, stream: OutputStream,
              command_id: str | None) -> None:
        """Append what the agent wrote at ``offset``; :class:`OutputGap` past the next one."""
        if offset < 0:
            raise InvalidParameter("offset", "must be 0 or more")
        if stream not in OUTPUT_STREAMS:
            raise InvalidParameter("stream", "must be 'stdout' or 'stderr'")
        if command_id is not None:
            check_text("command_id", command_id)
        try:
            raw = data.encode()
        except UnicodeEncodeError:
            raise InvalidParameter("data", "must be UTF-8 text (no lone surrogates)") from None
        chunk = self.buffer(rec).append(offset, raw, stream, command_id)
        if chunk is None:
            return
        if self.journal is not None:
            self.journal.written(rec)
        if command_id is not None and rec.commands:
            command = rec.commands.get(command_id)
            if command is not None:
                command.capture(stream, chunk.data)

    def next_offset(self, rec: SessionRecord) -> int:
        return 0 if rec.output is None else rec.output.next_offset

    # -- a session changing nodes (with a store) ---------------------------------------------

    def run_here(self, rec: SessionRecord, stored_next: int) -> None:
        """``rec`` runs on this node from now on (loaded, taken over, adopted); the store
        holds its output up to ``stored_next``, where its buffer here goes on. A buffer from
        an earlier time here that ends elsewhere is dropped: its streams re-attach."""
        buffer = rec.output
        if buffer is not None and (is_hub(buffer) or buffer.next_offset != stored_next):
            self.moved_away(rec)
            buffer = None
        if buffer is None and stored_next:
            rec.output = OutputBuffer(self.config.output_buffer_bytes, self.memory,
                                      next_offset=stored_next)
        if self.journal is not None:
            self.journal.output_stored(rec, stored_next)
        if self.holders is not None:
            self.holders.watch(rec)  # clients its streams attached: their nodes may be gone

    def moved_away(self, rec: SessionRecord) -> None:
        """Another node runs ``rec`` now: its streams here end (they re-attach, on any node,
        from their offset) and its buffer here goes."""
        buffer, rec.output = rec.output, None
        if buffer is not None:
            for watcher in tuple(buffer.watchers):
                watcher.moved()
            buffer.release()

    # -- reading -----------------------------------------------------------------------------

    async def read(self, workspace_id: str, session_id: str, offset: int | None,
                   limit: int = DEFAULT_OUTPUT_READ) -> OutputPage:
        if not 1 <= limit <= MAX_OUTPUT_READ:
            raise InvalidParameter("limit", f"must be 1 to {MAX_OUTPUT_READ}")
        if offset is not None and offset < 0:
            raise InvalidParameter("offset", "must be 0 or more")
        rec = self.table.get(workspace_id, session_id)
        here = None if rec.output is None or is_hub(rec.output) else rec.output
        # Memory is read when it holds the start (it is ahead of the store by a batch at most);
        # older bytes, or a session another node runs, are the store's.
        start = offset
        if start is None and here is not None and here.first_offset == 0:
            start = 0  # the oldest retained byte is the first ever: memory has it
        if self.store is not None and (here is None or start is None
                                       or start < here.first_offset):
            found = await self._read_stored(workspace_id, session_id, offset, limit)
        else:
            found = (here or OutputBuffer(self.config.output_buffer_bytes)).read(offset, limit)
        return OutputPage(
            session_id=session_id, offset=found.offset, data=found.data.decode(),
            next_offset=found.next_offset, first_offset=found.first_offset,
            total_bytes=found.total_bytes, has_more=found.next_offset < found.total_bytes,
        )

    async def _held_from_store(self, workspace_id: str, session_id: str, offset: int | None,
                               limit: int) -> tuple[StoredOutput, OutputBuffer]:
        """The store's chunks from ``offset`` (default: its oldest) for ``limit`` bytes, in a
        buffer of their own (up to the first bytes the store lacks, if it lacks any), so
        they are read and cut as memory's are. :class:`OutputGone` before its oldest."""
        assert self.store is not None
        try:
            stored = await self.store.read_output(workspace_id, session_id, offset, limit)
        except Exception as exc:
            raise StoreUnavailable(f"reading output: {exc}") from exc
        want = stored.first_offset if offset is None else offset
        if want < stored.first_offset:
            raise OutputGone(want, stored.first_offset)
        chunks = [chunk for chunk in stored.chunks if chunk.end > want]
        start = chunks[0].offset if chunks else stored.next_offset
        held = OutputBuffer(sum(len(chunk.data) for chunk in chunks) + 1, next_offset=start)
        for chunk in chunks:
            if chunk.offset != held.next_offset:
                break  # bytes the store never got (shed before written): up to them
            held.append(chunk.offset, chunk.data, chunk.stream, chunk.command_id)
        return stored, held

    async def _read_stored(self, workspace_id: str, session_id: str, offset: int | None,
                           limit: int) -> OutputRead:
        stored, held = await self._held_from_store(workspace_id, session_id, offset, limit)
        want = held.first_offset if offset is None else offset
        # from ``want``; past bytes the store lacks, from the first it has after them
        found = held.read(max(held.first_offset, min(want, held.next_offset)), limit)
        return msgspec.structs.replace(found, first_offset=stored.first_offset,
                                       total_bytes=max(stored.next_offset, found.next_offset))

    # -- attach streams ----------------------------------------------------------------------

    async def open_stream(
        self,
        workspace_id: str,
        session_id: str,
        watcher: OutputWatcher,
        *,
        mode: ClientMode | None = None,
        user_email: str | None = None,
        client_id: str | None = None,
        offset: int | None = None,
    ) -> StreamStart:
        if client_id is None:
            if mode not in CLIENT_MODES:
                raise InvalidParameter("mode", "must be 'operator' or 'observer'")
            if user_email is None:
                raise InvalidParameter("user_email", "is required to attach a new client")
            check_text("user_email", user_email, MAX_EMAIL)
        else:
            check_text("client_id", client_id)
        if offset is not None and offset < 0:
            raise InvalidParameter("offset", "must be 0 or more")
        rec = self.table.get(workspace_id, session_id)
        if rec.owner is not None and not rec.status.final and self.remote is not None:
            return await self._open_remote(rec, watcher, mode, user_email, client_id, offset)
        rec, actor = self.table.live(workspace_id, session_id, "CONNECTED or BACKGROUND")
        start = await actor.call(self._open, rec, watcher, mode, user_email, client_id, offset)
        if self.store is not None and start.gap is not None:
            start = await self._older_from_store(rec, start)
        return start

    def _open(self, rec: SessionRecord, watcher: OutputWatcher, mode: ClientMode | None,
              user_email: str | None, client_id: str | None,
              offset: int | None) -> StreamStart:
        client = (self._attach_here(rec, mode, user_email, self._node_id) if client_id is None
                  else self._client_here(rec, client_id))
        buffer = self.buffer(rec)
        first, end = buffer.first_offset, buffer.next_offset
        gap = None
        if offset is None:
            start = max(first, end - DEFAULT_REPLAY)
        elif offset < first:
            gap, start = (offset, first), first
        else:
            # Past the end (the agent has yet to resend what this node lacks after a
            # failover): the stream starts there, and is told nothing before it.
            start = offset
        replay = buffer.chunks_from(min(start, end))
        buffer.watch(watcher, start)
        return StreamStart(
            client=client, status=rec.status,
            offset=replay[0].offset if replay else start, first_offset=first, replay=replay,
            gap=gap, attached_here=client_id is None,
        )

    @property
    def _node_id(self) -> str | None:
        """This node's name in a store that nodes share (``None`` without one)."""
        return None if self.store is None else self.store.node_id

    def _attach_here(self, rec: SessionRecord, mode: ClientMode | None,
                     user_email: str | None, holder: str | None,
                     client_id: str | None = None) -> AttachedClient:
        """In the actor: attach a new client (``client_id``, else a new id) for a stream
        (CONNECTED or BACKGROUND) that node ``holder`` serves (``None`` without a store)."""
        if rec.status not in _STREAMABLE:
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND")
        assert mode is not None and user_email is not None
        client = AttachedClient(client_id=client_id or random_id("cli_"), user_email=user_email,
                                mode=mode, attached_at=self.clock.rfc3339(trio.current_time()))
        self.applier.apply(rec, Attach(client, stream=True, holder=holder),
                           trio.current_time())
        if self.holders is not None:
            self.holders.watch(rec)
        return client

    @staticmethod
    def _client_here(rec: SessionRecord, client_id: str) -> AttachedClient:
        """In the actor: the attached client a stream is for."""
        if rec.status not in _STREAMABLE:
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND")
        found = None if rec.clients is None else rec.clients.get(client_id)
        if found is None:
            raise ClientNotFound(client_id)
        return found

    async def _older_from_store(self, rec: SessionRecord, start: StreamStart) -> StreamStart:
        """A local stream asked for bytes this node's memory no longer holds (or never did:
        written before this node took the session over): those the store still has go
        before the replay. What the watcher is told meanwhile waits behind it."""
        assert start.gap is not None
        asked, held_from = start.gap
        ws, sid = rec.workspace_id, rec.session_id
        try:
            stored, held = await self._held_from_store(ws, sid, asked, held_from - asked)
        except OutputGone as gone:  # older than the store holds too: from its oldest
            asked = gone.first_offset
            if asked >= held_from:
                return start
            stored, held = await self._held_from_store(ws, sid, asked, held_from - asked)
        if held.next_offset < held_from:
            return start  # the store lacks bytes up to memory's: the gap stands
        older = []
        for chunk in held.chunks_from(max(asked, held.first_offset)):
            if chunk.offset >= held_from:
                break
            if chunk.end > held_from:  # memory holds the rest (from a character boundary)
                chunk = OutputChunk(chunk.offset, chunk.data[:held_from - chunk.offset],
                                    chunk.stream, chunk.command_id)
            older.append(chunk)
        if not older:
            return start
        begins = older[0].offset
        return msgspec.structs.replace(
            start, offset=begins, first_offset=min(start.first_offset, stored.first_offset),
            replay=older + start.replay,
            gap=(start.gap[0], begins) if begins > start.gap[0] else None)

    async def _open_remote(self, rec: SessionRecord, watcher: OutputWatcher,
                           mode: ClientMode | None, user_email: str | None,
                           client_id: str | None, offset: int | None) -> StreamStart:
        """A stream of a session another node runs: its client on the owner, then the
        replay from the store (a new client is detached again if that fails)."""
        assert self.remote is not None and self.call_owner is not None
        if rec.status not in _STREAMABLE:
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND")
        ws, sid = rec.workspace_id, rec.session_id
        client: AttachedClient
        if client_id is None:
            # Named here: an owner that answers too late (503) may still have attached it,
            # and then it is detached again, by its id.
            new_id = random_id("cli_")
            try:
                client = await self.call_owner("attach_stream", ws, sid, mode, user_email,
                                                self._node_id, new_id)
            except (OwnerUnreachable, StoreUnavailable):
                if self.spawn is not None:
                    self.spawn(self._detach_on_owner, ws, sid, new_id)
                raise
        else:
            client = await self.call_owner("stream_client", ws, sid, client_id)
        try:
            start, first, replay, gap = await self.remote.open(rec, watcher, offset)
        except BaseException:
            if client_id is None and self.spawn is not None:
                self.spawn(self._detach_on_owner, ws, sid, client.client_id)
            raise
        return StreamStart(client=client, status=rec.status, offset=start, first_offset=first,
                           replay=replay, gap=gap, attached_here=client_id is None)

    def close_stream(self, workspace_id: str, session_id: str, watcher: OutputWatcher,
                     detach: str | None) -> None:
        """Stop telling ``watcher``; detach client ``detach`` (the one the stream attached).
        Never blocks, so it is safe in a ``finally`` while cancelled."""
        rec = self.table.records.get(session_id)
        if rec is None or rec.workspace_id != workspace_id:
            rec = None
        if self.remote is not None:
            self.remote.close(rec, watcher)
        if rec is None:
            return
        if rec.output is not None:
            rec.output.unwatch(watcher)
        if detach is None or not rec.clients or detach not in rec.clients:
            return
        # The owner first: a session that moved to another node may still have its actor
        # here for a moment, returning, and a detach posted to it would be dropped.
        if rec.owner is not None and self.call_owner is not None and self.spawn is not None:
            self.spawn(self._detach_on_owner, workspace_id, session_id, detach)
        elif rec.actor is not None:
            rec.actor.post(self._detach_quietly, rec, detach)

    def _detach_quietly(self, rec: SessionRecord, client_id: str) -> None:
        if rec.clients and client_id in rec.clients and not rec.status.final:
            self.applier.apply(rec, Detach(client_id), trio.current_time())

    async def _detach_on_owner(self, workspace_id: str, session_id: str,
                               client_id: str) -> None:
        """Detach a closed stream's client on the session's owner; while the owner or the
        store does not answer (a failover, an outage), again every second for a while."""
        assert self.call_owner is not None
        for _ in range(DETACH_TRIES):
            try:
                await self.call_owner("detach", workspace_id, session_id, client_id)
                return
            except (OwnerUnreachable, StoreUnavailable, SessionMoved, EngineClosed):
                await trio.sleep(1.0)
            except TetherError as error:  # detached meanwhile, or the session ended
                log.debug("session %s: the stream's client %s: %s", session_id, client_id,
                          error.message)
                return
        log.warning("session %s: the stream's client %s could not be detached (its owner did "
                    "not answer)", session_id, client_id)

    # -- the owner's side of another node's stream (forwarded calls) -------------------------

    async def attach_stream_here(self, workspace_id: str, session_id: str, mode: ClientMode,
                                 user_email: str, holder: str | None = None,
                                 client_id: str | None = None) -> AttachedClient:
        """A stream on node ``holder`` attaches its client (``client_id``) here."""
        if client_id is not None:
            check_text("client_id", client_id)
        rec, actor = self.table.live(workspace_id, session_id, "CONNECTED or BACKGROUND")
        return await actor.call(self._attach_here, rec, mode, user_email, holder, client_id)

    async def stream_client_here(self, workspace_id: str, session_id: str,
                                 client_id: str) -> AttachedClient:
        rec, actor = self.table.live(workspace_id, session_id, "CONNECTED or BACKGROUND")
        return await actor.call(self._client_here, rec, client_id)
