"""The engine's public value types: statuses, views and events, as msgspec Structs.

Views are frozen snapshots made at query time; their field names are the API contract's
(``seed/sessions-api.txt``), so the HTTP layer encodes them as they are.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

from ._errors import InvalidParameter

#: Limits of the text the engine stores and serves back, whoever supplies it (an API caller, an
#: embedding program, an agent): ids, names and versions; user emails; commands; and an agent's
#: own words for a change (its goodbye reason), kept as a session's ``reason_detail``.
MAX_TEXT = 256
MAX_EMAIL = 320
MAX_COMMAND = 64 * 1024
MAX_DETAIL = 1024


def check_text(name: str, value: str, max_len: int = MAX_TEXT) -> None:
    """Raise :class:`InvalidParameter` unless ``value`` is 1 to ``max_len`` printable characters.

    Printable excludes every control and format character (CR/LF, NUL, ESC, bidi overrides,
    line separators), so stored text never forges a log line or rewrites a terminal.
    """
    if not value or len(value) > max_len:
        raise InvalidParameter(name, f"must be 1 to {max_len} characters")
    if not value.isprintable():
        raise InvalidParameter(name, "must not contain control characters")


#: Exit codes: POSIX's are 0-255 (and negative for a signal in some runtimes), Windows' are
#: unsigned 32-bit (0xC0000005); anything wider is a broken agent, and JSON clients that read
#: numbers as doubles would lose its digits.
EXIT_CODE_MIN, EXIT_CODE_MAX = -(2**31), 2**32 - 1


def check_exit_code(value: int) -> None:
    """Raise :class:`InvalidParameter` unless ``value`` is an int from ``EXIT_CODE_MIN`` to
    ``EXIT_CODE_MAX``."""
    if type(value) is not int or not EXIT_CODE_MIN <= value <= EXIT_CODE_MAX:
        raise InvalidParameter(
            "exit_code", f"must be an integer from {EXIT_CODE_MIN} to {EXIT_CODE_MAX}")


class Status(enum.StrEnum):
    PENDING = "PENDING"
    CONNECTED = "CONNECTED"
    BACKGROUND = "BACKGROUND"
    GRACE_PERIOD = "GRACE_PERIOD"
    DISCONNECTED = "DISCONNECTED"
    ERROR = "ERROR"

    @property
    def final(self) -> bool:
        return self is Status.DISCONNECTED or self is Status.ERROR


FINAL_STATUSES = frozenset({Status.DISCONNECTED, Status.ERROR})

ClientMode = Literal["operator", "observer"]
CLIENT_MODES: tuple[str, ...] = ("operator", "observer")

CommandState = Literal["pending", "completed", "failed", "lost"]


class Telemetry(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One telemetry sample as an agent reports it; every metric is optional."""

    cpu_percent: float | None = None
    memory_percent: float | None = None
    disk_percent: float | None = None
    network_rx_bytes: int | None = None
    network_tx_bytes: int | None = None
    uptime_seconds: int | None = None


class TelemetrySummary(msgspec.Struct, kw_only=True, frozen=True):
    """The telemetry shown in a session's detail view."""

    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None


