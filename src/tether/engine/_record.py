"""A session's mutable record and how it renders into the public views.

The record is owned by the session's actor for lifecycle changes; heartbeats and telemetry
write their two fields in place (trio is single-threaded, so that is safe) and never wake the
actor. Views are rendered from the record at query time, so the read index keeps references
to records, not copies.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ._errors import CommandNotFound, InvalidParameter
from ._lifecycle import SessionState
from ._models import (
    AttachedClient,
    CommandEntry,
    CommandState,
    CommandView,
    EventClient,
    EventCommand,
    EventData,
    HistoryMeta,
    HistoryPage,
    MachineSession,
    Metrics,
    SessionDetail,
    SessionSummary,
    Status,
    Telemetry,
    TelemetrySummary,
)

if TYPE_CHECKING:
    from ._clock import WallClock
    from ._output import OutputBuffer
    from ._ports import AgentCarrier, SessionInbox

#: Bytes of each stream (stdout, stderr) a command's view keeps of the output written for it.
COMMAND_OUTPUT = 64 * 1024


class OperatorCommand:
    """A command an operator asked the agent to run, until and after its result comes back."""

    __slots__ = (
        "client_id",
        "command",
        "command_id",
        "completed_at",
        "duration_ms",
        "exit_code",
        "output_truncated",
        "requested_at",
        "state",
        "stderr",
        "stdout",
        "user_email",
    )

    def __init__(
        self, command_id: str, command: str, client_id: str, user_email: str, requested_at: float
    ) -> None:
        self.command_id = command_id
        self.command = command
        self.client_id = client_id
        self.user_email = user_email
        self.requested_at = requested_at
        self.state: CommandState = "pending"
        self.exit_code: int | None = None
        self.completed_at: float | None = None
        self.duration_ms: int | None = None  # the agent's own measure, if it gave one
        # The output the agent wrote for this command, each stream's first COMMAND_OUTPUT bytes.
        self.stdout: bytearray | None = None
        self.stderr: bytearray | None = None
        self.output_truncated = False

    def capture(self, stream: str, data: bytes) -> None:
        """Keep ``data`` (written for this command on ``stream``) up to the stream's bound,
        cut on a character boundary."""
        kept = self.stdout if stream == "stdout" else self.stderr
        if kept is None:
            kept = bytearray()
            if stream == "stdout":
                self.stdout = kept
            else:
                self.stderr = kept
        room = COMMAND_OUTPUT - len(kept)
        if len(data) > room:
            self.output_truncated = True
            while 0 < room < len(data) and data[room] & 0xC0 == 0x80:
                room -= 1  # back to the start of the character that does not fit
            data = data[:max(room, 0)]
        kept += data

    def took_ms(self) -> int | None:
        """How long it ran: the agent's measure if it gave one, else from sending to result."""
        if self.duration_ms is not None:
            return self.duration_ms
        if self.completed_at is None:
            return None
        return round((self.completed_at - self.requested_at) * 1000)


