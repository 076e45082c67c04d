"""The agent protocol's side of the engine: hello, resume and replace, and what a link reports.

A hello without a resume token connects the machine's PENDING session, or ends the machine's
other live session (``replaced``) and starts a new one: one active session per machine. A hello
with a token resumes the session it names, on the new transport. What a connected agent
reports through its :class:`~tether.engine.AgentLink` (lifecycle inputs, commands it ran, the
results of commands it was sent) runs here, inside the session's actor.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from typing import TYPE_CHECKING

import trio

from ._apply import close_transport
from ._errors import (
    AgentLinkClosed,
    DuplicateCommand,
    InvalidParameter,
    ResumeRejected,
    SessionMoved,
    SessionNotActive,
    StoreUnavailable,
)
from ._ids import random_id
from ._lifecycle import Input
from ._link import AgentLink, JournaledLink
from ._models import CommandEntry, EventCommand, Status, Welcome, check_text
from ._persist import resume_hash

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._apply import Applier
    from ._clock import WallClock
    from ._config import EngineConfig
    from ._io import IoDesk
    from ._output import OutputStream
    from ._ports import AgentTransport
    from ._record import SessionRecord
    from ._table import SessionTable

_RESUMABLE = (Status.CONNECTED, Status.BACKGROUND, Status.GRACE_PERIOD)


class AgentDesk:
    """Agents' hellos, and the reports of their links (it is every link's ``LinkHost``)."""

    def __init__(
        self,
        table: SessionTable,
        applier: Applier,
        config: EngineConfig,
        clock: WallClock,
        new_session: Callable[[str, str, str], SessionRecord],
        spawn: Callable[[SessionRecord], None],
        own: Callable[[SessionRecord], Awaitable[None]],
        stored_resume_hash: Callable[[SessionRecord], Awaitable[bytes | None]],
        io: IoDesk,
    ) -> None:
        self.table = table
        self.applier = applier
        self.config = config
        self.clock = clock
        self._new_session = new_session
        self._spawn = spawn
        self._own = own  # take over a session another node owns (with a shared store)
        self._stored_resume_hash = stored_resume_hash
        self.io = io  # where links' output goes

    # -- hello -------------------------------------------------------------------------------

    async def hello(
        self,
        workspace_id: str,
        transport: AgentTransport,
        machine_id: str,
        machine_hostname: str,
        resume_token: str | None,
        agent_version: str | None,
    ) -> AgentLink:
        check_text("machine_id", machine_id)
        check_text("machine_hostname", machine_hostname)
        if agent_version is not None:
            check_text("agent_version", agent_version)
        self.applier.check_writable()
        if resume_token is not None:
            return await self._resume(workspace_id, transport, machine_id, resume_token)
        active = self.table.active
        while True:
            existing = active(workspace_id, machine_id)
            if existing is None:
                break
            if existing.owner is not None:
                await self._own(existing)  # run it here first, then replace it
                continue
            actor = existing.actor
            if existing.status is Status.PENDING and actor is not None:
                link = self._link(existing, transport)
                try:
                    await self._acknowledged(link, actor.call(self._connect, link,
                                                               agent_version))
                except SessionNotActive:
                    continue  # it timed out or ended meanwhile: look again
                return link
            if actor is not None:
                # End the old session first, then look again: another hello may have raced us.
                # (SessionMoved: another node took it over meanwhile; it is that node's to
                # end, or to take over here again: look again.)
                with contextlib.suppress(SessionNotActive, SessionMoved):
                    await actor.call(self._replace, existing)
            else:
                await trio.lowlevel.checkpoint()
        rec = self._new_session(workspace_id, machine_id, machine_hostname)
        link = self._link(rec, transport)
        self._connect(link, agent_version)
        self._spawn(rec)
        journal = self.applier.journal
        if journal is not None:
            await self._acknowledged(link, journal.commit())  # the welcome acknowledges it
        return link

    @staticmethod
    async def _acknowledged(link: AgentLink, done: Awaitable[object]) -> None:
        """Await ``done`` (the hello's change, made durable); if the store cannot make it
        durable in time, the agent is told so and its transport is treated as lost: the
        session (kept, and written once the store is back) waits in GRACE_PERIOD for the
        agent to resume it, instead of staying CONNECTED to a socket nobody reads."""
        try:
            await done
        except StoreUnavailable:
            link.transport_lost()
            raise

    def _link(self, rec: SessionRecord, transport: AgentTransport) -> AgentLink:
        journal = self.applier.journal
        if journal is None:
            return AgentLink(self, rec, transport)
        return JournaledLink(self, rec, transport, journal)

    def _replace(self, rec: SessionRecord) -> None:
        self.applier.end(rec, Input.REPLACED, trio.current_time())

    def _connect(self, link: AgentLink, agent_version: str | None) -> None:
        rec = link._record
        self.applier.change(rec, Input.AGENT_CONNECTED, trio.current_time())
        rec.agent_version = agent_version
        self._bind(rec, link, resumed=False)

    def _bind(self, rec: SessionRecord, link: AgentLink, *, resumed: bool) -> None:
        previous = rec.link
        rec.link = link
        if previous is not None and previous is not link:
            close_transport(previous.transport, "resumed_elsewhere")
        secret = secrets.token_urlsafe(24)
        rec.resume_hash = resume_hash(secret)
        config = self.config
        link.welcome = Welcome(
            session_id=rec.session_id,
            resume_token=f"rt_{rec.session_id}.{secret}",
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            grace_period=config.grace_period,
            resumed=resumed,
            output_offset=self.io.next_offset(rec),
        )

    async def _resume(
        self, workspace_id: str, transport: AgentTransport, machine_id: str, token: str
    ) -> AgentLink:
        rec = self._resumable(workspace_id, machine_id, token)
        if rec is None:
            rec = await self._resumable_stored(workspace_id, machine_id, token)
        if rec is not None and rec.owner is not None:
            # Its agent left the node that owns it and came here: run it here, as stored now.
            await self._own(rec)
            rec = self._resumable(workspace_id, machine_id, token)
        actor = None if rec is None else rec.actor
        if rec is None or actor is None:
            await trio.lowlevel.checkpoint()
            raise ResumeRejected()
        link = self._link(rec, transport)
        await self._acknowledged(link, actor.call(self._resume_in_actor, link, token))
        return link

    def _resumable(self, workspace_id: str, machine_id: str, token: str) -> SessionRecord | None:
        session_id, secret = _token_parts(token)
        rec = self.table.records.get(session_id) if secret else None
        if (
            rec is None
            or rec.resume_hash is None
            or rec.workspace_id != workspace_id
            or rec.machine_id != machine_id
            or rec.status not in _RESUMABLE
            or not hmac.compare_digest(resume_hash(secret), rec.resume_hash)
        ):
            return None
        return rec

    async def _resumable_stored(self, workspace_id: str, machine_id: str,
                                token: str) -> SessionRecord | None:
        """A session another node runs whose copy here is behind that node's latest welcome
        (its resume token reaches this node through the change feed a moment later), if the
        store has ``token`` as its resume token: a welcome goes out only once its token is
        stored, so an agent that moves at once (its node died) still resumes."""
        session_id, secret = _token_parts(token)
        rec = self.table.records.get(session_id) if secret else None
        if rec is None or rec.owner is None:
            return None  # unknown here, or run here (then this copy is the latest)
        stored = await self._stored_resume_hash(rec)
        if stored is None or not hmac.compare_digest(resume_hash(secret), stored):
            return None
        rec.resume_hash = stored
        return self._resumable(workspace_id, machine_id, token)

    def _resume_in_actor(self, link: AgentLink, token: str) -> None:
        rec = link._record
        # Re-check inside the actor: the session may have moved on since the hello arrived.
        if self._resumable(rec.workspace_id, rec.machine_id, token) is not rec:
            raise ResumeRejected()
        self.applier.change(rec, Input.RESUMED, trio.current_time())
        self._bind(rec, link, resumed=True)

    # -- what links report (LinkHost), inside the session's actor -----------------------------

    def report_input(self, link: AgentLink, inp: Input, detail: str | None = None) -> None:
        rec = link._record
        if rec.link is not link:
            if inp is Input.TRANSPORT_CLOSED:
                return  # the session already moved on; nothing to do
            raise AgentLinkClosed(rec.session_id, rec.status.value)
        self.applier.change(rec, inp, trio.current_time(), detail)

    def report_command(
        self,
        link: AgentLink,
        command_id: str | None,
        command: str,
        exit_code: int,
        executed_at: float | None,
        user_email: str | None,
    ) -> str:
        rec = link._check()
        now = trio.current_time()
        if command_id is None:
            command_id = random_id("cmd_")
        elif rec.has_command_id(command_id):
            raise DuplicateCommand(command_id)
        self._record_executed(rec, CommandEntry(
            command_id=command_id,
            command=command,
            exit_code=exit_code,
            executed_at=self.clock.rfc3339(now if executed_at is None else executed_at),
            user_email=user_email,
        ), now)
        return command_id

    def report_result(self, link: AgentLink, command_id: str, exit_code: int,
                      duration_ms: int | None) -> None:
        rec = link._check()
        pending = None if rec.commands is None else rec.commands.get(command_id)
        if pending is None or pending.state != "pending":
            raise InvalidParameter("command_id", "no pending command with this id")
        now = trio.current_time()
        pending.state = "completed" if exit_code == 0 else "failed"
        pending.exit_code = exit_code
        pending.completed_at = now
        pending.duration_ms = duration_ms
        self._record_executed(rec, CommandEntry(
            command_id=command_id,
            command=pending.command,
            exit_code=exit_code,
            executed_at=self.clock.rfc3339(now),
            user_email=pending.user_email,
        ), now, pending.took_ms())
        if rec.output is not None and rec.output.watchers:
            rec.output.command_result(command_id, exit_code)

    def report_output(self, link: AgentLink, offset: int, data: str, stream: OutputStream,
                      command_id: str | None) -> None:
        self.io.write(link._record, offset, data, stream, command_id)

    def _record_executed(self, rec: SessionRecord, entry: CommandEntry, now: float,
                         duration_ms: int | None = None) -> None:
        rec.record_command(entry, self.config.history_cap)
        rec.version += 1
        self.applier.emit(
            rec,
            "command.completed" if entry.exit_code == 0 else "command.failed",
            rec.status,
            None,
            now,
            command=EventCommand(
                command_id=entry.command_id,
                command=entry.command,
                exit_code=entry.exit_code,
                user_email=entry.user_email,
                duration_ms=duration_ms,
            ),
        )


def _token_parts(token: str) -> tuple[str, str]:
    """A resume token's session id and secret (``rt_<session id>.<secret>``); an empty
    secret for anything not of that form."""
    session_id, dot, secret = token.removeprefix("rt_").partition(".")
    return (session_id, secret) if dot and token.startswith("rt_") else ("", "")
