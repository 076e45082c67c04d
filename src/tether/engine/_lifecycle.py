"""The session lifecycle as a pure transition function: no trio, no I/O, no clock.

``step(status, input)`` says what a lifecycle input does to a session in ``status``;
``deadline(...)`` says when the session's current status times out, and ``timeout(status)``
which input that timeout is. The actor (``_actor.py``) is the thin adapter that feeds inputs,
applies the transitions and sleeps until the deadline. This table is design.md's, row for row.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

from ._errors import ProtocolViolation, SessionNotActive
from ._models import Status

if TYPE_CHECKING:
    from ._config import EngineConfig


class Input(enum.Enum):
    """Everything that can change a session's status."""

    AGENT_CONNECTED = "agent_connected"  # a hello picks up a PENDING session
    RESUMED = "resumed"  # a hello with a valid resume token
    BACKGROUND = "agent_background"
    FOREGROUND = "agent_foreground"
    TRANSPORT_CLOSED = "transport_closed"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    BACKGROUND_TIMEOUT = "background_timeout"
    GRACE_EXPIRED = "grace_expired"
    PENDING_TIMEOUT = "pending_timeout"
    GOODBYE = "agent_goodbye"
    TERMINATED = "terminated"
    REPLACED = "replaced"
    AGENT_ERROR = "agent_error"
    PROTOCOL_ERROR = "protocol_violation"
    SERVER_SHUTDOWN = "server_shutdown"


class Transition(NamedTuple):
    """The outcome of an input: the new status, the event to emit and the reason to record."""

    status: Status
    event: str
    reason: str


_P, _C, _B, _G = Status.PENDING, Status.CONNECTED, Status.BACKGROUND, Status.GRACE_PERIOD
_D, _E = Status.DISCONNECTED, Status.ERROR

_CONNECTED = "session.connected"
_DISCONNECTED = "session.disconnected"

#: (status, input) -> (new status, event). Inputs absent for a live status are violations.
_TABLE: dict[tuple[Status, Input], tuple[Status, str]] = {
    (_P, Input.AGENT_CONNECTED): (_C, _CONNECTED),
    (_P, Input.PENDING_TIMEOUT): (_D, _DISCONNECTED),
    (_C, Input.BACKGROUND): (_B, "session.background"),
    (_B, Input.FOREGROUND): (_C, _CONNECTED),
    (_C, Input.TRANSPORT_CLOSED): (_G, "session.grace_period"),
    (_B, Input.TRANSPORT_CLOSED): (_G, "session.grace_period"),
    (_C, Input.HEARTBEAT_TIMEOUT): (_G, "session.grace_period"),
    (_B, Input.BACKGROUND_TIMEOUT): (_G, "session.grace_period"),
    # A resume on a half-dead socket: the session moves to the new transport.
    (_C, Input.RESUMED): (_C, _CONNECTED),
    (_B, Input.RESUMED): (_C, _CONNECTED),
    (_G, Input.RESUMED): (_C, _CONNECTED),
    (_G, Input.GRACE_EXPIRED): (_D, _DISCONNECTED),
}
for _live in (_P, _C, _B, _G):
    for _ending in (Input.GOODBYE, Input.TERMINATED, Input.REPLACED, Input.SERVER_SHUTDOWN):
        _TABLE[(_live, _ending)] = (_D, _DISCONNECTED)
    for _fatal in (Input.AGENT_ERROR, Input.PROTOCOL_ERROR):
        _TABLE[(_live, _fatal)] = (_E, "session.error")


def step(status: Status, inp: Input) -> Transition:
    """The transition ``inp`` causes in a session in ``status``.

    Raises :class:`SessionNotActive` for a final session (final states are absorbing) and
    :class:`ProtocolViolation` for an input the status does not allow.
    """
    if status.final:
        required = "CONNECTED" if inp in (Input.BACKGROUND, Input.FOREGROUND) else "an active"
        raise SessionNotActive(status.value, required)
    found = _TABLE.get((status, inp))
    if found is None:
        raise ProtocolViolation(
            f"'{inp.value}' is not allowed in status {status.value}", status.value
        )
    return Transition(found[0], found[1], inp.value)


def timeout(status: Status) -> Input | None:
    """The input that the deadline of ``status`` stands for (``None`` if it has none)."""
    return _TIMEOUTS.get(status)


_TIMEOUTS = {
    _P: Input.PENDING_TIMEOUT,
    _C: Input.HEARTBEAT_TIMEOUT,
    _B: Input.BACKGROUND_TIMEOUT,
    _G: Input.GRACE_EXPIRED,
}


def deadline(
    status: Status, status_since: float, last_heartbeat: float | None, config: EngineConfig
) -> float | None:
    """When a session in ``status`` (entered at ``status_since``) times out.

    A heartbeat (or telemetry) extends CONNECTED and BACKGROUND; nothing extends PENDING or
    GRACE_PERIOD; final statuses never time out.
    """
    if status is _C or status is _B:
        alive = (
            status_since
            if last_heartbeat is None or last_heartbeat < status_since
            else last_heartbeat
        )
        limit = config.heartbeat_timeout if status is _C else config.background_timeout
        return alive + limit
    if status is _G:
        return status_since + config.grace_period
    if status is _P:
        return status_since + config.pending_timeout
    return None
