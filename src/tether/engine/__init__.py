"""The Tether session engine, embeddable as a library.

    async with Engine(EngineConfig(grace_period=30)) as engine:
        link = await engine.agent_hello("ws_acme", transport,
                                        machine_id="mach_1", machine_hostname="prod-1")
        link.heartbeat()
        page = engine.list_sessions("ws_acme", status="CONNECTED")

Everything not exported here is private.
"""

from ._clock import WallClock
from ._config import EngineConfig
from ._engine import DEFAULT_HISTORY, DEFAULT_PAGE, MAX_HISTORY, MAX_PAGE, Engine
from ._errors import (
    AgentLinkClosed,
    ClientNotFound,
    ClientNotOperator,
    CommandNotFound,
    DuplicateCommand,
    EngineClosed,
    EventsGone,
    InvalidParameter,
    NoActiveSession,
    ProtocolViolation,
    ResumeRejected,
    SessionAlreadyActive,
    SessionNotActive,
    SessionNotFound,
    TetherError,
)
from ._events import EventsMissed, Subscription
from ._link import AgentLink
from ._models import (
    CLIENT_MODES,
    EVENT_TYPES,
    FINAL_STATUSES,
    MAX_COMMAND,
    MAX_EMAIL,
    MAX_TEXT,
    AttachedClient,
    ClientMode,
    CommandEntry,
    CommandView,
    Event,
    EventData,
    HistoryPage,
    MachineSession,
    Metrics,
    PageMeta,
    RunCommand,
    SessionDetail,
    SessionPage,
    SessionSummary,
    Status,
    Telemetry,
    TelemetrySummary,
    Welcome,
)
from ._ports import AgentTransport

__all__ = [
    "CLIENT_MODES",
    "DEFAULT_HISTORY",
    "DEFAULT_PAGE",
    "EVENT_TYPES",
    "FINAL_STATUSES",
    "MAX_COMMAND",
    "MAX_EMAIL",
    "MAX_HISTORY",
    "MAX_PAGE",
    "MAX_TEXT",
    "AgentLink",
    "AgentLinkClosed",
    "AgentTransport",
    "AttachedClient",
    "ClientMode",
    "ClientNotFound",
    "ClientNotOperator",
    "CommandEntry",
    "CommandNotFound",
    "CommandView",
    "DuplicateCommand",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "Event",
    "EventData",
    "EventsGone",
    "EventsMissed",
    "HistoryPage",
    "InvalidParameter",
    "MachineSession",
    "Metrics",
    "NoActiveSession",
    "PageMeta",
    "ProtocolViolation",
    "ResumeRejected",
    "RunCommand",
    "SessionAlreadyActive",
    "SessionDetail",
    "SessionNotActive",
    "SessionNotFound",
    "SessionPage",
    "SessionSummary",
    "Status",
    "Subscription",
    "Telemetry",
    "TelemetrySummary",
    "TetherError",
    "WallClock",
    "Welcome",
]
