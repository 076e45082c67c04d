"""An agent's connection to its session, as the transport holding the agent sees it.

``Engine.agent_hello`` returns an :class:`AgentLink`; the transport (the WebSocket handler, an
in-process simulated agent) reports what its agent says through it. A link speaks for its
session only while it is the session's current transport: once the session resumed on another
link, entered GRACE_PERIOD or ended, every call raises :class:`AgentLinkClosed` and the
transport is told to close through :meth:`AgentTransport.close`.

Text an agent reports (a command, its id, a user email, a goodbye reason) is held to the rules
of the same text from the API (:func:`~tether.engine._models.check_text`): a call with bad text
raises :class:`InvalidParameter` before it reaches the session, so nothing of it is stored.
Heartbeats and telemetry carry no text and pay nothing for this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ._errors import AgentLinkClosed, InvalidParameter
from ._lifecycle import Input
from ._models import MAX_COMMAND, MAX_DETAIL, MAX_EMAIL, check_exit_code, check_text

if TYPE_CHECKING:
    from ._journal import Journal
    from ._models import Telemetry, Welcome
    from ._output import OutputStream
    from ._ports import AgentTransport
    from ._record import SessionRecord

#: The longest run a command result may report: a year.
MAX_DURATION_MS = 365 * 24 * 3600 * 1000


class LinkHost(Protocol):
    """What a link needs of the engine: somewhere to report its agent's lifecycle inputs and
    commands (each runs in the session's actor)."""

    def report_input(self, link: AgentLink, inp: Input, detail: str | None = None) -> None: ...

    def report_command(
        self,
        link: AgentLink,
        command_id: str | None,
        command: str,
        exit_code: int,
        executed_at: float | None,
        user_email: str | None,
    ) -> str: ...

    def report_result(self, link: AgentLink, command_id: str, exit_code: int,
                      duration_ms: int | None) -> None: ...

    def report_output(self, link: AgentLink, offset: int, data: str, stream: OutputStream,
                      command_id: str | None) -> None: ...


class AgentLink:
    """The handle through which one transport reports its agent's messages."""

    __slots__ = ("_host", "_record", "transport", "welcome")

    def __init__(self, host: LinkHost, record: SessionRecord, transport: AgentTransport) -> None:
        self._host = host
        self._record = record
        self.transport = transport
        self.welcome: Welcome | None = None

    @property
    def session_id(self) -> str:
        return self._record.session_id

    @property
    def workspace_id(self) -> str:
        return self._record.workspace_id

    @property
    def active(self) -> bool:
        """Whether this link still carries its session."""
        return self._record.link is self

    def _check(self) -> SessionRecord:
        rec = self._record
        if rec.link is not self:
            raise AgentLinkClosed(rec.session_id, rec.status.value)
        return rec

    # -- the hot path: in place, no actor wake-up ------------------------------------------

    def heartbeat(self, telemetry: Telemetry | None = None) -> None:
        """The agent is alive (and maybe sent telemetry with it)."""
        rec = self._record
        if rec.link is not self:
            raise AgentLinkClosed(rec.session_id, rec.status.value)
        now = trio.current_time()
        rec.last_heartbeat = now
        rec.version += 1
        if telemetry is not None:
            rec.telemetry = telemetry
            rec.telemetry_at = now

    def telemetry(self, telemetry: Telemetry) -> None:
        """A telemetry sample; it also proves the agent alive."""
        self.heartbeat(telemetry)

    def output(self, offset: int, data: str, stream: OutputStream = "stdout",
               command_id: str | None = None) -> None:
        """Output the agent wrote at byte ``offset`` of its session's stream (in place, like a
        heartbeat). Bytes the session has already are skipped; an offset beyond the next one
        raises :class:`~tether.engine.OutputGap` with the offset expected."""
        self._check()
        self._host.report_output(self, offset, data, stream, command_id)

    # -- lifecycle, through the actor ------------------------------------------------------

    async def _input(self, inp: Input, detail: str | None = None) -> None:
        rec = self._check()
        assert rec.actor is not None  # a session with a link is live
        await rec.actor.call(self._host.report_input, self, inp, detail)

    async def background(self) -> None:
        await self._input(Input.BACKGROUND)

    async def foreground(self) -> None:
        await self._input(Input.FOREGROUND)

    async def goodbye(self, reason: str | None = None) -> None:
        """The agent leaves: the session ends, keeping ``reason`` as its ``reason_detail``."""
        if reason is not None:
            check_text("reason", reason, MAX_DETAIL)
        await self._input(Input.GOODBYE, reason)

    async def fatal_error(self, code: str, message: str) -> None:
        """The agent reports a fatal error: the session ends in ERROR, keeping
        ``"code: message"`` as its ``reason_detail`` (held to the text rules like any text
        an agent reports, so it is refused before anything is stored)."""
        check_text("code", code)
        check_text("message", message, MAX_DETAIL)
        await self._input(Input.AGENT_ERROR, f"{code}: {message}")

    async def protocol_violation(self, message: str) -> None:
        """The transport gave up on the agent's messages: the session ends in ERROR."""
        await self._input(Input.PROTOCOL_ERROR, message)

    async def report_command(
        self,
        command: str,
        exit_code: int,
        *,
        command_id: str | None = None,
        executed_at: float | None = None,
        user_email: str | None = None,
    ) -> str:
        """A command the agent ran; returns its command id (made up if not given)."""
        check_text("command", command, MAX_COMMAND)
        check_exit_code(exit_code)
        if command_id is not None:
            check_text("command_id", command_id)
        if user_email is not None:
            check_text("user_email", user_email, MAX_EMAIL)
        rec = self._check()
        assert rec.actor is not None
        return await rec.actor.call(self._host.report_command, self, command_id, command,
                                    exit_code, executed_at, user_email)

    async def command_result(self, command_id: str, exit_code: int,
                             duration_ms: int | None = None) -> None:
        """The outcome of a ``run_command`` this agent was sent (``duration_ms``: how long it
        ran, as the agent measured it)."""
        check_text("command_id", command_id)
        check_exit_code(exit_code)
        if duration_ms is not None and not 0 <= duration_ms <= MAX_DURATION_MS:
            raise InvalidParameter("duration_ms", f"must be 0 to {MAX_DURATION_MS}")
        rec = self._check()
        assert rec.actor is not None
        await rec.actor.call(self._host.report_result, self, command_id, exit_code, duration_ms)

    def transport_lost(self) -> None:
        """The transport is gone. Never blocks, so it is safe in a ``finally`` while cancelled.

        The session enters GRACE_PERIOD unless it already moved on (resumed elsewhere, ended).
        """
        rec = self._record
        if rec.link is self and rec.actor is not None:
            rec.actor.post(self._host.report_input, self, Input.TRANSPORT_CLOSED)


class JournaledLink(AgentLink):
    """A link of an engine with a store: heartbeats and telemetry are also marked for the
    journal's next flush (a subclass, so the in-memory hot path pays nothing for it)."""

    __slots__ = ("_journal",)

    def __init__(self, host: LinkHost, record: SessionRecord, transport: AgentTransport,
                 journal: Journal) -> None:
        super().__init__(host, record, transport)
        self._journal = journal

    def heartbeat(self, telemetry: Telemetry | None = None) -> None:
        super().heartbeat(telemetry)
        self._journal.beaten(self._record)
