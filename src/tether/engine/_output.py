"""A session's output: one byte stream with exact offsets, a bounded tail of it kept, and the
streams watching it.

An agent writes its session's output as UTF-8 text in pieces, each at the byte offset (of the
UTF-8 encoding) where it starts; the session's stream starts at 0 and never rewinds. A piece at
the next offset is appended; bytes the buffer already has (an agent retransmitting after a
resume) are skipped; a piece beyond the next offset is a gap the agent must fill first
(:class:`OutputGap`, carrying the offset expected). So an agent that resends from the
``output_offset`` of its welcome makes the stream exact: no byte lost, none twice.

Each session keeps its last ``limit`` bytes (:class:`OutputBuffer`); the process keeps at most
:class:`OutputMemory`'s budget over all of them, taking the oldest bytes of the largest buffers
first when it is full. Offsets stay absolute: what is dropped moves ``first_offset`` up, and a
read from before it is :class:`OutputGone`. Every cut falls on a character boundary, so any
retained range decodes as text.

Watchers (the attach streams) are told of every appended piece as it is appended, and a
stream's replay is taken in the same step as its watcher is added, so replay and live output
join without a byte missing or repeated.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from ._errors import OutputGap, OutputGone

if TYPE_CHECKING:
    from ._models import Status

OutputStream = Literal["stdout", "stderr"]
OUTPUT_STREAMS: tuple[OutputStream, ...] = ("stdout", "stderr")

#: Consecutive pieces of one stream (and command) are kept as one chunk up to this size, so a
#: buffer of many small writes does not hold an object per write.
_COALESCE = 4096


class OutputChunk(msgspec.Struct, frozen=True, gc=False):
    """A run of output bytes starting at ``offset`` of the session's stream."""

    offset: int
    data: bytes
    stream: OutputStream = "stdout"
    command_id: str | None = None

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def text(self) -> str:
        return self.data.decode()

    def since(self, offset: int) -> OutputChunk:
        """The part of this chunk from ``offset`` (a character boundary inside it) on."""
        if offset <= self.offset:
            return self
        return OutputChunk(offset, self.data[offset - self.offset:], self.stream,
                           self.command_id)

    def since_char(self, offset: int) -> OutputChunk:
        """The part of this chunk from the first character boundary at or after ``offset``."""
        if offset <= self.offset:
            return self
        return self.since(self.offset + _char_start(self.data, offset - self.offset))


class OutputWatcher(Protocol):
    """An attach stream, as its session's buffer tells it what happens. No call may block."""

    def output(self, chunk: OutputChunk) -> None:
        """``chunk`` was appended to the session's output."""

    def status(self, status: Status, reason: str | None) -> None:
        """The session changed status (a final one ends it)."""

    def client_detached(self, client_id: str, status: Status) -> None:
        """A client of the session was detached (maybe the watcher's own; ``status``: the
        session's when it was, a final one if the session's end detached it)."""

    def command_result(self, command_id: str, exit_code: int) -> None:
        """An operator's command came back from the agent."""

    def moved(self) -> None:
        """This node no longer serves the session's stream as it did (another node runs the
        session now, or it has come to this one): the stream ends, and its client
        re-attaches from its offset."""


class OutputRead(msgspec.Struct, frozen=True, gc=False):
    """What :meth:`OutputBuffer.read` found: ``data`` from ``offset`` to ``next_offset``."""

    offset: int
    data: bytes
    next_offset: int
    first_offset: int
    total_bytes: int


def _char_start(data: bytes | bytearray, i: int) -> int:
    """The first character boundary of ``data`` at or after ``i``."""
    n = len(data)
    while i < n and data[i] & 0xC0 == 0x80:
        i += 1
    return i


def _char_end(data: bytes | bytearray, i: int) -> int:
    """The last character boundary of ``data`` at or before ``i`` (``i`` <= len(data))."""
    while 0 < i < len(data) and data[i] & 0xC0 == 0x80:
        i -= 1
    return i


