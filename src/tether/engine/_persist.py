"""What a session store keeps, as values: the seam between the engine and durable state.

The engine keeps every session in memory; a :class:`SessionStore` (Redis, in ``tether.store``)
keeps a copy that outlives the process. The engine hands it :class:`WriteBatch` es (the
sessions that changed, the history entries agents reported, heartbeats, events and purges,
each batch written as a whole before anything in it is acknowledged) and, when it opens, reads
everything back as a :class:`Loaded`. These are plain msgspec values with wall-clock times
(Unix seconds), so a store needs nothing of the engine's internals.

``snapshot`` / ``restore`` convert between a record and its :class:`SessionSnapshot`; the round
trip is exact (tested with Hypothesis).
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from ._models import AttachedClient, CommandEntry, CommandState, Event, Status, Telemetry
from ._output import OutputChunk
from ._record import OperatorCommand, SessionRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._clock import WallClock


class CommandSnapshot(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """An operator's command (``POST .../commands``), pending or finished."""

    command_id: str
    command: str
    client_id: str
    user_email: str
    requested_at: float
    state: CommandState
    exit_code: int | None = None
    completed_at: float | None = None


class SessionSnapshot(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A session's durable state, times in Unix seconds.

    The command history is not in it (it can hold 10,000 entries): a store keeps it apart and
    appends to it (:class:`HistoryAppend`). ``history_total`` counts every entry ever recorded,
    so entry ``n`` is retained while ``n >= history_total - len(retained)``.
    """

    session_id: str
    workspace_id: str
    machine_id: str
    machine_hostname: str
    created_at: float
    status: Status
    status_since: float
    reason: str | None = None
    reason_detail: str | None = None
    connected_at: float | None = None
    last_heartbeat: float | None = None
    ended_at: float | None = None
    version: int = 0
    sequence: int = 0
    #: SHA-256 of the current resume secret (hex): a store never holds a usable token.
    resume_hash: str | None = None
    agent_version: str | None = None
    telemetry: Telemetry | None = None
    telemetry_at: float | None = None
    clients: list[AttachedClient] = []
    commands: list[CommandSnapshot] = []
    history_total: int = 0
    #: The clients attached by an attach stream -> the node serving it.
    stream_holders: dict[str, str] = {}


class Heartbeat(msgspec.Struct, frozen=True, gc=False):
    """What a heartbeat or telemetry changes: flushed in batches, not one write per beat."""

    workspace_id: str
    session_id: str
    last_heartbeat: float | None
    telemetry: Telemetry | None
    telemetry_at: float | None
    version: int


class HistoryAppend(msgspec.Struct, frozen=True, gc=False):
    """History entries numbered ``first`` onwards, to append; keep the newest ``cap``."""

    workspace_id: str
    session_id: str
    first: int
    entries: list[CommandEntry]
    cap: int


class OutputAppend(msgspec.Struct, frozen=True, gc=False):
    """A session's output written since its last batch, in order; keep its last ``keep``
    bytes. A chunk starting before the stored end is written already (a retried batch)."""

    workspace_id: str
    session_id: str
    chunks: list[OutputChunk]
    keep: int


class StoredOutput(msgspec.Struct, frozen=True, gc=False):
    """What a store holds of a session's output: the retained bytes ``first_offset`` to
    ``next_offset``, and ``chunks``, the stored chunks a read asked for (in order)."""

    first_offset: int
    next_offset: int
    chunks: list[OutputChunk]


class LogPosition(msgspec.Struct, frozen=True, gc=False):
    """The event log's run id and the offset its next event gets: event ids continue across
    restarts, so consumers' cursors stay valid."""

    run_id: int
    next_offset: int


class WriteBatch(msgspec.Struct, kw_only=True, gc=False):
    sessions: list[SessionSnapshot] = []
    history: list[HistoryAppend] = []
    heartbeats: list[Heartbeat] = []
    events: list[Event] = []  # unnumbered: the store gives each its offset, in its order
    purged: list[tuple[str, str]] = []  # (workspace_id, session_id)
    output: list[OutputAppend] = []


class Displaced(NamedTuple):
    """A live session whose machine has a newer active session: it is to end (``replaced``)."""

    workspace_id: str
    session_id: str
    owner: str  # the node that runs it


class LoadedSession(msgspec.Struct, frozen=True, gc=False):
    snapshot: SessionSnapshot
    history: list[CommandEntry]  # the retained entries, oldest first
    #: The node that owns the live session, if another node does (its actor runs there);
    #: ``None`` when this engine has it.
    owner: str | None = None
    #: The offset the session's next output byte gets: what the store holds ends there.
    output_next: int = 0


class Loaded(msgspec.Struct, frozen=True, gc=False):
    """Everything a store holds, as the engine reads it when it opens."""

    sessions: list[LoadedSession]
    events: list[tuple[int, Event]]  # the retained events and their offsets, oldest first
    log: LogPosition | None  # ``None``: an empty store


class Changes(msgspec.Struct, kw_only=True, gc=False):
    """What another node wrote, in the order it wrote it, as this node reads it back.

    ``owners``: sessions it took over (from this node, perhaps: then this node lets go of
    them). ``complete``: ``sessions`` is everything the store holds (a node that fell too far
    behind the feed reads it all again), so a session missing from it was purged.
    """

    node_id: str
    sessions: list[SessionSnapshot] = []
    history: list[HistoryAppend] = []
    heartbeats: list[Heartbeat] = []
    purged: list[tuple[str, str]] = []  # (workspace_id, session_id)
    owners: list[tuple[str, str]] = []  # (workspace_id, session_id)
    complete: bool = False


class SessionStore(Protocol):
    """Durable state for an engine (``Engine(config, store=...)``), shared by the nodes that
    use the same store. Each live session is owned by one node, the one that runs its actor;
    a node that stops (and stops renewing its lease, for a store that has them) leaves its
    sessions orphans, which another node adopts."""

    #: This node's name in the store, and the nodes alive on it (this one included).
    node_id: str
    live_nodes: list[str]
    #: How often the engine asks :meth:`adopt` about the sessions other nodes own (seconds).
    adopt_interval: float

    async def load(self) -> Loaded:
        """Everything stored; this engine takes over every session no live node owns."""

    async def write(self, batch: WriteBatch) -> list[Displaced]:
        """Make ``batch`` durable, or raise (nothing in it is then acknowledged; the same
        batch is written again, so a store's writes must be idempotent). A store bounds each
        of its round trips: a store that does not answer must raise, not hang.

        Returns the live sessions that lost their machine to a newer session (two hellos for
        one machine raced on two nodes): the engine ends each on its owner (``replaced``)."""

    async def run(self) -> None:
        """The store's upkeep while the engine runs (a node lease, renewed); never returns."""

    async def adopt(self, by_owner: Mapping[str, Mapping[str, tuple[str, str]]]
                    ) -> list[LoadedSession]:
        """Take over the sessions (``by_owner``: the owner this node knows of -> session id ->
        (workspace, session id)) whose owner is gone: their state as the store has it now.
        ``by_owner`` is the engine's own index, read as it is when the store asks."""

    def lost(self, session_id: str) -> bool:
        """Whether another node took the session over since this one last held it: this
        node's writes of it are refused (none is durable)."""

    async def alive(self, nodes: list[str]) -> set[str]:
        """Those of ``nodes`` alive now (for Redis: whose lease is held)."""

    async def take_over(self, workspace_id: str, session_id: str) -> LoadedSession | None:
        """Take a session over from whichever node owns it (its agent came to this one): its
        state now, or ``None`` if the store no longer has it."""

    async def read(self, workspace_id: str, session_id: str) -> LoadedSession | None:
        """A session's state as stored now, owning nothing (``None``: the store has none)."""

    async def follow(self, apply: Callable[[Changes], None],
                     place: Callable[[list[tuple[int, Event]]], None]) -> None:
        """Call ``apply`` with what other nodes write, from where :meth:`load` read the
        store, in the order they wrote it, and ``place`` with the events written (by any
        node) and their offsets; never returns."""

    async def new_events(self) -> list[tuple[int, Event]]:
        """The events written since :meth:`load` or the last call (or ``follow``'s last
        read), with their offsets: the store numbers events, one log for every node."""

    async def send(self, node_id: str, message: bytes) -> None:
        """Deliver ``message`` to a node's inbox (a write forwarded to it, or an answer)."""

    async def receive(self) -> bytes | None:
        """The next message in this node's inbox, or ``None`` after waiting a while."""

    async def read_output(self, workspace_id: str, session_id: str, offset: int | None,
                          limit: int) -> StoredOutput:
        """The stored chunks holding the session's output from ``offset`` (default: the
        oldest retained; clamped to what is retained) for at least ``limit`` bytes, or to the
        end."""

    async def follow_outputs(self, positions: Mapping[tuple[str, str], int], wait: float
                             ) -> dict[tuple[str, str], list[OutputChunk]]:
        """For each session of ``positions`` ((workspace, session id) -> an offset where a
        stored chunk starts), the stored chunks from there on, waiting up to ``wait`` seconds
        for one to be written to any of them; only the sessions with some are in the answer
        (none if nothing was written)."""


def with_heartbeat(snap: SessionSnapshot, beat: Heartbeat | None) -> SessionSnapshot:
    """``snap`` with a heartbeat flushed after it (a store keeps the two apart), if newer."""
    if beat is None or beat.version <= snap.version:
        return snap
    return msgspec.structs.replace(snap, last_heartbeat=beat.last_heartbeat,
                                   telemetry=beat.telemetry, telemetry_at=beat.telemetry_at,
                                   version=beat.version)


# -- records <-> snapshots -------------------------------------------------------------------


def resume_hash(secret: str) -> bytes:
    """What a record keeps of a resume token's secret."""
    return hashlib.sha256(secret.encode()).digest()


def _wall(clock: WallClock, t: float | None) -> float | None:
    return None if t is None else clock.wall(t)


def _trio(clock: WallClock, t: float | None) -> float | None:
    return None if t is None else clock.trio_time(t)


def snapshot(rec: SessionRecord, clock: WallClock) -> SessionSnapshot:
    """``rec``'s durable state."""
    wall = clock.wall
    return SessionSnapshot(
        session_id=rec.session_id,
        workspace_id=rec.workspace_id,
        machine_id=rec.machine_id,
        machine_hostname=rec.machine_hostname,
        created_at=wall(rec.created_at),
        status=rec.status,
        status_since=wall(rec.status_since),
        reason=rec.reason,
        reason_detail=rec.reason_detail,
        connected_at=_wall(clock, rec.connected_at),
        last_heartbeat=_wall(clock, rec.last_heartbeat),
        ended_at=_wall(clock, rec.ended_at),
        version=rec.version,
        sequence=rec.sequence,
        resume_hash=None if rec.resume_hash is None else rec.resume_hash.hex(),
        agent_version=rec.agent_version,
        telemetry=rec.telemetry,
        telemetry_at=_wall(clock, rec.telemetry_at),
        clients=list(rec.clients.values()) if rec.clients else [],
        commands=[
            CommandSnapshot(
                command_id=c.command_id,
                command=c.command,
                client_id=c.client_id,
                user_email=c.user_email,
                requested_at=wall(c.requested_at),
                state=c.state,
                exit_code=c.exit_code,
                completed_at=_wall(clock, c.completed_at),
            )
            for c in rec.commands.values()
        ] if rec.commands else [],
        history_total=rec.history_total,
        stream_holders=dict(rec.stream_holders) if rec.stream_holders else {},
    )


def heartbeat(rec: SessionRecord, clock: WallClock) -> Heartbeat:
    return Heartbeat(rec.workspace_id, rec.session_id, _wall(clock, rec.last_heartbeat),
                     rec.telemetry, _wall(clock, rec.telemetry_at), rec.version)


def restore(loaded: LoadedSession, clock: WallClock, history_cap: int) -> SessionRecord:
    """A record with the state of ``loaded`` (no actor, no link: the engine adds those)."""
    snap = loaded.snapshot
    rec = SessionRecord(snap.session_id, snap.workspace_id, snap.machine_id,
                        snap.machine_hostname, clock.trio_time(snap.created_at))
    rec.status = snap.status
    rec.status_since = clock.trio_time(snap.status_since)
    rec.reason = snap.reason
    rec.reason_detail = snap.reason_detail
    rec.connected_at = _trio(clock, snap.connected_at)
    rec.last_heartbeat = _trio(clock, snap.last_heartbeat)
    rec.ended_at = _trio(clock, snap.ended_at)
    rec.version = snap.version
    rec.sequence = snap.sequence
    rec.resume_hash = None if snap.resume_hash is None else bytes.fromhex(snap.resume_hash)
    rec.agent_version = snap.agent_version
    rec.telemetry = snap.telemetry
    rec.telemetry_at = _trio(clock, snap.telemetry_at)
    if snap.clients:
        rec.clients = {c.client_id: c for c in snap.clients}
    if snap.stream_holders:
        rec.stream_holders = dict(snap.stream_holders)
    if snap.commands:
        rec.commands = {}
        for c in snap.commands:
            command = OperatorCommand(c.command_id, c.command, c.client_id, c.user_email,
                                      clock.trio_time(c.requested_at))
            command.state = c.state
            command.exit_code = c.exit_code
            command.completed_at = _trio(clock, c.completed_at)
            rec.commands[c.command_id] = command
    entries = loaded.history[-history_cap:]
    if entries:
        rec.history = deque(entries, maxlen=history_cap)
        rec.history_first = snap.history_total - len(entries)
        rec.history_index = {e.command_id: rec.history_first + i for i, e in enumerate(entries)}
    else:
        rec.history_first = snap.history_total
    rec.history_saved = snap.history_total
    return rec