class AttachedClient(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    client_id: str
    user_email: str
    mode: ClientMode
    attached_at: str


class SessionSummary(msgspec.Struct, kw_only=True, frozen=True):
    """A session as ``GET /v1/sessions`` lists it."""

    session_id: str
    status: Status
    machine_id: str
    machine_hostname: str
    workspace_id: str
    created_at: str
    connected_at: str | None
    last_heartbeat_at: str | None
    attached_clients: int


class SessionDetail(msgspec.Struct, kw_only=True, frozen=True):
    """A session as ``GET /v1/sessions/{session_id}`` shows it.

    Beyond the contract's fields: ``ended_at``; ``reason``, why the session last changed status
    (``heartbeat_timeout``, ``agent_goodbye``, ...); ``reason_detail``, the agent's own words
    for it (its goodbye reason, or its error's code and message); and ``version``, which grows
    with every change to the session.
    """

    session_id: str
    status: Status
    machine_id: str
    machine_hostname: str
    workspace_id: str
    created_at: str
    connected_at: str | None
    last_heartbeat_at: str | None
    attached_clients: list[AttachedClient]
    telemetry: TelemetrySummary | None
    ended_at: str | None
    reason: str | None
    reason_detail: str | None
    version: int


class MachineSession(msgspec.Struct, kw_only=True, frozen=True):
    """A machine's active session as ``GET /v1/machines/{machine_id}/session`` shows it."""

    session_id: str
    status: Status
    machine_hostname: str
    connected_at: str | None


class CommandEntry(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One executed command in a session's history."""

    command_id: str
    command: str
    exit_code: int
    executed_at: str
    user_email: str | None


class HistoryMeta(msgspec.Struct, kw_only=True, frozen=True):
    """Paging of a history page: ``next_before`` is the cursor for the next older page."""

    limit: int
    has_more: bool
    next_before: str | None
    history_cap: int


class HistoryPage(msgspec.Struct, kw_only=True, frozen=True):
    data: list[CommandEntry]
    meta: HistoryMeta


class CommandView(msgspec.Struct, kw_only=True, frozen=True):
    """A command an operator asked the agent to run, and how it ended."""

    command_id: str
    session_id: str
    command: str
    client_id: str
    user_email: str
    state: CommandState
    requested_at: str
    exit_code: int | None
    completed_at: str | None
    #: When the agent was sent it and when its result came back (as CMDOP's Commands API).
    started_at: str | None = None
    finished_at: str | None = None
    #: The agent's own measure of the run if it gave one, else finished_at - started_at.
    duration_ms: int | None = None
    #: The output the agent wrote for this command (its ``command_id``), each stream up to
    #: 64 KiB: the first bytes are kept, ``output_truncated`` says if any were not.
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False


SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL", "SIGHUP")
Signal = Literal["SIGINT", "SIGTERM", "SIGKILL", "SIGHUP"]


class OperatorInput(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Keystrokes (text) an attached operator sends to the agent's terminal."""

    data: str
    client_id: str


class OperatorResize(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """An attached operator's terminal changed size."""

    cols: int
    rows: int
    client_id: str


class OperatorSignal(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """An attached operator sends a signal to what runs in the agent's terminal."""

    signal: Signal
    client_id: str


#: What an operator's attach stream sends on to the agent.
OperatorFrame = OperatorInput | OperatorResize | OperatorSignal


class OutputPage(msgspec.Struct, kw_only=True, frozen=True):
    """A range of a session's output: ``data`` is the text from byte ``offset`` to
    ``next_offset`` of its stream; ``first_offset`` is the oldest byte still retained and
    ``total_bytes`` how many were ever written."""

    session_id: str
    offset: int
    data: str
    next_offset: int
    first_offset: int
    total_bytes: int
    has_more: bool


class Metrics(msgspec.Struct, kw_only=True, frozen=True):
    """The latest telemetry sample of a CONNECTED session."""

    session_id: str
    timestamp: str | None
    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None
    network_rx_bytes: int | None
    network_tx_bytes: int | None
    uptime_seconds: int | None


class PageMeta(msgspec.Struct, kw_only=True, frozen=True):
    total: int
    limit: int
    offset: int
    has_more: bool


class SessionPage(msgspec.Struct, kw_only=True, frozen=True):
    data: list[SessionSummary]
    meta: PageMeta


class Welcome(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """What an agent learns on hello: its session, a fresh resume token, and the timings."""

    session_id: str
    resume_token: str
    heartbeat_interval: float
    heartbeat_timeout: float
    grace_period: float
    resumed: bool
    #: The next output offset the session expects: an agent resends what it wrote from there.
    output_offset: int = 0


class EventClient(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    client_id: str
    user_email: str
    mode: ClientMode


class EventCommand(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    command_id: str
    command: str
    exit_code: int
    user_email: str | None
    #: How long it ran, when known (an operator's command; never its output).
    duration_ms: int | None = None


class EventData(SessionSummary, kw_only=True, frozen=True, omit_defaults=True, gc=False):
    """A session event's payload: the session's summary at the event, and the change."""

    previous_status: Status | None
    reason: str | None
    sequence: int
    reason_detail: str | None = None
    client: EventClient | None = None
    command: EventCommand | None = None


class Event(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One lifecycle event, as subscribers, the event feed and webhooks see it.

    ``sequence`` counts the session's events from 1 with no gaps.
    """

    id: str
    type: str
    timestamp: str
    workspace_id: str
    session_id: str
    sequence: int
    data: EventData


EVENT_TYPES: tuple[str, ...] = (
    "session.created",
    "session.connected",
    "session.background",
    "session.grace_period",
    "session.disconnected",
    "session.error",
    "session.client_attached",
    "session.client_detached",
    "command.completed",
    "command.failed",
)


class RunCommand(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A command an attached operator asked the session's agent to run."""

    command_id: str
    command: str
    user_email: str
