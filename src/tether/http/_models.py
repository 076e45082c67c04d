"""The REST API's own wire shapes: request bodies and response envelopes.

Views of sessions come from the engine (their field names are the contract's); this module adds
what only HTTP needs: ``{"data": ...}`` envelopes, the error envelope, and the bodies of writes.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from tether.engine import MAX_COMMAND, MAX_EMAIL, MAX_TEXT
from tether.webhooks import Payload

T = TypeVar("T")


class Data(msgspec.Struct, Generic[T], kw_only=True, frozen=True):
    """A successful answer: ``{"data": ...}``."""

    data: T


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    message: str
    details: dict[str, Any]


class ErrorEnvelope(msgspec.Struct, kw_only=True, frozen=True):
    """Every error: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


class Health(msgspec.Struct, kw_only=True, frozen=True):
    status: Literal["ok"]
    live_sessions: int


# -- request bodies ------------------------------------------------------------------------------

#: Text a write stores and echoes (ids, hostnames, emails, commands): printable ASCII, so no
#: control character (CR/LF, NUL, ESC) ever reaches a log line, a header or a terminal. The
#: decoder enforces it and OpenAPI documents it, so the contract and the server agree. The
#: lengths are the engine's (agents' reported text is held to them too), the characters a
#: stricter subset of its rule (which also admits printable non-ASCII).
_PRINTABLE = "^[ -~]+$"
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT, pattern=_PRINTABLE)]
Email = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EMAIL, pattern=_PRINTABLE)]
CommandText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_COMMAND,
                                          pattern=_PRINTABLE)]


class CreateSessionBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions``: a PENDING session waiting for the machine's agent."""

    machine_id: Text
    machine_hostname: Text


class AttachClientBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions/{session_id}/clients``: attach an operator or an observer."""

    user_email: Email
    mode: Literal["operator", "observer"]


class RunCommandBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions/{session_id}/commands``: an attached operator's command."""

    client_id: Text
    command: CommandText


class EventsMeta(msgspec.Struct, kw_only=True, frozen=True):
    limit: int
    has_more: bool
    #: Where to continue from: the last event returned (or the ``after`` given, if none).
    next_after: str | None


class EventsPage(msgspec.Struct, kw_only=True, frozen=True):
    """``GET /v1/events``: events as webhooks send them, in log order."""

    data: list[Payload]
    meta: EventsMeta
