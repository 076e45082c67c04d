"""What simulated agents write to their sessions' output, as a pure model: no trio, no sockets.

A session's output is one byte stream (UTF-8 text) from offset 0, as the agent protocol has it.
Agents write it in pieces (an ``output`` frame each), all decided by the seed and the command
texts, never by timing:

- a command an agent runs (one it reports, or an operator's ``run_command``) prints what the
  machines' shell prints for it (:func:`~tether.sim._shell.run_shell`) and, when it fails, a
  line on stderr (:func:`command_output`), each piece carrying the command's id;
- a *busy* agent's machine also streams log lines continuously (:class:`BusyWriter`): a few
  lines every :data:`BUSY_PERIOD` seconds, some of them non-ASCII, some on stderr, about
  :data:`BUSY_RATE` bytes a second on average. Its machine goes on writing while the agent is
  away; what was written meanwhile is sent when it resumes.

:class:`OutputLog` is one session's output as its agent wrote it: the next offset, and the last
:data:`OUTPUT_KEEP` bytes (1 MiB, the server's default buffer per session), which is what the
agent can resend and what the self-check compares stream clients with. The server acknowledges
what it has only in a resume's ``welcome`` (``output_offset``): the agent resends from there.
If the server ever asks for bytes older than the agent still keeps (more than 1 MiB written
and not received across one drop, far beyond any simulated agent's rate), the agent cannot
fill the gap: it says so (an error) and writes no more output on that session, since anything
it wrote after a hole would be refused as ``output_gap``.
"""

from __future__ import annotations

import collections
import random
from typing import Literal

from ._shell import run_shell

#: Bytes of its output an agent keeps to resend (and to check clients against).
OUTPUT_KEEP = 1024 * 1024
#: A busy machine writes every this many seconds ...
BUSY_PERIOD = 2.0
#: ... about this many bytes a second on average (a few log lines per write).
BUSY_RATE = 80

Stream = Literal["stdout", "stderr"]


class Piece:
    """One ``output`` frame: ``data`` at byte ``offset`` of the session's stream."""

    __slots__ = ("command_id", "data", "offset", "size", "stream")

    def __init__(self, offset: int, data: str, stream: Stream, command_id: str | None) -> None:
        self.offset = offset
        self.data = data
        self.size = len(data.encode())
        self.stream: Stream = stream
        self.command_id = command_id

    @property
    def end(self) -> int:
        return self.offset + self.size


def command_output(command: str, exit_code: int) -> list[tuple[str, Stream]]:
    """What running ``command`` prints: the shell's stdout, and a line on stderr if it fails
    (bash's own words for a missing program, else the command's name and status)."""
    _, printed = run_shell(command)
    pieces: list[tuple[str, Stream]] = []
    if printed:
        pieces.append((printed if printed.endswith("\n") else printed + "\n", "stdout"))
    if exit_code:
        name = command.split()[0] if command.split() else command
        text = (f"bash: {name}: command not found\n" if exit_code == 127
                else f"{name}: exited with status {exit_code}\n")
        pieces.append((text, "stderr"))
    return pieces


class OutputLog:
    """One session's output as its agent wrote it (see the module's docstring).

    ``written`` is the next offset; ``acked`` what the server last said it has (a welcome's
    ``output_offset``); the pieces from ``kept_from`` to ``written`` are kept. ``broken``: the
    server asked for bytes no longer kept, so nothing more is written.
    """

    __slots__ = ("_kept", "acked", "broken", "keep", "kept_from", "resent", "size", "written")

    def __init__(self, keep: int = OUTPUT_KEEP) -> None:
        self.keep = keep
        self._kept: collections.deque[Piece] = collections.deque()
        self.kept_from = 0
        self.size = 0  # bytes kept
        self.written = 0
        self.acked = 0
        self.resent = 0  # bytes sent again after resumes
        self.broken = False

    def write(self, data: str, stream: Stream = "stdout",
              command_id: str | None = None) -> Piece | None:
        """Write ``data`` at the end; the piece to send (``None`` once broken)."""
        if self.broken or not data:
            return None
        piece = Piece(self.written, data, stream, command_id)
        self.written = piece.end
        kept = self._kept
        kept.append(piece)
        self.size += piece.size
        while self.size > self.keep and len(kept) > 1:
            gone = kept.popleft()
            self.size -= gone.size
            self.kept_from = kept[0].offset
        return piece

    def resend_from(self, offset: int) -> list[Piece] | None:
        """The server has the output up to ``offset`` (a resume's welcome): the pieces to
        send again from there (one that starts before it whole: the server skips what it
        has). ``None`` if the server has more than was written, or lacks bytes no longer
        kept (the log is then broken)."""
        if offset > self.written:
            return None
        if offset < self.kept_from:
            self.broken = True
            return None
        self.acked = offset
        pieces = [p for p in self._kept if p.end > offset]
        self.resent += sum(p.size for p in pieces)
        return pieces

    def range(self, start: int, end: int) -> bytes | None:
        """The bytes from ``start`` to ``end``, if they were written and are still kept."""
        if start < self.kept_from or end > self.written or start > end:
            return None
        parts = []
        for piece in self._kept:
            if piece.end <= start:
                continue
            if piece.offset >= end:
                break
            raw = piece.data.encode()
            parts.append(raw[max(0, start - piece.offset):end - piece.offset])
        return b"".join(parts)


_WORDS = ("GET /api/items", "POST /api/orders", "GET /healthz", "PUT /api/items/42",
          "GET /api/users/7", "DELETE /api/cart")
_WARNINGS = ("slow request", "retrying upstream", "cache miss storm", "queue depth high")


class BusyWriter:
    """A busy machine's log lines: write ``k`` (from 0) is due at ``start + k *
    BUSY_PERIOD`` and its text depends only on the seed and ``k``, so a run is reproducible
    whenever the writes are sent."""

    __slots__ = ("count", "rng", "start")

    def __init__(self, seed: int, start: float) -> None:
        self.rng = random.Random(seed ^ 0x0B05E)
        self.start = start
        self.count = 0  # writes made so far

    @property
    def next_at(self) -> float:
        return round(self.start + self.count * BUSY_PERIOD, 1)

    def lines(self) -> list[tuple[str, Stream]]:
        """The next write's lines, run together by stream."""
        rng = self.rng
        k = self.count
        self.count += 1
        at = self.start + k * BUSY_PERIOD
        out: list[tuple[str, Stream]] = []
        target = rng.randint(BUSY_RATE, 3 * BUSY_RATE)  # about 2 s of BUSY_RATE
        size = 0
        while size < target:
            if rng.random() < 0.1:
                line = (f"{at:10.1f} WARN {rng.choice(_WARNINGS)} "
                        f"(attempt {rng.randint(1, 5)})\n")
                stream: Stream = "stderr"
            else:
                mark = "✓" if rng.random() < 0.8 else "…"  # multi-byte characters too
                line = (f"{at:10.1f} INFO {rng.choice(_WORDS)} {rng.choice((200, 201, 204))} "
                        f"{rng.randint(1, 900)} µs {mark}\n")
                stream = "stdout"
            size += len(line.encode())
            if out and out[-1][1] == stream:
                out[-1] = (out[-1][0] + line, stream)
            else:
                out.append((line, stream))
        return out