class OutputBuffer:
    """One session's output: the retained chunks, their offsets, and the watchers. A
    ``limit`` of 0 makes a *hub*: the watchers of a session another node runs, no bytes
    (``_remote.py``)."""

    __slots__ = ("_ahead", "_chunks", "_memory", "_starts", "first_offset", "limit",
                 "next_offset", "size", "watchers")

    def __init__(self, limit: int, memory: OutputMemory | None = None,
                 next_offset: int = 0) -> None:
        self.limit = limit
        self._memory = memory
        self._chunks: list[OutputChunk] = []
        self._starts: list[int] = []  # each chunk's offset, for bisect
        self.first_offset = next_offset  # the oldest offset retained
        self.next_offset = next_offset  # the offset the next byte will have
        self.size = 0  # bytes retained
        self.watchers: set[OutputWatcher] = set()
        #: Watchers that asked for output from an offset past the end, and that offset: they
        #: are told nothing before it (an agent resending what a new owner lacks).
        self._ahead: dict[OutputWatcher, int] | None = None
        if memory is not None:
            memory.buffers.add(self)

    def release(self) -> None:
        """Forget everything (the session is purged): its bytes leave the process budget."""
        self._drop(self.size)
        if self._memory is not None:
            self._memory.buffers.discard(self)
        self.watchers.clear()
        self._ahead = None

    def watch(self, watcher: OutputWatcher, since: int | None = None) -> None:
        """Tell ``watcher`` what is appended from now on (from offset ``since`` on, when it
        is past the end)."""
        self.watchers.add(watcher)
        if since is not None and since > self.next_offset:
            if self._ahead is None:
                self._ahead = {}
            self._ahead[watcher] = since

    def unwatch(self, watcher: OutputWatcher) -> None:
        self.watchers.discard(watcher)
        if self._ahead is not None:
            self._ahead.pop(watcher, None)

    # -- writing -----------------------------------------------------------------------------

    def append(self, offset: int, data: bytes, stream: OutputStream = "stdout",
               command_id: str | None = None) -> OutputChunk | None:
        """Take ``data`` written at ``offset``; the new chunk (``None`` if nothing was new).

        Raises :class:`OutputGap` if ``offset`` is beyond the next offset.
        """
        expected = self.next_offset
        if offset > expected:
            raise OutputGap(offset, expected)
        end = offset + len(data)
        if end <= expected:
            return None  # all of it is here already
        if offset < expected:
            data = data[expected - offset:]
        chunk = OutputChunk(expected, data, stream, command_id)
        chunks = self._chunks
        last = chunks[-1] if chunks else None
        if (last is not None and last.end == expected and last.stream == stream
                and last.command_id == command_id and len(last.data) < _COALESCE):
            chunks[-1] = OutputChunk(last.offset, last.data + data, stream, command_id)
        else:
            chunks.append(chunk)
            self._starts.append(expected)
        self.next_offset = end
        self.size += len(data)
        if self._memory is not None:
            self._memory.grew(len(data))
        if self.size > self.limit:
            self.drop_to(self.limit)
        ahead = self._ahead
        for watcher in tuple(self.watchers):
            if ahead is None or watcher not in ahead:
                watcher.output(chunk)
            elif chunk.end > ahead[watcher]:
                piece = chunk.since_char(ahead[watcher])
                if piece.data:  # it has reached its offset: all of what follows
                    del ahead[watcher]
                    watcher.output(piece)
        return chunk

    # -- dropping ----------------------------------------------------------------------------

    def drop_to(self, size: int) -> None:
        """Drop the oldest bytes until at most ``size`` are retained."""
        if self.size > size:
            self._drop(self.size - size)

    def _drop(self, count: int) -> None:
        chunks, starts = self._chunks, self._starts
        whole = 0
        dropped = 0
        while whole < len(chunks) and dropped + len(chunks[whole].data) <= count:
            dropped += len(chunks[whole].data)
            whole += 1
        if whole:
            del chunks[:whole]
            del starts[:whole]
        if dropped < count and chunks:
            first = chunks[0]
            cut = _char_start(first.data, count - dropped)
            dropped += cut
            if cut >= len(first.data):
                del chunks[0]
                del starts[0]
            else:
                chunks[0] = first.since(first.offset + cut)
                starts[0] = chunks[0].offset
        self.size -= dropped
        self.first_offset = chunks[0].offset if chunks else self.next_offset
        if self._memory is not None:
            self._memory.total -= dropped

    # -- reading -----------------------------------------------------------------------------

    def _check(self, offset: int) -> int:
        """``offset`` if it is retained, the end if it is past it (nothing there yet)."""
        if offset < self.first_offset:
            raise OutputGone(offset, self.first_offset)
        return min(offset, self.next_offset)

    def chunks_from(self, offset: int) -> list[OutputChunk]:
        """The retained chunks from ``offset`` (which must be retained) to the end."""
        offset = self._check(offset)
        starts = self._starts
        i = max(bisect.bisect_right(starts, offset) - 1, 0)
        found = self._chunks[i:]
        if found:
            first = found[0]
            found[0] = first.since_char(offset)
            if not found[0].data:
                del found[0]
        return found

    def read(self, offset: int | None, limit: int) -> OutputRead:
        """Up to ``limit`` bytes from ``offset`` (default: the oldest retained), cut on
        character boundaries (an offset inside a character starts at the next one; one past
        the end reads nothing, at the end)."""
        start = self.first_offset if offset is None else self._check(offset)
        parts: list[bytes] = []
        taken = 0
        chunks = self.chunks_from(start)
        start = chunks[0].offset if chunks else self.next_offset  # on a character boundary
        for chunk in chunks:
            room = limit - taken
            if len(chunk.data) <= room:
                parts.append(chunk.data)
                taken += len(chunk.data)
            else:
                piece = chunk.data[:_char_end(chunk.data, room)]
                parts.append(piece)
                taken += len(piece)
                break
        data = b"".join(parts)
        return OutputRead(offset=start, data=data, next_offset=start + len(data),
                          first_offset=self.first_offset, total_bytes=self.next_offset)

    # -- watchers ----------------------------------------------------------------------------

    def status(self, status: Status, reason: str | None) -> None:
        for watcher in tuple(self.watchers):
            watcher.status(status, reason)

    def client_detached(self, client_id: str, status: Status) -> None:
        for watcher in tuple(self.watchers):
            watcher.client_detached(client_id, status)

    def command_result(self, command_id: str, exit_code: int) -> None:
        for watcher in tuple(self.watchers):
            watcher.command_result(command_id, exit_code)


class OutputMemory:
    """The process's budget over every session's output: past ``limit`` bytes, the largest
    buffers give up their oldest bytes first, down to a common level a sixteenth below the
    budget (so the next shedding is many writes away)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.buffers: set[OutputBuffer] = set()
        self.sheddings = 0

    def grew(self, count: int) -> None:
        self.total += count
        if self.total > self.limit:
            self.shed()

    def shed(self) -> None:
        excess = self.total - (self.limit - self.limit // 16)
        if excess <= 0:
            return
        sizes = sorted((b.size for b in self.buffers), reverse=True)
        level = 0
        prefix = 0
        for k, size in enumerate(sizes, 1):
            prefix += size
            below = sizes[k] if k < len(sizes) else 0
            level = (prefix - excess) // k  # the level at which the k largest give up excess
            if level >= below:
                break
        level = max(level, 0)
        for buffer in tuple(self.buffers):
            if buffer.size > level:
                buffer.drop_to(level)
        self.sheddings += 1
