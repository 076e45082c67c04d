"""The engine: the supervisor of session actors, and the API people embed.

``async with Engine(config) as engine:`` opens a nursery that owns every session actor, the
timekeeper and the purger. The supervisor routes inputs to actors by session id, keeps the
machine -> active session map, the read index and the event log; queries are answered from
the index and records without asking any actor.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from ._actor import SessionActor
from ._clock import WallClock
from ._config import EngineConfig
from ._errors import (
    AgentLinkClosed,
    ClientNotFound,
    ClientNotOperator,
    DuplicateCommand,
    EngineClosed,
    InvalidParameter,
    NoActiveSession,
    ResumeRejected,
    SessionAlreadyActive,
    SessionNotActive,
    SessionNotFound,
)
from ._events import EventLog, Subscription
from ._ids import MonotonicIds, random_id
from ._index import ReadIndex
from ._lifecycle import Input, Transition, step
from ._link import AgentLink, AgentTransport
from ._models import (
    CLIENT_MODES,
    MAX_COMMAND,
    MAX_DETAIL,
    MAX_EMAIL,
    AttachedClient,
    ClientMode,
    CommandEntry,
    CommandView,
    Event,
    EventClient,
    EventCommand,
    HistoryPage,
    MachineSession,
    Metrics,
    PageMeta,
    RunCommand,
    SessionDetail,
    SessionPage,
    Status,
    Welcome,
    check_text,
)
from ._record import OperatorCommand, SessionRecord
from ._timers import Timekeeper

if TYPE_CHECKING:
    from types import TracebackType

MAX_PAGE = 100
DEFAULT_PAGE = 20
DEFAULT_HISTORY = 50
MAX_HISTORY = 1000


class Engine:
    """An in-memory session engine. Open it with ``async with``.

    Writes are ``async`` (they go through the session's actor); queries are plain calls.
    Every call is scoped to a workspace: another workspace's session is "not found".
    """

    def __init__(self, config: EngineConfig | None = None, *, clock: WallClock | None = None):
        self.config = config or EngineConfig()
        self._clock_arg = clock
        self.clock: WallClock
        self.timekeeper = Timekeeper()
        self._records: dict[str, SessionRecord] = {}
        self._index = ReadIndex(self._records)
        self._active: dict[tuple[str, str], SessionRecord] = {}  # (workspace, machine) -> live
        self._ended: deque[tuple[float, str]] = deque()  # (ended_at, session_id), in end order
        self._purge_lot = trio.lowlevel.ParkingLot()
        self._session_ids = MonotonicIds("sess_")
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._services = trio.CancelScope()
        self._closing = False
        self.events: EventLog

    # -- opening and closing ---------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self.clock = self._clock_arg or WallClock()
        self.events = EventLog(
            self.clock,
            run_id=secrets.randbits(40),
            max_events=self.config.event_log_max,
            retention=self.config.event_retention,
        )
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._run_services)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is None:
            self.shutdown()
        self._services.cancel()
        try:
            result: bool | None = await self._nursery_cm.__aexit__(exc_type, exc, tb)
        finally:
            self.events.close()
            self._nursery = None
        return result

    def shutdown(self, reason: Input = Input.SERVER_SHUTDOWN) -> None:
        """Take no new sessions and end every live one (reason ``server_shutdown``).

        Each actor is told by message and returns by itself (cheaper than cancelling it); the
        ``async with`` block's exit waits for them.
        """
        self._closing = True
        for rec in list(self._active.values()):
            if rec.actor is not None:
                rec.actor.post(self._end_input, rec, reason)

    async def _run_services(self) -> None:
        with self._services:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.timekeeper.run)
                nursery.start_soon(self._purge_ended)

    def _spawn(self, rec: SessionRecord) -> None:
        if self._nursery is None or self._closing:
            raise EngineClosed()
        actor = SessionActor(self, rec)
        rec.actor = actor
        self._nursery.start_soon(actor.run)

    # -- lifecycle effects (called from actors, or before an actor exists) -----------------

    def transition(self, rec: SessionRecord, inp: Input, detail: str | None = None) -> Transition:
        """Apply ``inp`` to ``rec``: status, reason, version, indexes, links, events.

        ``detail`` is the agent's own words for the change (kept as ``reason_detail``).
        """
        t = step(rec.status, inp)
        now = trio.current_time()
        previous = rec.status
        if t.status.final:
            self._detach_all(rec)
        rec.status = t.status
        rec.reason = t.reason
        rec.reason_detail = None if detail is None else detail[:MAX_DETAIL]
        rec.status_since = now
        rec.version += 1
        if t.status is Status.CONNECTED and rec.connected_at is None:
            rec.connected_at = now
        if previous is not t.status:
            self._index.move(rec, previous)
        if t.status is Status.GRACE_PERIOD or t.status.final:
            self._release_link(rec, t.reason)
        if t.status.final:
            rec.ended_at = now
            self._finish(rec)
        if rec.reason_detail is None:
            self._emit(rec, t.event, previous, t.reason, now)
        else:
            self._emit(rec, t.event, previous, t.reason, now, reason_detail=rec.reason_detail)
        return t

    def _emit(
        self,
        rec: SessionRecord,
        type: str,
        previous: Status | None,
        reason: str | None,
        now: float,
        **extra: Any,
    ) -> Event:
        rec.sequence += 1
        data = rec.event_data(self.clock, previous, reason, **extra)
        return self.events.append(type, now, rec.workspace_id, rec.session_id, rec.sequence, data)

    def _detach_all(self, rec: SessionRecord) -> None:
        if rec.clients:
            for client_id in list(rec.clients):
                self._detach(rec, client_id, "session_ended")

    def _detach(self, rec: SessionRecord, client_id: str, reason: str) -> None:
        assert rec.clients is not None
        client = rec.clients.pop(client_id)
        rec.version += 1
        self._emit(
            rec,
            "session.client_detached",
            rec.status,
            reason,
            trio.current_time(),
            client=EventClient(
                client_id=client.client_id, user_email=client.user_email, mode=client.mode
            ),
        )

    @staticmethod
    def _release_link(rec: SessionRecord, reason: str) -> None:
        link = rec.link
        if link is not None:
            rec.link = None
            link.transport.close(reason)

    def _finish(self, rec: SessionRecord) -> None:
        key = (rec.workspace_id, rec.machine_id)
        if self._active.get(key) is rec:
            del self._active[key]
        rec.resume_secret = None
        if rec.commands:
            for command in rec.commands.values():
                if command.state == "pending":
                    command.state = "lost"
        was_empty = not self._ended
        self._ended.append((trio.current_time(), rec.session_id))
        if was_empty:
            self._purge_lot.unpark_all()

    async def _purge_ended(self) -> None:
        ended = self._ended
        while True:
            if not ended:
                await self._purge_lot.park()
                continue
            at, session_id = ended[0]
            due = at + self.config.retention
            if trio.current_time() < due:
                await trio.sleep_until(due)  # later entries end later: nothing can come sooner
                continue
            ended.popleft()
            self._purge(session_id)

    def _purge(self, session_id: str) -> None:
        # Its own frame: a local of ``_purge_ended`` would keep the last purged record alive.
        rec = self._records.pop(session_id, None)
        if rec is not None:
            self._index.remove(rec)

    # -- handlers run inside actors --------------------------------------------------------

    def _end_input(self, rec: SessionRecord, inp: Input) -> None:
        if not rec.status.final:
            self.transition(rec, inp)

    def link_input(self, link: AgentLink, inp: Input, detail: str | None = None) -> None:
        rec = link._record
        if rec.link is not link:
            if inp is Input.TRANSPORT_CLOSED:
                return  # the session already moved on; nothing to do
            raise AgentLinkClosed(rec.session_id, rec.status.value)
        self.transition(rec, inp, detail)

    def link_command(
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
        entry = CommandEntry(
            command_id=command_id,
            command=command,
            exit_code=exit_code,
            executed_at=self.clock.rfc3339(now if executed_at is None else executed_at),
            user_email=user_email,
        )
        self._record_executed(rec, entry, now)
        return command_id

    def link_command_result(self, link: AgentLink, command_id: str, exit_code: int) -> None:
        rec = link._check()
        pending = None if rec.commands is None else rec.commands.get(command_id)
        if pending is None or pending.state != "pending":
            raise InvalidParameter("command_id", "no pending command with this id")
        now = trio.current_time()
        pending.state = "completed" if exit_code == 0 else "failed"
        pending.exit_code = exit_code
        pending.completed_at = now
        entry = CommandEntry(
            command_id=command_id,
            command=pending.command,
            exit_code=exit_code,
            executed_at=self.clock.rfc3339(now),
            user_email=pending.user_email,
        )
        self._record_executed(rec, entry, now)

    def _record_executed(self, rec: SessionRecord, entry: CommandEntry, now: float) -> None:
        rec.record_command(entry, self.config.history_cap)
        rec.version += 1
        self._emit(
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
            ),
        )

    # -- writes ----------------------------------------------------------------------------

    def _new_record(
        self, workspace_id: str, machine_id: str, machine_hostname: str
    ) -> SessionRecord:
        if self._closing or self._nursery is None:
            raise EngineClosed()
        check_text("workspace_id", workspace_id)
        check_text("machine_id", machine_id)
        check_text("machine_hostname", machine_hostname)
        now = trio.current_time()
        rec = SessionRecord(
            self._session_ids.next(self.clock.wall_ms(now)),
            workspace_id,
            machine_id,
            machine_hostname,
            now,
        )
        self._records[rec.session_id] = rec
        self._active[(workspace_id, machine_id)] = rec
        self._index.add(rec)
        rec.reason = "created"
        self._emit(rec, "session.created", None, "created", now)
        return rec

    async def create_session(
        self, workspace_id: str, machine_id: str, machine_hostname: str
    ) -> SessionDetail:
        """A PENDING session for a machine, waiting for its agent's hello.

        Raises :class:`SessionAlreadyActive` if the machine has a live session.
        """
        await trio.lowlevel.checkpoint()
        check_text("machine_id", machine_id)
        check_text("machine_hostname", machine_hostname)
        existing = self._active.get((workspace_id, machine_id))
        if existing is not None:
            raise SessionAlreadyActive(machine_id, existing.session_id, existing.status.value)
        rec = self._new_record(workspace_id, machine_id, machine_hostname)
        self._spawn(rec)
        return rec.detail(self.clock)

    async def agent_hello(
        self,
        workspace_id: str,
        transport: AgentTransport,
        *,
        machine_id: str,
        machine_hostname: str,
        resume_token: str | None = None,
        agent_version: str | None = None,
    ) -> AgentLink:
        """An agent says hello: resume its session, pick up a PENDING one, or start one.

        With a ``resume_token``, the session it names resumes on ``transport`` (or
        :class:`ResumeRejected`). Without one, a PENDING session waiting for the machine is
        connected; any other live session of the machine ends (``replaced``) and a new one
        starts. The returned link's ``welcome`` is what to tell the agent.

        The hello's text is checked (:class:`InvalidParameter`) before anything changes, so a
        refused hello never ends the machine's live session.
        """
        check_text("machine_id", machine_id)
        check_text("machine_hostname", machine_hostname)
        if agent_version is not None:
            check_text("agent_version", agent_version)
        if resume_token is not None:
            return await self._resume(workspace_id, transport, machine_id, resume_token)
        while True:
            existing = self._active.get((workspace_id, machine_id))
            if existing is None:
                break
            actor = existing.actor
            if existing.status is Status.PENDING and actor is not None:
                link = AgentLink(self, existing, transport)
                try:
                    await actor.call(self._connect, link, machine_hostname, agent_version)
                except SessionNotActive:
                    continue  # it timed out or ended meanwhile: look again
                return link
            if actor is not None:
                # End the old session first, then look again: another hello may have raced us.
                with contextlib.suppress(SessionNotActive):
                    await actor.call(self._replace_input, existing)
            else:
                await trio.lowlevel.checkpoint()
        rec = self._new_record(workspace_id, machine_id, machine_hostname)
        rec.agent_version = agent_version
        link = AgentLink(self, rec, transport)
        self._connect(link, machine_hostname, agent_version)
        self._spawn(rec)
        return link

    def _replace_input(self, rec: SessionRecord) -> None:
        if not rec.status.final:
            self.transition(rec, Input.REPLACED)

    def _connect(self, link: AgentLink, machine_hostname: str, agent_version: str | None) -> None:
        rec = link._record
        self.transition(rec, Input.AGENT_CONNECTED)
        rec.agent_version = agent_version
        self._bind_link(rec, link, resumed=False)

    def _bind_link(self, rec: SessionRecord, link: AgentLink, *, resumed: bool) -> None:
        previous = rec.link
        rec.link = link
        if previous is not None and previous is not link:
            previous.transport.close("resumed_elsewhere")
        rec.resume_secret = secrets.token_urlsafe(24)
        config = self.config
        link.welcome = Welcome(
            session_id=rec.session_id,
            resume_token=f"rt_{rec.session_id}.{rec.resume_secret}",
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            grace_period=config.grace_period,
            resumed=resumed,
        )

    async def _resume(
        self, workspace_id: str, transport: AgentTransport, machine_id: str, token: str
    ) -> AgentLink:
        rec = self._resumable(workspace_id, machine_id, token)
        if rec is None or rec.actor is None:
            await trio.lowlevel.checkpoint()
            raise ResumeRejected()
        link = AgentLink(self, rec, transport)
        await rec.actor.call(self._resume_input, link, token)
        return link

    def _resumable(self, workspace_id: str, machine_id: str, token: str) -> SessionRecord | None:
        session_id, dot, secret = token.removeprefix("rt_").partition(".")
        rec = self._records.get(session_id) if dot and token.startswith("rt_") else None
        if (
            rec is None
            or rec.resume_secret is None
            or rec.workspace_id != workspace_id
            or rec.machine_id != machine_id
            or rec.status not in (Status.CONNECTED, Status.BACKGROUND, Status.GRACE_PERIOD)
            or not hmac.compare_digest(secret.encode(), rec.resume_secret.encode())
        ):
            return None
        return rec

    def _resume_input(self, link: AgentLink, token: str) -> None:
        rec = link._record
        # Re-check inside the actor: the session may have moved on since the hello arrived.
        if self._resumable(rec.workspace_id, rec.machine_id, token) is not rec:
            raise ResumeRejected()
        self.transition(rec, Input.RESUMED)
        self._bind_link(rec, link, resumed=True)

    async def terminate(self, workspace_id: str, session_id: str) -> SessionDetail:
        """End a live session (reason ``terminated``); 409 if it has already ended."""
        rec = self._live_record(workspace_id, session_id)
        await rec.actor.call(self._terminate_input, rec)
        return rec.detail(self.clock)

    def _terminate_input(self, rec: SessionRecord) -> None:
        self.transition(rec, Input.TERMINATED)

    async def attach_client(
        self, workspace_id: str, session_id: str, user_email: str, mode: ClientMode
    ) -> AttachedClient:
        """Attach an operator or observer to a CONNECTED session."""
        check_text("user_email", user_email, MAX_EMAIL)
        if mode not in CLIENT_MODES:
            raise InvalidParameter("mode", "must be 'operator' or 'observer'")
        rec = self._live_record(workspace_id, session_id, "CONNECTED")
        client: AttachedClient = await rec.actor.call(self._attach, rec, user_email, mode)
        return client

    def _attach(self, rec: SessionRecord, user_email: str, mode: ClientMode) -> AttachedClient:
        if rec.status is not Status.CONNECTED:
            raise SessionNotActive(rec.status.value)
        now = trio.current_time()
        client = AttachedClient(
            client_id=random_id("cli_"),
            user_email=user_email,
            mode=mode,
            attached_at=self.clock.rfc3339(now),
        )
        if rec.clients is None:
            rec.clients = {}
        rec.clients[client.client_id] = client
        rec.version += 1
        self._emit(
            rec,
            "session.client_attached",
            rec.status,
            None,
            now,
            client=EventClient(client_id=client.client_id, user_email=user_email, mode=mode),
        )
        return client

    async def detach_client(self, workspace_id: str, session_id: str, client_id: str) -> None:
        """Detach a client from a live session."""
        rec = self._live_record(workspace_id, session_id)
        await rec.actor.call(self._detach_input, rec, client_id)

    def _detach_input(self, rec: SessionRecord, client_id: str) -> None:
        if rec.status.final:
            raise SessionNotActive(rec.status.value, "an active")
        if not rec.clients or client_id not in rec.clients:
            raise ClientNotFound(client_id)
        self._detach(rec, client_id, "detached")

    async def run_command(
        self, workspace_id: str, session_id: str, client_id: str, command: str
    ) -> CommandView:
        """An attached operator's command: sent to the agent as ``run_command``."""
        check_text("command", command, MAX_COMMAND)
        rec = self._live_record(workspace_id, session_id, "CONNECTED")
        view: CommandView = await rec.actor.call(self._run_command, rec, client_id, command)
        return view

    def _run_command(self, rec: SessionRecord, client_id: str, command: str) -> CommandView:
        if rec.status is not Status.CONNECTED or rec.link is None:
            raise SessionNotActive(rec.status.value)
        client = rec.clients.get(client_id) if rec.clients else None
        if client is None:
            raise ClientNotFound(client_id)
        if client.mode != "operator":
            raise ClientNotOperator(client_id)
        if rec.commands is None:
            rec.commands = {}
        commands = rec.commands
        pending = OperatorCommand(
            random_id("cmd_"), command, client_id, client.user_email, trio.current_time()
        )
        commands[pending.command_id] = pending
        if len(commands) > self.config.history_cap:  # forget the oldest finished one
            for old_id, old in commands.items():
                if old.state != "pending":
                    del commands[old_id]
                    break
        rec.version += 1
        rec.link.transport.send_run_command(
            RunCommand(command_id=pending.command_id, command=command, user_email=client.user_email)
        )
        return rec.command_view(pending.command_id, self.clock)

    # -- queries ---------------------------------------------------------------------------

    def _record(self, workspace_id: str, session_id: str) -> SessionRecord:
        rec = self._records.get(session_id)
        if rec is None or rec.workspace_id != workspace_id:
            raise SessionNotFound(session_id)
        return rec

    def _live_record(
        self, workspace_id: str, session_id: str, required: str = "an active"
    ) -> SessionRecord:
        rec = self._record(workspace_id, session_id)
        if rec.actor is None or (required == "CONNECTED" and rec.status is not Status.CONNECTED):
            raise SessionNotActive(rec.status.value, required)
        return rec

    def list_sessions(
        self,
        workspace_id: str,
        *,
        status: Status | str | None = None,
        machine_id: str | None = None,
        machine_hostname: str | None = None,
        limit: int = DEFAULT_PAGE,
        offset: int = 0,
    ) -> SessionPage:
        """Sessions newest first, filtered, with exact ``total`` and ``has_more``."""
        if status is not None and not isinstance(status, Status):
            try:
                status = Status(status)
            except ValueError:
                raise InvalidParameter(
                    "status", "must be one of " + ", ".join(s.value for s in Status)
                ) from None
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_PAGE}")
        if not isinstance(offset, int) or offset < 0:
            raise InvalidParameter("offset", "must be a non-negative integer")
        total, records = self._index.page(
            workspace_id,
            status=status,
            machine_id=machine_id,
            machine_hostname=machine_hostname,
            limit=limit,
            offset=offset,
        )
        clock = self.clock
        return SessionPage(
            data=[rec.summary(clock) for rec in records],
            meta=PageMeta(
                total=total, limit=limit, offset=offset, has_more=offset + len(records) < total
            ),
        )

    def get_session(self, workspace_id: str, session_id: str) -> SessionDetail:
        return self._record(workspace_id, session_id).detail(self.clock)

    def machine_session(self, workspace_id: str, machine_id: str) -> MachineSession:
        """The machine's active (non-final) session."""
        rec = self._active.get((workspace_id, machine_id))
        if rec is None:
            raise NoActiveSession(machine_id)
        return rec.machine_view(self.clock)

    def history(
        self,
        workspace_id: str,
        session_id: str,
        *,
        limit: int = DEFAULT_HISTORY,
        before: str | None = None,
    ) -> HistoryPage:
        """The latest ``limit`` commands (before the cursor ``before``), oldest first."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY:
            raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_HISTORY}")
        rec = self._record(workspace_id, session_id)
        return rec.history_page(limit, before, self.config.history_cap)

    def metrics(self, workspace_id: str, session_id: str) -> Metrics:
        """The latest telemetry of a CONNECTED session."""
        rec = self._record(workspace_id, session_id)
        if rec.status is not Status.CONNECTED:
            raise SessionNotActive(rec.status.value)
        return rec.metrics(self.clock)

    def get_command(self, workspace_id: str, session_id: str, command_id: str) -> CommandView:
        return self._record(workspace_id, session_id).command_view(command_id, self.clock)

    # -- events ----------------------------------------------------------------------------

    def subscribe(
        self, workspace_id: str | None = None, *, after: str | None = None
    ) -> Subscription:
        """A live stream of events, from now or from the event after ``after``.

        See :class:`~tether.engine.EventsMissed` for a subscriber that falls behind.
        """
        return self.events.subscribe(workspace_id, after)

    def events_after(
        self, workspace_id: str, after: str | None = None, limit: int = 100
    ) -> list[Event]:
        """Retained events of a workspace after ``after`` (from the oldest if ``None``).

        Raises :class:`EventsGone` (410) if events after ``after`` are no longer retained.
        """
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidParameter("limit", "must be an integer from 1 to 1000")
        start = self.events.offset_after(after, trio.current_time())
        return self.events.read(workspace_id, start, limit)[0]

    # -- introspection ---------------------------------------------------------------------

    @property
    def live_sessions(self) -> int:
        return len(self._active)

    @property
    def retained_sessions(self) -> int:
        return len(self._records)
