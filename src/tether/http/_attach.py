"""The attach stream, ``/v1/sessions/{session_id}/attach``: a person's live view of a session.

Before the upgrade, everything that can be refused is (in the API's envelope, as an HTTP
answer): the API key (401), the query (400), the session (404, or 409 ``session_not_active``
unless it is CONNECTED or BACKGROUND), the client named (404). Then ``attached``, the ``gap``
if the offset asked for is gone, the replay, and the live output in order, with no seam: the
engine adds this stream's watcher in the same step as it takes the replay, and what the
watcher is told meanwhile waits behind the replay.

A stream never slows its session: the watcher's calls only queue frames. A client that lets
more than ``stream_queue_bytes`` of them wait is cut off (4008 ``slow_consumer``) and
re-attaches from its last offset. The session's end is told (``status``) and closes the
stream (1000); so does its client being detached. A stream whose session moves between nodes
(Redis mode: the agent resumed on another node, or this one took it over) is closed with 1012
``session_moved``; its client re-attaches from its last offset, on any node. Operators' frames
go to the agent; observers' are answered ``forbidden`` and go nowhere.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import msgspec
import trio
from quart import websocket

from tether import attach
from tether.engine import (
    CLIENT_MODES,
    MAX_EMAIL,
    OperatorInput,
    OperatorResize,
    OperatorSignal,
    TetherError,
)

from ._agent import FrameBucket
from ._errors import Unauthorized, error_response
from ._params import Choice, Integer, Param, Text, read_params
from ._routes import MAX_OUTPUT_OFFSET

if TYPE_CHECKING:
    from quart import Response

    from tether.engine import Engine, OutputChunk, Status, StreamStart

    from ._auth import KeyStore
    from ._settings import HttpSettings

log = logging.getLogger("tether.http.attach")

_CLOSE_NORMAL = 1000
_CLOSE_MOVED = 1012  # "service restart": re-attach, as agents resume after session_moved
_CLOSE_SLOW = 4008
#: Seconds a slow client has to take the frame being sent and the close before it is cut off.
SLOW_CLOSE_GRACE = 10.0

#: The attach stream's query, parsed and refused (400) like any operation's.
ATTACH_PARAMS: tuple[Param, ...] = (
    Choice(name="mode", description="operator or observer (a new client)",
           values=CLIENT_MODES),
    Text(name="user_email", description="Who attaches (a new client)", max_length=MAX_EMAIL),
    Integer(name="offset", description="Replay from this byte offset (default: the last 64 KiB)",
            low=0, high=MAX_OUTPUT_OFFSET),
    Text(name="client_id", description="Stream for this attached client instead of a new one"),
)


class _End:
    """Queued last: close the socket with ``code`` once what is before it is sent."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


def _frame(frame: attach.ServerFrame) -> str:
    return attach.encode(frame).decode()


class _LastFrame:
    """The ``output`` frame of the last chunk encoded: a buffer tells each of its watchers
    the same chunk in a row, so 100 streams of one session encode it once, not 100 times."""

    __slots__ = ("chunk", "frame")

    def __init__(self) -> None:
        self.chunk: OutputChunk | None = None
        self.frame = ""


_last = _LastFrame()


def _output(chunk: OutputChunk) -> str:
    if chunk is not _last.chunk:
        _last.frame = _frame(attach.Output(offset=chunk.offset, data=chunk.text(),
                                           stream=chunk.stream, command_id=chunk.command_id))
        _last.chunk = chunk
    return _last.frame