class SessionRecord:
    """Everything the engine knows about one session."""

    __slots__ = (
        "actor",
        "agent_version",
        "clients",
        "commands",
        "connected_at",
        "created_at",
        "ended_at",
        "history",
        "history_first",
        "history_index",
        "history_saved",
        "last_heartbeat",
        "link",
        "machine_hostname",
        "machine_id",
        "output",
        "owner",
        "reason",
        "reason_detail",
        "resume_hash",
        "sequence",
        "session_id",
        "status",
        "status_since",
        "stream_holders",
        "telemetry",
        "telemetry_at",
        "version",
        "workspace_id",
    )

    def __init__(
        self,
        session_id: str,
        workspace_id: str,
        machine_id: str,
        machine_hostname: str,
        created_at: float,
    ) -> None:
        self.session_id = session_id
        self.workspace_id = workspace_id
        self.machine_id = machine_id
        self.machine_hostname = machine_hostname
        self.created_at = created_at
        self.status = Status.PENDING
        self.status_since = created_at
        self.reason: str | None = None
        self.reason_detail: str | None = None  # the agent's own words: goodbye reason, error
        self.connected_at: float | None = None
        self.last_heartbeat: float | None = None
        self.ended_at: float | None = None
        self.version = 0
        self.sequence = 0
        self.resume_hash: bytes | None = None  # SHA-256 of the resume token's secret
        self.agent_version: str | None = None
        self.telemetry: Telemetry | None = None
        self.telemetry_at: float | None = None
        # Created on first use: most sessions never have clients, history or commands.
        self.clients: dict[str, AttachedClient] | None = None
        #: With a store that nodes share: the clients an attach stream attached, each with the
        #: node serving that stream (its owner detaches them if that node goes away).
        self.stream_holders: dict[str, str] | None = None
        self.commands: dict[str, OperatorCommand] | None = None
        self.history: deque[CommandEntry] | None = None
        self.history_index: dict[str, int] | None = None
        self.history_first = 0
        self.history_saved = 0  # entries a store holds (numbered 0 to this one, excluded)
        self.link: AgentCarrier | None = None  # the AgentLink that carries the session
        self.actor: SessionInbox | None = None  # the SessionActor, while the session is live
        #: With a shared store: the node that owns the live session, when it is not this one
        #: (its actor runs there; this node only serves reads of it until it takes it over).
        self.owner: str | None = None
        #: Its output and the attach streams watching it, from its first output or stream on.
        self.output: OutputBuffer | None = None

    # -- the lifecycle state (``_lifecycle.py``) ---------------------------------------------

    def state(self) -> SessionState:
        """The record's lifecycle state as the pure core takes it."""
        clients = self.clients
        return SessionState(
            status=self.status,
            status_since=self.status_since,
            reason=self.reason,
            reason_detail=self.reason_detail,
            connected_at=self.connected_at,
            ended_at=self.ended_at,
            clients=tuple((c, a.mode) for c, a in clients.items()) if clients else (),
        )

    def enter(self, state: SessionState) -> None:
        """Take the core's new state; the clients themselves change through its effects."""
        self.status = state.status
        self.status_since = state.status_since
        self.reason = state.reason
        self.reason_detail = state.reason_detail
        self.connected_at = state.connected_at
        self.ended_at = state.ended_at

    def assume(self, stored: SessionRecord, *, history: bool = True) -> None:
        """Take every changing field of ``stored`` (the same session, as a store has it now,
        written by another node), its command history too unless ``history`` is false; its
        identity, actor, link and owner stay as they are."""
        for name in _STORED_STATE if history else _STORED_STATUS:
            setattr(self, name, getattr(stored, name))

    # -- command history -------------------------------------------------------------------

    def record_command(self, entry: CommandEntry, cap: int) -> None:
        """Append to the history, dropping the oldest entry past ``cap``."""
        history = self.history
        index = self.history_index
        if history is None or index is None:
            history = self.history = deque(maxlen=cap)
            index = self.history_index = {}
        # Entries are numbered from 0 in arrival order; history[0] is number history_first.
        index[entry.command_id] = self.history_first + len(history)
        if len(history) == cap:
            index.pop(history[0].command_id, None)
            self.history_first += 1
        history.append(entry)

    @property
    def history_total(self) -> int:
        """Entries ever recorded (the next entry's number)."""
        return self.history_first + (len(self.history) if self.history is not None else 0)

    def has_command_id(self, command_id: str) -> bool:
        return (self.history_index is not None and command_id in self.history_index) or (
            self.commands is not None and command_id in self.commands
        )

    def history_page(self, limit: int, before: str | None, cap: int) -> HistoryPage:
        """The ``limit`` latest commands older than ``before``, oldest first."""
        history = self.history or ()
        end = len(history)
        if before is not None:
            position = None if self.history_index is None else self.history_index.get(before)
            if position is None:
                raise InvalidParameter("before", "not a command id in this session's history")
            end = position - self.history_first
        start = max(0, end - limit)
        items = [history[i] for i in range(start, end)]
        return HistoryPage(
            data=items,
            meta=HistoryMeta(
                limit=limit,
                has_more=start > 0,
                next_before=items[0].command_id if start > 0 and items else None,
                history_cap=cap,
            ),
        )

    def command_view(self, command_id: str, clock: WallClock) -> CommandView:
        command = None if self.commands is None else self.commands.get(command_id)
        if command is None:
            raise CommandNotFound(command_id)
        return CommandView(
            command_id=command.command_id,
            session_id=self.session_id,
            command=command.command,
            client_id=command.client_id,
            user_email=command.user_email,
            state=command.state,
            requested_at=clock.rfc3339(command.requested_at),
            exit_code=command.exit_code,
            completed_at=clock.maybe(command.completed_at),
            started_at=clock.rfc3339(command.requested_at),
            finished_at=clock.maybe(command.completed_at),
            duration_ms=command.took_ms(),
            stdout=command.stdout.decode() if command.stdout else "",
            stderr=command.stderr.decode() if command.stderr else "",
            output_truncated=command.output_truncated,
        )

    # -- views -----------------------------------------------------------------------------

    def summary(self, clock: WallClock) -> SessionSummary:
        return SessionSummary(
            session_id=self.session_id,
            status=self.status,
            machine_id=self.machine_id,
            machine_hostname=self.machine_hostname,
            workspace_id=self.workspace_id,
            created_at=clock.rfc3339(self.created_at),
            connected_at=clock.maybe(self.connected_at),
            last_heartbeat_at=clock.maybe(self.last_heartbeat),
            attached_clients=len(self.clients) if self.clients else 0,
        )

    def detail(self, clock: WallClock) -> SessionDetail:
        telemetry = self.telemetry
        return SessionDetail(
            session_id=self.session_id,
            status=self.status,
            machine_id=self.machine_id,
            machine_hostname=self.machine_hostname,
            workspace_id=self.workspace_id,
            created_at=clock.rfc3339(self.created_at),
            connected_at=clock.maybe(self.connected_at),
            last_heartbeat_at=clock.maybe(self.last_heartbeat),
            attached_clients=list(self.clients.values()) if self.clients else [],
            telemetry=None
            if telemetry is None
            else TelemetrySummary(
                cpu_percent=telemetry.cpu_percent,
                memory_percent=telemetry.memory_percent,
                disk_percent=telemetry.disk_percent,
            ),
            ended_at=clock.maybe(self.ended_at),
            reason=self.reason,
            reason_detail=self.reason_detail,
            version=self.version,
        )

    def machine_view(self, clock: WallClock) -> MachineSession:
        return MachineSession(
            session_id=self.session_id,
            status=self.status,
            machine_hostname=self.machine_hostname,
            connected_at=clock.maybe(self.connected_at),
        )

    def metrics(self, clock: WallClock) -> Metrics:
        t = self.telemetry or _NO_TELEMETRY
        return Metrics(
            session_id=self.session_id,
            timestamp=clock.maybe(self.telemetry_at),
            cpu_percent=t.cpu_percent,
            memory_percent=t.memory_percent,
            disk_percent=t.disk_percent,
            network_rx_bytes=t.network_rx_bytes,
            network_tx_bytes=t.network_tx_bytes,
            uptime_seconds=t.uptime_seconds,
        )

    def event_data(
        self,
        clock: WallClock,
        previous_status: Status | None,
        reason: str | None,
        status: Status | None = None,
        reason_detail: str | None = None,
        client: EventClient | None = None,
        command: EventCommand | None = None,
    ) -> EventData:
        """The event payload: the session as it is now (or in ``status``, if given)."""
        connected_at = self.connected_at
        last_heartbeat = self.last_heartbeat
        clients = self.clients
        return EventData(
            session_id=self.session_id,
            status=self.status if status is None else status,
            machine_id=self.machine_id,
            machine_hostname=self.machine_hostname,
            workspace_id=self.workspace_id,
            created_at=clock.rfc3339(self.created_at),
            connected_at=None if connected_at is None else clock.rfc3339(connected_at),
            last_heartbeat_at=None if last_heartbeat is None else clock.rfc3339(last_heartbeat),
            attached_clients=len(clients) if clients else 0,
            previous_status=previous_status,
            reason=reason,
            sequence=self.sequence,
            reason_detail=reason_detail,
            client=client,
            command=command,
        )


_NO_TELEMETRY = Telemetry()


#: What a store's copy of a session may have that this node's does not (``assume``).
_STORED_STATE = tuple(
    name for name in SessionRecord.__slots__
    if name not in ("session_id", "workspace_id", "machine_id", "created_at", "actor", "link",
                    "owner", "output")
)
_STORED_STATUS = tuple(name for name in _STORED_STATE if not name.startswith("history"))
