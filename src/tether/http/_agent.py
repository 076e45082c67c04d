"""The agent socket, ``/v1/agent``: the protocol of design.md over one WebSocket per agent.

The first frame must be ``hello`` (answered ``welcome``, or ``error`` and a close). Then two
tasks: this one decodes the agent's frames and reports them through the session's
:class:`~tether.engine.AgentLink`, and a sender drains the outgoing queue (``run_command``,
``error`` frames, an operator's ``input``/``resize``/``signal``, the close) so the socket has a
single writer. Heartbeats, telemetry and output are the hot path: decode, one call on the link,
nothing else.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from typing import TYPE_CHECKING

import msgspec
import trio
from quart import websocket

from tether import wire
from tether.engine import (
    AgentLinkClosed,
    OperatorInput,
    OperatorResize,
    OutputGap,
    RunCommand,
    SessionMoved,
    StoreUnavailable,
    Telemetry,
    TetherError,
)

from ._errors import Unauthorized, error_response

if TYPE_CHECKING:
    from quart import Response

    from tether.engine import AgentLink, Engine, OperatorFrame

    from ._auth import KeyStore
    from ._settings import HttpSettings

log = logging.getLogger("tether.http.agent")

#: How often a frame waiting out a store outage looks whether the store answers again.
_OUTAGE_POLL = 0.1

_CLOSE_NORMAL = 1000
_CLOSE_POLICY = 1008
_CLOSE_TOO_BIG = 1009
_CLOSE_GOING_AWAY = 1001
_CLOSE_SERVICE_RESTART = 1012

#: Closes the agent is told the reason of (an ``error`` frame), with their close codes: a
#: shutdown means it may come back later; a revoked token, that it may not with that token.
_TOLD_ON_CLOSE: dict[str, tuple[str, int]] = {
    "server_shutdown": ("The server is shutting down", _CLOSE_GOING_AWAY),
    "token_revoked": ("The agent token was revoked", _CLOSE_POLICY),
    # Redis mode: the session is handed over; resume it (on this node once it is back).
    "node_draining": ("The node is restarting: resume the session", _CLOSE_SERVICE_RESTART),
    # Redis mode: another node runs the session now (adopted while this one was paused past
    # its lease, or the agent resumed there already).
    "session_moved": ("Another node runs the session now: resume it", _CLOSE_SERVICE_RESTART),
}

_Heartbeat = wire.Heartbeat
_TelemetryFrame = wire.TelemetryFrame
_Output = wire.Output


def _telemetry(t: wire.Telemetry | wire.TelemetryFrame) -> Telemetry:
    return Telemetry(
        cpu_percent=t.cpu_percent, memory_percent=t.memory_percent, disk_percent=t.disk_percent,
        network_rx_bytes=t.network_rx_bytes, network_tx_bytes=t.network_tx_bytes,
        uptime_seconds=t.uptime_seconds,
    )


def _error_frame(code: str, message: str) -> str:
    return wire.encode(wire.Error(code=code, message=message)).decode()


def _operator_frame(frame: OperatorFrame) -> wire.Input | wire.Resize | wire.Signal:
    if isinstance(frame, OperatorInput):
        return wire.Input(data=frame.data, client_id=frame.client_id)
    if isinstance(frame, OperatorResize):
        return wire.Resize(cols=frame.cols, rows=frame.rows, client_id=frame.client_id)
    return wire.Signal(signal=frame.signal, client_id=frame.client_id)


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason[:120]


class FrameBucket:
    """A token bucket for one socket's incoming frames: ``burst`` at once, ``rate`` a second.

    :meth:`take` returns at once while tokens last and otherwise sleeps until the next one is
    due, so a flooding agent is read at ``rate`` and the socket's buffers push back on it.
    """

    __slots__ = ("at", "burst", "rate", "throttled", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = trio.current_time()
        self.throttled = 0  # frames that had to wait

    async def take(self) -> None:
        now = trio.current_time()
        tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        if tokens >= 1:
            self.tokens = tokens - 1
            self.at = now
            return
        self.throttled += 1
        due = now + (1 - tokens) / self.rate
        self.tokens = 0.0
        self.at = due
        await trio.sleep_until(due)


class SocketTransport:
    """The engine's :class:`~tether.engine.AgentTransport` for one socket: never blocks.

    Frames go into a bounded queue drained by the sender task; an agent that lets
    ``agent_send_queue`` frames pile up is cut off.
    """

    def __init__(self, capacity: int) -> None:
        self._send, self.outbox = trio.open_memory_channel[str | _Close](capacity)
        self.cancel_scope = trio.CancelScope()
        self.closing = False

    def push(self, frame: str) -> None:
        if self.closing:
            return
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            log.warning("agent not reading its socket; closing it")
            self.closing = True
            self.cancel_scope.cancel()

    def send_run_command(self, command: RunCommand) -> None:
        self.push(wire.encode(wire.RunCommand(
            command_id=command.command_id, command=command.command,
            user_email=command.user_email,
        )).decode())

    def send_operator(self, frame: OperatorFrame) -> None:
        self.push(wire.encode(_operator_frame(frame)).decode())

    def close(self, reason: str, code: int = _CLOSE_NORMAL) -> None:
        if self.closing:
            return
        told = _TOLD_ON_CLOSE.get(reason)
        if told is not None:  # the agent is told why, as an error frame with the reason's code
            message, code = told
            self.push(_error_frame(reason, message))
        self.closing = True
        try:
            self._send.send_nowait(_Close(code, reason))
        except trio.WouldBlock:
            self.cancel_scope.cancel()


class AgentSocket:
    """The ``/v1/agent`` endpoint over one engine."""

    def __init__(self, engine: Engine, keys: KeyStore, settings: HttpSettings) -> None:
        self.engine = engine
        self.keys = keys
        self.settings = settings
        #: The open sockets by the hash of the agent token they were opened with.
        self._by_token: dict[str, set[SocketTransport]] = {}
        keys.on_revocation(self._revoked)

    def _revoked(self, hashes: frozenset[str]) -> None:
        """A revoked agent token's sockets are closed; their sessions enter GRACE_PERIOD, and
        the agent cannot resume them with that token."""
        for hashed in hashes:
            for transport in self._by_token.pop(hashed, ()):
                transport.close("token_revoked")

    async def serve(self) -> Response | None:
        credential = self.keys.credential("agent", websocket.headers.get("Authorization"))
        if credential is None:
            return error_response(Unauthorized())  # an HTTP 401 instead of the upgrade
        token_hash, workspace_id = credential
        await websocket.accept()
        transport = SocketTransport(self.settings.agent_send_queue)
        sockets = self._by_token.setdefault(token_hash, set())
        sockets.add(transport)
        link: AgentLink | None = None
        try:
            with transport.cancel_scope:
                link = await self._hello(workspace_id, transport)
                if link is None:
                    return None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, transport, nursery.cancel_scope)
                    await self._receive_loop(link, transport)
        finally:
            sockets.discard(transport)
            if not sockets and self._by_token.get(token_hash) is sockets:
                del self._by_token[token_hash]
            if link is not None:
                link.transport_lost()
        return None

    # -- hello -------------------------------------------------------------------------------

    async def _hello(self, workspace_id: str, transport: SocketTransport) -> AgentLink | None:
        with trio.move_on_after(self.settings.hello_timeout):
            data = await websocket.receive()
            try:
                if _too_large(data, self.settings.max_frame_bytes):
                    raise ValueError("frame too large")
                frame = wire.decode_agent_frame(data)
            except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as error:
                await self._refuse("invalid_frame", f"Invalid hello: {error}")
                return None
            if not isinstance(frame, wire.Hello):
                await self._refuse("hello_required", "The first frame must be hello")
                return None
            try:
                link = await self.engine.agent_hello(
                    workspace_id, transport, machine_id=frame.machine_id,
                    machine_hostname=frame.machine_hostname, resume_token=frame.resume_token,
                    agent_version=frame.agent_version,
                )
            except TetherError as error:
                await self._refuse(error.code, error.message)
                return None
            welcome = link.welcome
            assert welcome is not None
            with contextlib.suppress(trio.BusyResourceError):  # closing: see _send_loop
                await websocket.send(wire.encode(wire.Welcome(
                    session_id=welcome.session_id, resume_token=welcome.resume_token,
                    heartbeat_interval=welcome.heartbeat_interval,
                    heartbeat_timeout=welcome.heartbeat_timeout,
                    grace_period=welcome.grace_period, resumed=welcome.resumed,
                    output_offset=welcome.output_offset,
                )).decode())
            return link
        await self._refuse("hello_timeout", "No hello in time")
        return None

    async def _refuse(self, code: str, message: str) -> None:
        with trio.move_on_after(5), contextlib.suppress(trio.BusyResourceError):  # see below
            await websocket.send(_error_frame(code, message))
            await websocket.close(_CLOSE_POLICY, code)

    # -- after welcome -----------------------------------------------------------------------

    async def _send_loop(self, transport: SocketTransport, scope: trio.CancelScope) -> None:
        # Hypercorn's trio server half-closes a connection the peer is closing (``send_eof``)
        # outside the lock its own sends take, so a send racing it raises BusyResourceError
        # (seen under load: agents hanging up as they were answered). The connection is
        # going away either way: end this socket's tasks as if it had closed.
        try:
            async for item in transport.outbox:
                if isinstance(item, _Close):
                    with trio.move_on_after(5):
                        await websocket.close(item.code, item.reason)
                    return
                await websocket.send(item)
        except trio.BusyResourceError:
            log.debug("agent socket closed underneath a send")
        finally:
            scope.cancel()

    async def _receive_loop(self, link: AgentLink, transport: SocketTransport) -> None:
        max_frame = self.settings.max_frame_bytes
        decode = wire.decode_agent_frame
        violations = 0
        rate = self.settings.agent_frame_rate
        bucket = FrameBucket(rate, self.settings.agent_frame_burst) if rate > 0 else None
        while not transport.closing:
            if bucket is not None:
                await bucket.take()
            data = await websocket.receive()
            if _too_large(data, max_frame):
                problem: tuple[str, str] | None = (
                    "frame_too_large", f"Frames are limited to {max_frame} bytes"
                )
            else:
                try:
                    frame = decode(data)
                except (msgspec.ValidationError, msgspec.DecodeError) as error:
                    problem = ("invalid_frame", f"Invalid frame: {error}")
                else:
                    kind = type(frame)
                    try:
                        if kind is _Heartbeat:  # the hot path
                            t = frame.telemetry
                            link.heartbeat(None if t is None else _telemetry(t))
                            continue
                        if kind is _TelemetryFrame:
                            link.telemetry(_telemetry(frame))
                            continue
                        if kind is _Output:  # in place too: the buffer fans it out
                            try:
                                link.output(frame.offset, frame.data, frame.stream,
                                            frame.command_id)
                            except OutputGap as gap:  # not a violation: resend from there
                                transport.push(wire.encode(wire.Error(
                                    code=gap.code, message=gap.message,
                                    expected_offset=gap.expected_offset)).decode())
                            continue
                        problem = await self._reported(link, transport, frame)
                    except AgentLinkClosed as error:
                        transport.close(error.code)
                        return
                    except SessionMoved:  # another node runs it now: resume it there
                        transport.close("session_moved")
                        return
                    except TetherError as error:
                        problem = (error.code, error.message)
            if problem is not None:
                violations += 1
                transport.push(_error_frame(*problem))
                if violations >= self.settings.max_violations:
                    await self._give_up(link, transport, problem[1])
                    return

    async def _reported(
        self, link: AgentLink, transport: SocketTransport, frame: wire.AgentFrame
    ) -> tuple[str, str] | None:
        """:meth:`_frame`, through an outage of the session store (Redis mode): a frame the
        store could not take is applied once it answers again, reading no further frame
        meanwhile (they queue on the socket, in order), and one applied whose write was late
        is written when it answers. Neither is the agent's fault nor lost: no violation, no
        error frame. An outage past ``--redis-outage-budget`` stops the node."""
        while True:
            try:
                return await self._frame(link, transport, frame)
            except StoreUnavailable as error:
                if error.applied:
                    return None
            await trio.sleep(_OUTAGE_POLL)
            while self.engine.store_outage is not None:
                await trio.sleep(_OUTAGE_POLL)

    async def _frame(
        self, link: AgentLink, transport: SocketTransport, frame: wire.AgentFrame
    ) -> tuple[str, str] | None:
        """Report one (non-heartbeat) frame; a problem to tell the agent, or ``None``."""
        if isinstance(frame, wire.CommandResult):
            await link.command_result(frame.command_id, frame.exit_code, frame.duration_ms)
        elif isinstance(frame, wire.Command):
            await link.report_command(
                frame.command, frame.exit_code, command_id=frame.command_id,
                executed_at=self._trio_time(frame.executed_at), user_email=frame.user_email,
            )
        elif isinstance(frame, wire.Background):
            await link.background()
        elif isinstance(frame, wire.Foreground):
            await link.foreground()
        elif isinstance(frame, wire.Goodbye):
            await link.goodbye(frame.reason)
            transport.close("agent_goodbye")
        elif isinstance(frame, wire.Error):
            if frame.fatal:
                await link.fatal_error(frame.code, frame.message)
                transport.close("agent_error")
            else:
                # repr: the agent's text may hold newlines that would forge log lines
                log.info("agent %s reports %r: %r", link.session_id, frame.code, frame.message)
        elif isinstance(frame, wire.Hello):
            return ("unexpected_frame", "hello is only valid as the first frame")
        return None

    def _trio_time(self, executed_at: datetime.datetime | None) -> float | None:
        if executed_at is None:
            return None
        if executed_at.tzinfo is None:
            executed_at = executed_at.replace(tzinfo=datetime.UTC)
        clock = self.engine.clock
        return clock.trio_time(executed_at.timestamp())

    async def _give_up(self, link: AgentLink, transport: SocketTransport, message: str) -> None:
        """Too many violations: the socket closes (1008) and the session ends in ERROR."""
        transport.close("protocol_violation", _CLOSE_POLICY)  # before the engine's own close
        with contextlib.suppress(TetherError):  # the session may already have moved on
            await link.protocol_violation(message)


def _too_large(data: str | bytes, limit: int) -> bool:
    """Whether a frame is over ``limit`` bytes. A text frame arrives decoded: its UTF-8 length is
    1 to 4 bytes per character, so only one that might be over is encoded to be measured."""
    if len(data) > limit:
        return True
    return isinstance(data, str) and len(data) * 4 > limit and len(data.encode()) > limit