class StreamWatcher:
    """The engine's :class:`~tether.engine.OutputWatcher` for one socket: queues frames, never
    blocks. Until :meth:`begin`, what it is told waits behind the replay."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._send, self.outbox = trio.open_memory_channel[str | _End](math.inf)
        self.queued = 0  # bytes of frames in the outbox
        self.client_id = ""
        self.ended: _End | None = None
        self.cut_off = trio.CancelScope()  # given a deadline when the client is too slow
        self._early: list[str | _End] | None = []  # told before begin()

    def begin(self, start: StreamStart) -> list[str]:
        """The frames the stream opens with (attached, gap, replay); what was told since the
        engine added this watcher goes out after them."""
        self.client_id = start.client.client_id
        opening = [_frame(attach.Attached(
            client_id=start.client.client_id, mode=start.client.mode, offset=start.offset,
            first_offset=start.first_offset, status=start.status.value))]
        if start.gap is not None:
            opening.append(_frame(attach.Gap(from_=start.gap[0], to=start.gap[1])))
        opening += [_output(chunk) for chunk in start.replay]
        early, self._early = self._early, None
        for item in early or ():
            self._put(item)
        return opening

    def _put(self, item: str | _End) -> None:
        if self._early is not None:
            self._early.append(item)
            return
        if isinstance(item, str):
            self.queued += len(item)
            if self.queued > self.limit:
                # What is queued is dropped; the frame being sent may still go (the client may
                # read it), then the close. A client that reads nothing more is cut off.
                self._end(_End(_CLOSE_SLOW, "slow_consumer"))
                self.cut_off.deadline = trio.current_time() + SLOW_CLOSE_GRACE
                return
        self._send.send_nowait(item)

    def _end(self, end: _End) -> None:
        """Close with ``end`` after the frames queued so far (the first end wins)."""
        if self.ended is None:
            self.ended = end
            self._put(end)

    def sent(self, frame: str) -> None:
        self.queued -= len(frame)

    @property
    def too_slow(self) -> bool:
        return self.ended is not None and self.ended.code == _CLOSE_SLOW

    # -- OutputWatcher -------------------------------------------------------------------------

    def output(self, chunk: OutputChunk) -> None:
        if self.ended is None:
            self._put(_output(chunk))

    def status(self, status: Status, reason: str | None) -> None:
        if self.ended is None:
            self._put(_frame(attach.Status(status=status.value, reason=reason)))
            if status.final:
                self._end(_End(_CLOSE_NORMAL, "session_ended"))

    def client_detached(self, client_id: str, status: Status) -> None:
        # The session's end detaches every client first; its status follows and ends us.
        if client_id == self.client_id and not status.final and self.ended is None:
            self._end(_End(_CLOSE_NORMAL, "client_detached"))

    def command_result(self, command_id: str, exit_code: int) -> None:
        if self.ended is None:
            self._put(_frame(attach.CommandResult(command_id=command_id, exit_code=exit_code)))

    def moved(self) -> None:
        self._end(_End(_CLOSE_MOVED, "session_moved"))

    def tell(self, frame: attach.ServerFrame) -> None:
        """A frame for this client alone (an answer to one of its own)."""
        if self.ended is None:
            self._put(_frame(frame))


class AttachSocket:
    """The ``/v1/sessions/{session_id}/attach`` endpoint over one engine."""

    def __init__(self, engine: Engine, keys: KeyStore, settings: HttpSettings) -> None:
        self.engine = engine
        self.keys = keys
        self.settings = settings

    async def serve(self, session_id: str) -> Response | None:
        workspace_id = self.keys.workspace("api", websocket.headers.get("Authorization"))
        if workspace_id is None:
            return error_response(Unauthorized())
        watcher = StreamWatcher(self.settings.stream_queue_bytes)
        try:
            query = read_params(ATTACH_PARAMS, websocket.args, websocket.headers)
            start = await self.engine.open_stream(
                workspace_id, session_id, watcher, mode=query["mode"],
                user_email=query["user_email"], client_id=query["client_id"],
                offset=query["offset"])
        except TetherError as error:
            return error_response(error)  # an HTTP answer instead of the upgrade
        detach = start.client.client_id if start.attached_here else None
        try:
            await websocket.accept()
            for frame in watcher.begin(start):
                await websocket.send(frame)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, watcher, nursery.cancel_scope)
                if start.client.mode == "operator":
                    await self._operate(workspace_id, session_id, watcher)
                else:
                    await self._observe(watcher)
            end = watcher.ended
            # A send cut off mid-frame leaves nothing a close frame could follow.
            if end is not None and not watcher.cut_off.cancelled_caught:
                with trio.move_on_after(SLOW_CLOSE_GRACE):
                    await websocket.close(end.code, end.reason)
        except trio.BusyResourceError:
            log.debug("attach stream closed underneath a send")  # as in _agent.py
        finally:
            self.engine.close_stream(workspace_id, session_id, watcher, detach)
        return None

    async def _send_loop(self, watcher: StreamWatcher, scope: trio.CancelScope) -> None:
        with watcher.cut_off:
            async for item in watcher.outbox:
                if isinstance(item, _End) or watcher.too_slow:
                    break
                await websocket.send(item)
                watcher.sent(item)
        scope.cancel()

    async def _observe(self, watcher: StreamWatcher) -> None:
        """An observer's frames are read only to be refused."""
        while True:
            await websocket.receive()
            watcher.tell(attach.Error(code="forbidden",
                                      message="Observers are read-only: frames are not sent on"))

    async def _operate(self, workspace_id: str, session_id: str,
                       watcher: StreamWatcher) -> None:
        engine = self.engine
        client_id = watcher.client_id
        settings = self.settings
        rate = settings.agent_frame_rate
        bucket = FrameBucket(rate, settings.agent_frame_burst) if rate > 0 else None
        while True:
            if bucket is not None:
                await bucket.take()
            data = await websocket.receive()
            try:
                if len(data) > settings.max_frame_bytes:
                    raise msgspec.ValidationError(
                        f"frames are limited to {settings.max_frame_bytes} bytes")
                frame = attach.decode_client_frame(data)
            except (msgspec.ValidationError, msgspec.DecodeError) as error:
                watcher.tell(attach.Error(code="invalid_frame", message=f"Invalid frame: {error}"))
                continue
            try:
                if isinstance(frame, attach.Input):
                    await engine.send_operator(
                        workspace_id, session_id,
                        OperatorInput(data=frame.data, client_id=client_id))
                elif isinstance(frame, attach.Resize):
                    await engine.send_operator(workspace_id, session_id, OperatorResize(
                        cols=frame.cols, rows=frame.rows, client_id=client_id))
                elif isinstance(frame, attach.Signal):
                    await engine.send_operator(
                        workspace_id, session_id,
                        OperatorSignal(signal=frame.signal, client_id=client_id))
                else:
                    view = await engine.run_command(workspace_id, session_id, client_id,
                                                    frame.command)
                    watcher.tell(attach.CommandAccepted(command_id=view.command_id))
            except TetherError as error:
                watcher.tell(attach.Error(code=error.code, message=error.message))
