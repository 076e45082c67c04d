"""Live session I/O: the agent's output into its session's buffer, reads of it, attach streams,
and an operator's input, resize and signal on their way to the agent.

Output is the hot path beside heartbeats: a link appends in place (no actor wake-up), the
buffer hands the new chunk to the session's watching streams, and a chunk written for an
operator's command is also kept with that command (its first 64 KiB per stream). An attach
stream opens inside the session's actor: the client is attached (or found), the watcher added
and the replay taken in one step, so nothing is appended between the replay's end and the
watcher's first chunk.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
import trio

from ._errors import (
    ClientNotFound,
    ClientNotOperator,
    InvalidParameter,
    SessionNotActive,
)
from ._ids import random_id
from ._lifecycle import Attach, Detach
from ._models import (
    CLIENT_MODES,
    MAX_EMAIL,
    SIGNALS,
    AttachedClient,
    OperatorInput,
    OperatorResize,
    OperatorSignal,
    OutputPage,
    Status,
    check_text,
)
from ._output import OUTPUT_STREAMS, OutputBuffer, OutputChunk, OutputMemory

if TYPE_CHECKING:
    from ._apply import Applier
    from ._clock import WallClock
    from ._config import EngineConfig
    from ._models import ClientMode, OperatorFrame
    from ._output import OutputStream, OutputWatcher
    from ._record import SessionRecord
    from ._table import SessionTable

log = logging.getLogger("tether.engine")

#: A stream that names no offset replays this much of the latest output.
DEFAULT_REPLAY = 64 * 1024
#: The most bytes one read of the output API returns, and its default.
MAX_OUTPUT_READ = 1024 * 1024
DEFAULT_OUTPUT_READ = 64 * 1024
#: A terminal's columns and rows, as a resize may set them.
MAX_TERMINAL_SIDE = 10_000
#: Bytes of one ``input``.
MAX_INPUT = 64 * 1024

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
        if chunk is not None and command_id is not None and rec.commands:
            command = rec.commands.get(command_id)
            if command is not None:
                command.capture(stream, chunk.data)

    def next_offset(self, rec: SessionRecord) -> int:
        return 0 if rec.output is None else rec.output.next_offset

    # -- reading -----------------------------------------------------------------------------

    def read(self, workspace_id: str, session_id: str, offset: int | None,
             limit: int = DEFAULT_OUTPUT_READ) -> OutputPage:
        if not 1 <= limit <= MAX_OUTPUT_READ:
            raise InvalidParameter("limit", f"must be 1 to {MAX_OUTPUT_READ}")
        if offset is not None and offset < 0:
            raise InvalidParameter("offset", "must be 0 or more")
        rec = self.table.get(workspace_id, session_id)
        buffer = rec.output or OutputBuffer(self.config.output_buffer_bytes)
        found = buffer.read(offset, limit)
        return OutputPage(
            session_id=session_id, offset=found.offset, data=found.data.decode(),
            next_offset=found.next_offset, first_offset=found.first_offset,
            total_bytes=found.total_bytes, has_more=found.next_offset < found.total_bytes,
        )

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
        rec, actor = self.table.live(workspace_id, session_id, "CONNECTED or BACKGROUND")
        return await actor.call(self._open, rec, watcher, mode, user_email, client_id, offset)

    def _open(self, rec: SessionRecord, watcher: OutputWatcher, mode: ClientMode | None,
              user_email: str | None, client_id: str | None,
              offset: int | None) -> StreamStart:
        if rec.status not in _STREAMABLE:
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND")
        buffer = self.buffer(rec)
        if client_id is None:
            assert mode is not None and user_email is not None
            client = AttachedClient(client_id=random_id("cli_"), user_email=user_email,
                                    mode=mode, attached_at=self.clock.rfc3339(trio.current_time()))
            self.applier.apply(rec, Attach(client, stream=True), trio.current_time())
        else:
            found = None if rec.clients is None else rec.clients.get(client_id)
            if found is None:
                raise ClientNotFound(client_id)
            client = found
        first, end = buffer.first_offset, buffer.next_offset
        gap = None
        if offset is None:
            start = max(first, end - DEFAULT_REPLAY)
        elif offset < first:
            gap, start = (offset, first), first
        else:
            start = min(offset, end)  # past the end: from the end, where the next byte comes
        replay = buffer.chunks_from(start)
        buffer.watchers.add(watcher)
        return StreamStart(
            client=client, status=rec.status,
            offset=replay[0].offset if replay else start, first_offset=first, replay=replay,
            gap=gap, attached_here=client_id is None,
        )

    def close_stream(self, workspace_id: str, session_id: str, watcher: OutputWatcher,
                     detach: str | None) -> None:
        """Stop telling ``watcher``; detach client ``detach`` (the one the stream attached).
        Never blocks, so it is safe in a ``finally`` while cancelled."""
        rec = self.table.records.get(session_id)
        if rec is None or rec.workspace_id != workspace_id:
            return
        if rec.output is not None:
            rec.output.watchers.discard(watcher)
        if detach is not None and rec.actor is not None and rec.clients \
                and detach in rec.clients:
            rec.actor.post(self._detach_quietly, rec, detach)

    def _detach_quietly(self, rec: SessionRecord, client_id: str) -> None:
        if rec.clients and client_id in rec.clients and not rec.status.final:
            self.applier.apply(rec, Detach(client_id), trio.current_time())

    # -- an operator's input, resize and signal ----------------------------------------------

    def send(self, workspace_id: str, session_id: str, frame: OperatorFrame) -> None:
        """Pass an attached operator's frame to the agent (in order: no actor on the way)."""
        if isinstance(frame, OperatorInput):
            if len(frame.data) > MAX_INPUT:
                raise InvalidParameter("data", f"must be at most {MAX_INPUT} characters")
        elif isinstance(frame, OperatorResize):
            for name, value in (("cols", frame.cols), ("rows", frame.rows)):
                if not 1 <= value <= MAX_TERMINAL_SIDE:
                    raise InvalidParameter(name, f"must be 1 to {MAX_TERMINAL_SIDE}")
        elif isinstance(frame, OperatorSignal) and frame.signal not in SIGNALS:
            raise InvalidParameter("signal", "must be one of " + ", ".join(SIGNALS))
        rec = self.table.get(workspace_id, session_id)
        client = None if rec.clients is None else rec.clients.get(frame.client_id)
        if client is None:
            raise ClientNotFound(frame.client_id)
        if client.mode != "operator":
            raise ClientNotOperator(frame.client_id)
        link = rec.link
        if rec.status not in _STREAMABLE or link is None:
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND")
        try:
            link.transport.send_operator(frame)
        except Exception:
            # The transport's own task sees it fail and loses it (the session enters
            # GRACE_PERIOD); the operator is told the agent is not there.
            log.warning("session %s: agent transport failed to send %s", rec.session_id,
                        type(frame).__name__, exc_info=True)
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND") from None
