"""The engine's one error hierarchy.

Every error carries exactly the fields of the API's error envelope
(``{"error": {"code", "message", "details"}}``): a stable ``code``, a ``message`` for people
and ``details``. How a transport answers a code (the HTTP status of each) is the transport's
business (``tether.http`` maps them in one table), so the engine knows nothing of HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TetherError(Exception):
    """Base of every error the engine raises on purpose."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def envelope(self) -> dict[str, Any]:
        """The error as the API's envelope."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class SessionNotFound(TetherError):
    """No such session in the caller's workspace (another workspace's session included)."""

    code = "session_not_found"

    def __init__(self, session_id: str, message: str = "Session not found") -> None:
        super().__init__(message, {"session_id": session_id})
        self.session_id = session_id


class NoActiveSession(SessionNotFound):
    """The machine has no active session in the caller's workspace."""

    def __init__(self, machine_id: str) -> None:
        TetherError.__init__(self, "No active session for this machine", {"machine_id": machine_id})
        self.session_id = ""
        self.machine_id = machine_id


class SessionNotActive(TetherError):
    """The session is not in a status that allows the operation."""

    code = "session_not_active"

    def __init__(self, current_status: str, required: str = "CONNECTED") -> None:
        super().__init__(f"Session is not in {required} state", {"current_status": current_status})
        self.current_status = current_status


class SessionAlreadyActive(TetherError):
    """The machine already has an active session; only one may be active at a time."""

    code = "session_already_active"

    def __init__(self, machine_id: str, session_id: str, current_status: str) -> None:
        super().__init__(
            "Machine already has an active session",
            {"machine_id": machine_id, "session_id": session_id, "current_status": current_status},
        )


class InvalidParameter(TetherError):
    """A query parameter, body field or input value is out of its domain."""

    code = "invalid_parameter"

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(
            f"Invalid parameter '{parameter}': {reason}", {"parameter": parameter, "reason": reason}
        )
        self.parameter = parameter
        self.reason = reason


class ClientNotFound(TetherError):
    """No such client is attached to the session."""

    code = "client_not_found"

    def __init__(self, client_id: str) -> None:
        super().__init__("Client not attached to this session", {"client_id": client_id})


class ClientNotOperator(TetherError):
    """Observers only watch: running a command needs an attached operator."""

    code = "client_not_operator"

    def __init__(self, client_id: str) -> None:
        super().__init__(
            "Only an attached operator may run commands",
            {"client_id": client_id, "mode": "observer"},
        )


class CommandNotFound(TetherError):
    """No such command in the session."""

    code = "command_not_found"

    def __init__(self, command_id: str) -> None:
        super().__init__("Command not found", {"command_id": command_id})


class DuplicateCommand(TetherError):
    """The agent reported a command id the session already holds."""

    code = "duplicate_command"

    def __init__(self, command_id: str) -> None:
        super().__init__("Command id already used in this session", {"command_id": command_id})


class ResumeRejected(TetherError):
    """A resume token is unknown, forged, stale, or belongs to another machine or workspace.

    The agent should start afresh with a hello that carries no resume token.
    """

    code = "resume_rejected"

    def __init__(self) -> None:
        super().__init__("Resume token is not valid for a resumable session")


class AgentLinkClosed(TetherError):
    """This agent link no longer speaks for its session (resumed elsewhere, or ended)."""

    code = "link_closed"

    def __init__(self, session_id: str, current_status: str) -> None:
        super().__init__(
            "This connection no longer carries the session",
            {"session_id": session_id, "current_status": current_status},
        )


class ProtocolViolation(TetherError):
    """An agent input that the session's status does not allow (e.g. foreground while CONNECTED)."""

    code = "protocol_violation"

    def __init__(self, message: str, current_status: str) -> None:
        super().__init__(message, {"current_status": current_status})


class EventsGone(TetherError):
    """The event asked for is older than the retained log (or from another server run): resync."""

    code = "events_gone"

    def __init__(self, after: str, oldest: str | None) -> None:
        super().__init__(
            "Event is no longer retained; resynchronise from the current state",
            {"after": after, "oldest_event_id": oldest},
        )


class OutputGone(TetherError):
    """The output asked for is older than what the session still retains."""

    code = "output_gone"

    def __init__(self, offset: int, first_offset: int) -> None:
        super().__init__("Output at this offset is no longer retained",
                         {"offset": offset, "first_offset": first_offset})
        self.first_offset = first_offset


class OutputGap(TetherError):
    """An agent wrote output beyond the next offset: the bytes before it must come first."""

    code = "output_gap"

    def __init__(self, offset: int, expected_offset: int) -> None:
        super().__init__(f"Output at offset {offset} leaves a gap: expected offset "
                         f"{expected_offset}", {"offset": offset,
                                                "expected_offset": expected_offset})
        self.expected_offset = expected_offset


class StoreUnavailable(TetherError):
    """With a store: a write cannot be made durable now (the store does not answer).

    Raised before anything changes when the store is already known to be away; raised after
    the change when the store stopped answering while it was being written (the change stays
    in memory and is written once the store answers again: ``applied``)."""

    code = "unavailable"

    def __init__(self, reason: str | None, *, applied: bool = False) -> None:
        super().__init__("Session state cannot be made durable now; retry later",
                         {"reason": reason or "the session store does not answer"})
        self.applied = applied


class OwnerUnreachable(TetherError):
    """With a shared store: the session is owned by another node, which this one cannot ask
    to make the change (the change did not happen)."""

    code = "unavailable"

    def __init__(self, session_id: str, owner: str) -> None:
        super().__init__("The session is owned by another node, which cannot be reached; "
                         "retry later", {"session_id": session_id, "node_id": owner})


class SessionMoved(TetherError):
    """With a shared store: another node took the session over while this one made a change,
    and the store refused this one's write of it: the change did not happen (asked again, the
    new owner makes it)."""

    code = "unavailable"

    def __init__(self, session_id: str) -> None:
        super().__init__("The session moved to another node while the change was made, which "
                         "was not made; retry", {"session_id": session_id})


class EngineClosed(TetherError):
    """The engine is shutting down and takes no more lifecycle inputs."""

    code = "engine_closed"

    def __init__(self) -> None:
        super().__init__("The session engine is shutting down")
