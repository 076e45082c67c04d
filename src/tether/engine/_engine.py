"""The engine people embed: the supervisor of session actors, and the calls of the API.

``async with Engine(config) as engine:`` opens a nursery that owns every session actor, the
timekeeper and the purger. The engine is the supervisor (it spawns actors, routes shutdown to
them, and is every actor's ``ActorHost``) and the front of the parts that do the work, one
module each:

- ``_table.py``: records, the machine -> active session map, the read index, retention;
- ``_lifecycle.py`` and ``_apply.py``: the pure lifecycle core, and the adapter that carries
  out its effects;
- ``_agents.py``: hello, resume and replace, and what agents' links report;
- ``_clients.py``: attach, detach and operators' commands;
- ``_io.py`` and ``_output.py``: sessions' output and attach streams (``_remote.py``: with a
  store, streams of sessions another node runs); ``_operators.py``: operators' input, resize
  and signal;
- ``_queries.py``: the reads; ``_events.py``: the event log and its subscribers;
- ``_nurseries.py``: the nurseries actor tasks run in.
"""

from __future__ import annotations

import logging
import math
import secrets
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ._actor import SessionActor
from ._agents import AgentDesk
from ._apply import Applier
from ._clients import ClientDesk
from ._clock import WallClock
from ._config import EngineConfig
from ._errors import (
    EngineClosed,
    InvalidParameter,
    OwnerUnreachable,
    SessionAlreadyActive,
    SessionMoved,
    SessionNotActive,
    SessionNotFound,
    StoreUnavailable,
)
from ._events import EventLog, Subscription
from ._forward import Forwarder
from ._gc import GcGuard
from ._holders import StreamHolders
from ._io import DEFAULT_OUTPUT_READ, DEFAULT_REPLAY, IoDesk, StreamStart
from ._journal import Journal
from ._lifecycle import Input
from ._models import AttachedClient, CommandView, SessionDetail, Status, check_text
from ._nurseries import ActorNurseries
from ._operators import OperatorDesk
from ._owners import ForeignSessions
from ._pacer import Pacer
from ._persist import restore
from ._queries import DEFAULT_HISTORY, DEFAULT_PAGE, MAX_HISTORY, MAX_PAGE, Queries
from ._remote import RemoteStreams
from ._table import SessionTable
from ._timers import Timekeeper

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from ._link import AgentLink
    from ._models import (
        ClientMode,
        Event,
        HistoryPage,
        MachineSession,
        Metrics,
        OperatorFrame,
        OutputPage,
        SessionPage,
    )
    from ._output import OutputWatcher
    from ._persist import Displaced, Loaded, SessionStore
    from ._ports import AgentTransport
    from ._record import SessionRecord

__all__ = ["DEFAULT_HISTORY", "DEFAULT_PAGE", "MAX_HISTORY", "MAX_PAGE", "Engine"]

log = logging.getLogger("tether.engine")


class Engine:
    """An in-memory session engine. Open it with ``async with``.

    Writes are ``async`` (they go through the session's actor); queries are plain calls.
    Every call is scoped to a workspace: another workspace's session is "not found".
    """

    def __init__(self, config: EngineConfig | None = None, *, clock: WallClock | None = None,
                 store: SessionStore | None = None):
        self.config = config or EngineConfig()
        self.store = store
        self.journal: Journal | None = None
        self.foreign: ForeignSessions  # with a store: live sessions other nodes own
        self.forwarder: Forwarder  # with a store: writes for those, carried to their owner
        self._clock_arg = clock
        self.clock: WallClock
        self.timekeeper = Timekeeper()
        self._gc_guard = GcGuard(lambda: self.retained_sessions,
                                 limit=self.config.gc_freeze_limit)
        self.pacer = Pacer(on_work=self._gc_guard.poke)
        self.events: EventLog
        self._table: SessionTable
        self._applier: Applier
        self._agents: AgentDesk
        self._clients: ClientDesk
        self._io: IoDesk
        self._operators: OperatorDesk
        self._queries: Queries
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._actors: ActorNurseries
        self._services = trio.CancelScope()
        self._services_nursery: trio.Nursery | None = None
        # Sessions a write found displaced from their machine, for the services to end.
        self._displaced_send, self._displaced_receive = trio.open_memory_channel[
            "list[Displaced]"](math.inf)
        self._closing = False

    # -- opening and closing ---------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self.clock = clock = self._clock_arg or WallClock()
        config = self.config
        self.events = EventLog(
            clock,
            run_id=secrets.randbits(40),
            max_events=config.event_log_max,
            retention=config.event_retention,
        )
        self._table = table = SessionTable(clock, config.retention)
        self._applier = applier = Applier(table, self.events, clock, config)
        self._io = io = IoDesk(table, applier, clock, config)
        self._operators = OperatorDesk(table)
        self._agents = AgentDesk(table, applier, config, clock, self._new_session, self._spawn,
                                 self._own, self._stored_resume_hash, io)
        self._clients = ClientDesk(table, applier, clock)
        self._queries = Queries(table, clock, config)
        # Each write through the API, as this node runs it for a session it owns.
        clients = self._clients
        self._writes_here: dict[str, tuple[Callable[..., Awaitable[Any]], type[Any] | None]] = {
            "attach": (clients.attach, AttachedClient), "detach": (clients.detach, None),
            "run_command": (clients.run_command, CommandView),
            "terminate": (self._terminate_here, SessionDetail),
            "replace": (self._replace_here, None),
            # another node's attach stream: its client, and its operator's frames
            "attach_stream": (io.attach_stream_here, AttachedClient),
            "stream_client": (io.stream_client_here, AttachedClient),
            "send_operator": (self._operators.send_here, None),
        }
        loaded = None
        if self.store is not None:
            self.foreign = ForeignSessions(self.store, table, clock, config.history_cap,
                                           self._adopt, self.events.place_new,
                                           io.moved_away)
            self.forwarder = Forwarder(self.store)
            io.holders = StreamHolders(self.store, applier)
            for op, (run, result) in self._writes_here.items():
                self.forwarder.add(op, run, result)
            loaded = await self.store.load()
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._run_services)
        self._actors = ActorNurseries(self._nursery)
        await self._actors.open()
        if self.store is not None:
            self.journal = journal = Journal(self.store, clock, self.events, config.history_cap)
            self.events.durable = True
            applier.journal = journal
            io.journal, io.store, io.call_owner = journal, self.store, self._write
            self._operators.call_owner = self._write
            io.spawn = self._start_service
            io.remote = RemoteStreams(self.store, self.events, self._start_service,
                                      DEFAULT_REPLAY)
            table.on_purge = journal.purged
            journal.on_displaced = self._displaced_send.send_nowait
            self._nursery.start_soon(self._run_journal, journal)
            if loaded is not None:
                await self._recover(loaded)
            self.foreign.start()
        return self

    async def _run_journal(self, journal: Journal) -> None:
        """The journal's writer, until every actor has returned and what they did is written."""
        assert self.store is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            nursery.start_soon(self.store.run)  # this node's lease lasts as long as its writes
            await self._actors.wait_closed()
            await journal.settle()  # bounded by whoever waits for the exit (a drain deadline)
            nursery.cancel_scope.cancel()

    async def _recover(self, loaded: Loaded) -> None:
        """Carry on the sessions a store kept: every live one this engine took over gets an
        actor again (see :meth:`_adopt`); those another live node owns stay that node's."""
        clock, config = self.clock, self.config
        if loaded.log is not None:
            self.events.restore(loaded.events, loaded.log.run_id, loaded.log.next_offset)
        records = []
        output_next: dict[str, int] = {}  # of the sessions this engine runs from now on
        # A checkpoint every 1,000 sessions: the store's lease renewal runs meanwhile (restoring
        # 100,000 at a stretch outlasted a lease's TTL).
        for i, stored in enumerate(loaded.sessions):
            if i % 1000 == 999:
                await trio.lowlevel.checkpoint()
            rec = restore(stored, clock, config.history_cap)
            records.append(rec)
            if stored.owner is not None and not rec.status.final:
                self.foreign.add(rec, stored.owner)
            elif not rec.status.final:
                output_next[rec.session_id] = stored.output_next
        self._table.restore(records)
        for i, rec in enumerate(records):
            if i % 1000 == 999:
                await trio.lowlevel.checkpoint()
            if rec.owner is None and not rec.status.final:
                self._adopt(rec, output_next.get(rec.session_id, 0))
        assert self.journal is not None
        # No caller waits on this: a big adoption (100,000 sessions) takes longer than a
        # commit's 5 s bound, and must not fail the start for it.
        await self.journal.settle()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if exc_type is None:
                if self.store is None:
                    self.shutdown()
                else:
                    self.drain()
                # Every actor returns while the pump still paces them: 100,000 woken in one
                # pass of the loop stalled it ~10 s (no socket served, Redis answers late).
                self._actors.close()
                await self._actors.wait_closed()
        finally:
            self.pacer.close()  # whatever is left wakes at once: the pump is about to stop
            self._services.cancel()
            self._actors.close()
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
        for rec in list(self._table.live_records()):
            if rec.actor is not None:
                rec.actor.post(self._end, rec, reason)

    def drain(self) -> None:
        """With a store: take no new sessions and hand every live one over instead of ending
        it. A CONNECTED or BACKGROUND session enters GRACE_PERIOD (``node_draining``), its
        agent's socket is closed, and its actor returns; the store keeps it, and the next run
        of the engine on that store carries it on (its agent may resume there)."""
        self._closing = True
        for rec in list(self._table.live_records()):
            actor = rec.actor
            if actor is not None:
                actor.post(self._socket_gone, rec, Input.NODE_DRAINING)
                actor.stop()

    def _adopt(self, rec: SessionRecord, output_next: int) -> None:
        """Run a live session that another process owned: one that was CONNECTED or
        BACKGROUND lost its agent's socket with that process, so it enters GRACE_PERIOD
        (``node_lost``) and its agent may resume it here, its output going on from
        ``output_next`` (where the store's ends). An engine already stopping runs
        nothing new: the store keeps the session, and another node adopts it once this one's
        lease goes (a node told to stop while it adopted crashed on it)."""
        self._io.run_here(rec, output_next)
        self._socket_gone(rec, Input.NODE_LOST)
        if self._closing:
            return
        self._spawn(rec)

    async def _end_displaced(self, nursery: trio.Nursery) -> None:
        """Two hellos for one machine raced on two nodes and each started a session: the
        store's write of the newer one reports the older, which ends (``replaced``) on the
        node that runs it. If that node does not answer, the session is taken over and
        ended here."""
        async for found in self._displaced_receive:
            for displaced in found:
                nursery.start_soon(self._replace_displaced, displaced)

    async def _replace_displaced(self, displaced: Displaced) -> None:
        ws, sid, owner = displaced
        assert self.store is not None
        try:
            try:
                if owner == self.store.node_id:
                    await self._replace_here(ws, sid)
                else:  # this node may not have read the owner's write yet: ask it directly
                    await self.forwarder.call(owner, "replace", [ws, sid],
                                              partial(OwnerUnreachable, sid, owner))
            except OwnerUnreachable:
                rec = self._table.get(ws, sid)
                await self._own(rec)
                await self._replace_here(ws, sid)
        except (SessionNotFound, SessionNotActive, StoreUnavailable, OwnerUnreachable,
                SessionMoved) as exc:
            log.debug("session %s (machine taken by a newer session, on %s): %s",
                      sid, owner, exc)  # it ended meanwhile, or the store is away

    async def _replace_here(self, workspace_id: str, session_id: str) -> None:
        rec, actor = self._table.live(workspace_id, session_id)
        await actor.call(self._end, rec, Input.REPLACED)

    async def _own(self, rec: SessionRecord) -> None:
        await self.foreign.own(rec)

    async def _stored_resume_hash(self, rec: SessionRecord) -> bytes | None:
        """The resume token hash the store holds for ``rec`` (``None``: none, or no store)."""
        if self.store is None:
            return None
        try:
            loaded = await self.store.read(rec.workspace_id, rec.session_id)
        except Exception as exc:
            raise StoreUnavailable(f"reading the session's resume token: {exc}") from exc
        if loaded is None or loaded.snapshot.resume_hash is None:
            return None
        return bytes.fromhex(loaded.snapshot.resume_hash)

    def _socket_gone(self, rec: SessionRecord, inp: Input) -> None:
        """The agent's socket went with its node (``inp``: lost, or closed by a drain): a
        CONNECTED or BACKGROUND session waits in GRACE_PERIOD for the agent to resume it."""
        if rec.status in (Status.CONNECTED, Status.BACKGROUND):
            self._applier.change(rec, inp, trio.current_time())

    def _end(self, rec: SessionRecord, inp: Input) -> None:
        self._applier.end(rec, inp, trio.current_time())

    def _start_service(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Start a task among the services (cancelled when the engine closes)."""
        assert self._services_nursery is not None
        self._services_nursery.start_soon(fn, *args)

    async def _run_services(self) -> None:
        with self._services:
            async with trio.open_nursery() as nursery:
                self._services_nursery = nursery
                nursery.start_soon(self.timekeeper.run)
                nursery.start_soon(self.pacer.run)
                nursery.start_soon(self._table.run_purger)
                if self.config.gc_freeze_limit:
                    nursery.start_soon(self._gc_guard.run)
                if self.store is not None:
                    nursery.start_soon(self.foreign.run)
                    nursery.start_soon(self.forwarder.serve)
                    assert self._io.holders is not None
                    nursery.start_soon(self._io.holders.run)
                    nursery.start_soon(self._end_displaced, nursery)

    # -- supervising actors (and being their ActorHost) -------------------------------------

    def _new_session(self, workspace_id: str, machine_id: str,
                     machine_hostname: str) -> SessionRecord:
        if self._closing or self._nursery is None:
            raise EngineClosed()
        now = trio.current_time()
        rec = self._table.add(workspace_id, machine_id, machine_hostname, now)
        self._gc_guard.poke()
        self._applier.emit(rec, "session.created", None, "created", now)
        return rec

    def _spawn(self, rec: SessionRecord) -> None:
        if self._nursery is None or self._closing:
            raise EngineClosed()
        actor = SessionActor(self, rec)
        rec.actor = actor
        self._actors.start_soon(actor.run)

    def expire(self, rec: SessionRecord, inp: Input) -> None:
        """An actor's deadline passed (``ActorHost``): apply its timeout input."""
        self._change(rec, inp)

    def _change(self, rec: SessionRecord, inp: Input) -> None:
        self._applier.change(rec, inp, trio.current_time())

    # -- writes ----------------------------------------------------------------------------

    async def create_session(
        self, workspace_id: str, machine_id: str, machine_hostname: str
    ) -> SessionDetail:
        """A PENDING session for a machine, waiting for its agent's hello.

        Raises :class:`SessionAlreadyActive` if the machine has a live session.
        """
        await trio.lowlevel.checkpoint()
        check_text("machine_id", machine_id)
        check_text("machine_hostname", machine_hostname)
        existing = self._table.active(workspace_id, machine_id)
        if existing is not None:
            raise SessionAlreadyActive(machine_id, existing.session_id, existing.status.value)
        self._applier.check_writable()
        rec = self._new_session(workspace_id, machine_id, machine_hostname)
        self._spawn(rec)
        if self.journal is not None:
            await self.journal.commit()
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
        return await self._agents.hello(workspace_id, transport, machine_id, machine_hostname,
                                        resume_token, agent_version)

    async def terminate(self, workspace_id: str, session_id: str) -> SessionDetail:
        """End a live session (reason ``terminated``); 409 if it has already ended."""
        detail: SessionDetail = await self._write("terminate", workspace_id, session_id)
        return detail

    async def _terminate_here(self, workspace_id: str, session_id: str) -> SessionDetail:
        rec, actor = self._table.live(workspace_id, session_id)
        await actor.call(self._change, rec, Input.TERMINATED)
        return rec.detail(self.clock)

    async def attach_client(
        self, workspace_id: str, session_id: str, user_email: str, mode: ClientMode
    ) -> AttachedClient:
        """Attach an operator or observer to a CONNECTED session."""
        client: AttachedClient = await self._write("attach", workspace_id, session_id,
                                                   user_email, mode)
        return client

    async def detach_client(self, workspace_id: str, session_id: str, client_id: str) -> None:
        """Detach a client from a live session."""
        await self._write("detach", workspace_id, session_id, client_id)

    async def run_command(
        self, workspace_id: str, session_id: str, client_id: str, command: str
    ) -> CommandView:
        """An attached operator's command: sent to the agent as ``run_command``."""
        view: CommandView = await self._write("run_command", workspace_id, session_id,
                                              client_id, command)
        return view

    async def _write(self, op: str, workspace_id: str, session_id: str, *args: Any) -> Any:
        """Run a write here, or (a session another node owns) on its owner (``_forward.py``),
        which runs it here-only: it never forwards again."""
        owner = self._owner(workspace_id, session_id)
        if owner is not None:
            return await self.forwarder.call(owner, op, [workspace_id, session_id, *args],
                                             partial(OwnerUnreachable, session_id, owner))
        return await self._writes_here[op][0](workspace_id, session_id, *args)

    def _owner(self, workspace_id: str, session_id: str) -> str | None:
        """The node that runs a live session, if not this one (with a shared store)."""
        rec = self._table.get(workspace_id, session_id)
        return None if rec.status.final else rec.owner

    # -- live session I/O (``_io.py``) -----------------------------------------------------

    async def read_output(self, workspace_id: str, session_id: str, *,
                          offset: int | None = None,
                          limit: int = DEFAULT_OUTPUT_READ) -> OutputPage:
        """Up to ``limit`` bytes of the session's output from ``offset`` (default: the oldest
        retained); :class:`~tether.engine.OutputGone` if that is no longer retained. With a
        store, what this node's memory lacks (or a session another node runs) is read from
        the store."""
        return await self._io.read(workspace_id, session_id, offset, limit)

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
        """Open an attach stream on a CONNECTED or BACKGROUND session: attach a new client
        (``mode``, ``user_email``) or take the attached ``client_id``, and start telling
        ``watcher`` of the session's output and changes. The returned start holds the replay
        from ``offset`` (default: the last 64 KiB), which joins the live output exactly."""
        return await self._io.open_stream(workspace_id, session_id, watcher, mode=mode,
                                          user_email=user_email, client_id=client_id,
                                          offset=offset)

    def close_stream(self, workspace_id: str, session_id: str, watcher: OutputWatcher,
                     detach: str | None = None) -> None:
        """Stop telling ``watcher``, detaching the client ``detach`` (the stream's own).
        Never blocks."""
        self._io.close_stream(workspace_id, session_id, watcher, detach)

    async def send_operator(self, workspace_id: str, session_id: str,
                            frame: OperatorFrame) -> None:
        """An attached operator's input, resize or signal, passed on to the agent (on the
        node that runs the session)."""
        await self._operators.send(workspace_id, session_id, frame)

    # -- queries ---------------------------------------------------------------------------

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
        return self._queries.list_sessions(workspace_id, status, machine_id, machine_hostname,
                                           limit, offset)

    def get_session(self, workspace_id: str, session_id: str) -> SessionDetail:
        return self._queries.get_session(workspace_id, session_id)

    def machine_session(self, workspace_id: str, machine_id: str) -> MachineSession:
        """The machine's active (non-final) session."""
        return self._queries.machine_session(workspace_id, machine_id)

    def history(
        self,
        workspace_id: str,
        session_id: str,
        *,
        limit: int = DEFAULT_HISTORY,
        before: str | None = None,
    ) -> HistoryPage:
        """The latest ``limit`` commands (before the cursor ``before``), oldest first."""
        return self._queries.history(workspace_id, session_id, limit, before)

    def metrics(self, workspace_id: str, session_id: str) -> Metrics:
        """The latest telemetry of a CONNECTED session."""
        return self._queries.metrics(workspace_id, session_id)

    def get_command(self, workspace_id: str, session_id: str, command_id: str) -> CommandView:
        return self._queries.get_command(workspace_id, session_id, command_id)

    # -- events ----------------------------------------------------------------------------

    def subscribe(
        self, workspace_id: str | None = None, *, after: str | None = None,
        from_oldest: bool = False,
    ) -> Subscription:
        """A live stream of events: from now, from the event after ``after``, or (with
        ``from_oldest``) from the oldest retained event.

        See :class:`~tether.engine.EventsMissed` for a subscriber that falls behind.
        """
        return self.events.subscribe(workspace_id, after, from_oldest=from_oldest)

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
    def store_outage(self) -> tuple[float, str] | None:
        """With a store that does not answer: for how many seconds, and the last error."""
        journal = self.journal
        if journal is None or journal.outage_since is None:
            return None
        return (trio.current_time() - journal.outage_since,
                journal.last_error or "the session store does not answer")

    @property
    def cluster_nodes(self) -> list[str] | None:
        """With a store: the nodes alive on it (this one included), as last seen."""
        return None if self.store is None else list(self.store.live_nodes)

    @property
    def draining(self) -> bool:
        """Whether the engine has stopped taking new sessions (a shutdown or a drain)."""
        return self._closing

    @property
    def actors_running(self) -> int:
        """Session actors running now (after :meth:`drain`, 0 once every one has returned)."""
        return self._actors.running() if self._nursery is not None else 0

    @property
    def live_sessions(self) -> int:
        return self._table.live_count

    @property
    def retained_sessions(self) -> int:
        return len(self._table.records)
